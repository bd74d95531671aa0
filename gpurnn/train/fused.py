"""The compiled passes of a training step (Numba njit on host NumPy arrays, any backend
whose arrays are NumPy's: "numpy", "cpu").

losses.OutputLayer and optim's optimizers call these where every array is a NumPy array
and fall back to their NumPy/CuPy expressions otherwise (they record which ran). Every
pass reads and writes only the arrays it is given (no temporaries), single-threaded and
without the GIL; the two GEMMs of the output layer stay on the backend's ``matmul``.

    softmax_xent_shift   head pass 1: bias add, row max, shift (before the exp)
    softmax_xent_grad    head pass 2: normalise, log-likelihood, subtract one-hot, scale,
                         bias gradient (after the exp)
    sum_squares          one array's share of the global gradient norm
    adam_update          clip-scale + Adam (moments, bias correction, update), one pass
    sgd_update           clip-scale + SGD with or without momentum, one pass

Why the exp runs between the two head passes, as NumPy's in-place np.exp, and not inside
one pass: under njit a float32 exp is a scalar libm call (2.0 ms for the 2048 x 165 logits
of the char LM's step, vs 0.29 ms for NumPy's SIMD exp). The vectorisable exp_f32 is the
CPU backend's internal (gpurnn/cpu/fastmath.py, which train/ may not import), and a single
pass around a copy of it measured no faster (1.07 vs 1.00 ms for the whole loss).

Float semantics: no fast-math except ``reassoc`` in the two sums (summation order only,
so they vectorise); a NaN or +Inf logit makes its row's loss NaN, as in the NumPy path,
which is what the trainer's divergence check relies on. Elementwise updates evaluate
exactly the NumPy expressions of optim.py, in the parameters' dtype, so fused and plain
optimizer steps agree to the last bit (tests/test_train_fused.py).
"""
import math

import numba
import numpy as np

# error_model="numpy": divisions without a zero check, so the loops vectorise;
# cache=True: compiled once per machine (the kernels are plain top-level functions).
_OPTIONS = dict(cache=True, error_model="numpy", nogil=True)


@numba.njit(fastmath={"reassoc"}, **_OPTIONS)
def _sum_f64(a):
    """sum(a) in float64 for a (n,); reassociated so that it vectorises."""
    s = 0.0
    for j in range(a.shape[0]):
        s += a[j]
    return s


@numba.njit(**_OPTIONS)
def _larger(x, m):
    return x if x > m else m


@numba.njit(**_OPTIONS)
def _max(a):
    """max(a) for a (n,), n >= 1, as 8 independent running maxima: a max reduction does not
    vectorise under njit, and one chain waits on every compare (2x slower); the result is
    exact in any order. NaNs after a[0] are skipped: the caller's exp(a - max) turns them
    into a NaN loss anyway."""
    n = a.shape[0]
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = a[0]
    j = 0
    while j + 8 <= n:
        m0, m1, m2, m3 = (_larger(a[j], m0), _larger(a[j + 1], m1),
                          _larger(a[j + 2], m2), _larger(a[j + 3], m3))
        m4, m5, m6, m7 = (_larger(a[j + 4], m4), _larger(a[j + 5], m5),
                          _larger(a[j + 6], m6), _larger(a[j + 7], m7))
        j += 8
    while j < n:
        m0 = _larger(a[j], m0)
        j += 1
    return _larger(_larger(_larger(m1, m0), _larger(m3, m2)), _larger(_larger(m5, m4), _larger(m7, m6)))


@numba.njit(**_OPTIONS)
def softmax_xent_shift(logits, bias, targets, target_shift):
    """Pass 1 of the output layer's loss, in place, row by row.

    logits        (N, V) float: H W on entry; z - max(z) on return, z = row + bias
    bias          (V,) float
    targets       (N,) int64: the next symbol of each row
    target_shift  (N,) float64, written: (z - max z)[target], the row's shifted target logit

    Returns -1, or the first row whose target is not in 0..V-1 (nothing after it written).
    """
    N, V = logits.shape
    for i in range(N):
        t = targets[i]
        if t < 0 or t >= V:
            return i
        row = logits[i]
        for j in range(V):
            row[j] = row[j] + bias[j]
        m = _max(row)
        for j in range(V):
            row[j] = row[j] - m
        target_shift[i] = row[t]
    return -1


@numba.njit(**_OPTIONS)
def softmax_xent_grad(e, targets, target_shift, scale, db):
    """Pass 2, after e = exp(z - max z) in place: the loss and its gradient w.r.t. the logits.

    e             (N, V) float: exp of pass 1's result on entry; on return the gradient
                  scale * (softmax(z) - onehot(target)) (dlogits)
    targets       (N,) int64, as pass 1 checked them
    target_shift  (N,) float64, pass 1's
    scale         float: 1/N for the mean loss, 1 for the sum
    db            (V,) float64, written: the column sums of dlogits (the bias gradient)

    Returns the summed negative log-likelihood (float64, nats, unscaled):
    sum_i log(sum_j e_ij) - target_shift_i.
    """
    N, V = e.shape
    db[:] = 0.0
    total = 0.0
    one = e.dtype.type(scale)
    for i in range(N):
        row = e[i]
        s = _sum_f64(row)                  # log-sum-exp accumulated in float64
        total += math.log(s) - target_shift[i]
        r = e.dtype.type(scale / s)
        for j in range(V):
            d = row[j] * r
            row[j] = d
            db[j] += d
        t = targets[i]
        row[t] -= one
        db[t] -= one
    return total


@numba.njit(fastmath={"reassoc"}, **_OPTIONS)
def sum_squares(g):
    """sum(g**2) in float64 for g (n,)."""
    s = 0.0
    for i in range(g.shape[0]):
        x = np.float64(g[i])
        s += x * x
    return s


@numba.njit(**_OPTIONS)
def adam_update(p, g, m, v, scale, beta1, one_minus_beta1, beta2, one_minus_beta2,
                root_bias2, eps, step_size):
    """One Adam step on one parameter, in place; optim.Adam._update's expressions.

    p, m, v   (n,) the parameter and its first/second moments, written
    g         (n,) its gradient (read), used as g * scale (the clip factor)
    scalars   of p's dtype: root_bias2 = sqrt(1 - beta2^t), step_size = lr / (1 - beta1^t)
    """
    for i in range(p.shape[0]):
        gi = g[i] * scale
        mi = m[i] * beta1 + one_minus_beta1 * gi
        vi = v[i] * beta2 + one_minus_beta2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] -= step_size * mi / (np.sqrt(vi) / root_bias2 + eps)


@numba.njit(**_OPTIONS)
def sgd_update(p, g, velocity, scale, momentum, lr):
    """One SGD step on one parameter, in place; optim.SGD._update's expressions.

    p          (n,) the parameter, written
    g          (n,) its gradient (read), used as g * scale (the clip factor)
    velocity   (n,) the momentum buffer, written; None without momentum
    scalars    of p's dtype
    """
    for i in range(p.shape[0]):
        gi = g[i] * scale
        if velocity is not None:
            gi = velocity[i] * momentum + gi
            velocity[i] = gi
        p[i] -= lr * gi
