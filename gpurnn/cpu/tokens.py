"""Token-id inputs on the CPU backend: the gather and the scatter-add of gpurnn.tokens as
njit loops, each split over the backend's parts without races.

    gather_rows(w_ih_t, ids, gx, r0, r1)       gx[r] = w_ih_t[ids[r]] for r in r0..r1-1
    scatter_add_columns(dgx, ids, dw_ih, j0, j1)
                                               dw_ih[j, v] = sum of dgx[r, j] over ids[r] = v,
                                               for the rows j0..j1-1 of dw_ih (written whole)

Shapes (N = T*B token rows, GH = G*H, I = input_size, the vocabulary):
    w_ih_t   (I, GH)   W_ih^T, contiguous (made once per forward by kernels.transpose), so
                       each token's projection is one contiguous row copy
    ids      (N,) int64 token ids in 0..I-1 (validated by the layers)
    gx       (N, GH)   out: the input projection (the bias is added later, in the fused pass)
    dgx      (N, GH)   in: gradient w.r.t. the input-side pre-activations
    dw_ih    (GH, I)   out: its rows j0..j1-1

The gather splits by token rows like the dense GEMM it replaces; the scatter by blocks of
dW_ih's rows (gate units j): a part owns its rows, so no two parts write one element, and
every element sums its tokens in row order r = 0..N-1 whatever the split: the result is
bitwise the same for any thread count.
"""
import numpy as np

from .jit import stable_jit


# nogil: every part calls these at once (with the GIL held they ran one part at a time)
@stable_jit("tokens", nogil=True)
def gather_rows(w_ih_t, ids, gx, r0, r1):
    # An explicit loop over row views: Numba's slice assignment gx[r, :] = ... took 1.5 ms
    # here (T*B = 2048 rows of 1024), this 0.5 ms (vectorised copies)
    n = gx.shape[1]
    for r in range(r0, r1):
        src, dst = w_ih_t[ids[r]], gx[r]
        for j in range(n):
            dst[j] = src[j]


@stable_jit("tokens", nogil=True)
def scatter_add_columns(dgx, ids, dw_ih, j0, j1):
    # Accumulate in an (I, n) block, so that each token adds one contiguous run of n values
    # (vectorised; 0.5 ms for 2048 tokens x 1024), then write it transposed into dw_ih's
    # rows j0..j1, 16 of them per pass so the block is read in contiguous runs (0.15 ms;
    # one element at a time, reading down the block's columns: 0.75 ms)
    I = dw_ih.shape[1]
    n = j1 - j0
    acc = np.zeros((I, n), dw_ih.dtype)
    for r in range(dgx.shape[0]):
        src, dst = dgx[r, j0:j1], acc[ids[r]]
        for j in range(n):
            dst[j] += src[j]
    n16 = n - n % 16
    for j in range(0, n16, 16):
        for v in range(I):
            src, dst = acc[v, j:j + 16], dw_ih[j0 + j:j0 + j + 16, v]
            for i in range(16):
                dst[i] = src[i]
    for j in range(n16, n):
        for v in range(I):
            dw_ih[j0 + j, v] = acc[v, j]
