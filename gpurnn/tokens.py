"""Token-id inputs: the first layer's x as integer ids that stand for one-hot rows.

An integer array ``ids`` (T, B) with values in 0..I-1 (I = input_size, the vocabulary) is
the input X (T, B, I) with X[t, b, ids[t, b]] = 1 and zeros elsewhere, without building
it. Every product with X then picks columns of W_ih (G*H, I):

    input projection   gx[t, b] = X[t, b] W_ih^T = W_ih[:, ids[t, b]]          a gather
    weight gradient    dW_ih = dG^T X: dW_ih[:, v] = sum of dG[t, b] over ids[t, b] = v
                                                                               a scatter-add
    input gradient     none: ids have no gradient (the backends return dx = None)

The gather is exact (a one-hot product adds zeros to one weight, so it is bitwise the
dense result; it also ignores NaN/Inf in the other columns, which 0 * Inf would spread);
the scatter-add sums the same terms as dG^T X in another order (float rounding).

These two functions are the implementation on an array namespace ``xp`` (NumPy, or CuPy
on a GPU): the numpy backends (gpurnn.reference, gpurnn.vectorised) and the cuda backend
call them. The cpu backend runs njit loops of the same two operations split over its
threads (gpurnn.cpu.tokens), checked against these by the conformance tests.
"""
import numpy as np


def is_token_ids(x):
    """True for an integer array (token ids), False for a float one (dense inputs). The
    layers have validated it already (gpurnn.validation.check_token_ids): no bools."""
    return np.dtype(x.dtype).kind in "iu"


def gather_columns(xp, w_ih, ids):
    """The input projection of token ids: W_ih[:, ids] laid out as rows.

    w_ih (G*H, I); ids integer array of any shape S with values in 0..I-1.
    Returns a new array S + (G*H,): out[..., :] = w_ih[:, ids[...]]."""
    return xp.take(w_ih.T, ids, axis=0)


def scatter_add_columns(xp, dw_ih, ids, dg):
    """Accumulate the weight gradient of token ids into ``dw_ih`` in place:
    dw_ih[:, ids[n]] += dg[n] for every n (= dg^T @ one_hot(ids)).

    dw_ih (G*H, I) float; ids (N,) integers in 0..I-1; dg (N, G*H), dw_ih's dtype.
    NumPy: the rows of each id summed in the order they come (deterministic; np.add.at
    takes 27 ms at N=2048, G*H=1024, this 2 ms); CuPy: ``add.at`` (atomic adds, so the
    summation order, and the last bits, may vary from run to run)."""
    ids = ids.reshape(-1)
    if xp is not np:
        xp.add.at(dw_ih.T, ids, dg)
        return dw_ih
    order = np.argsort(ids, kind="stable")       # rows of one id together, in their order
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_ids[1:] != sorted_ids[:-1])))
    ends = np.append(starts[1:], len(ids))
    rows = dg[order]
    for a, b in zip(starts, ends):
        dw_ih[:, sorted_ids[a]] += rows[a:b].sum(axis=0)
    return dw_ih


def input_projection(xp, x, w_ih):
    """x W_ih^T for dense x (..., I), or the gather for token ids x (...): (..., G*H)."""
    return gather_columns(xp, w_ih, x) if is_token_ids(x) else x @ w_ih.T


def add_input_weight_grad(xp, dw_ih, x, dg):
    """dw_ih += dg^T x in place: a GEMM for dense x (N, I), the scatter-add for token ids
    x (N,). dw_ih (G*H, I), dg (N, G*H)."""
    if is_token_ids(x):
        return scatter_add_columns(xp, dw_ih, x, dg)
    dw_ih += dg.T @ x
    return dw_ih
