"""The output layer and the sequence likelihood.

A language model factorises a sequence's probability by the chain rule,

    P(x_1, ..., x_T) = prod_t P(x_t | x_<t),

and an RNN summarises x_<t in its hidden state H_t, so the output layer only has to map
H_t to a distribution over the next symbol: O_t = H_t W + b, P(x_t | x_<t) = softmax(O_t).
The sequence loss is the negative log-likelihood -sum_t log P(x_t | x_<t) (nats); divided
by the number of symbols and by ln 2 it is bits per character (bpc).

``cross_entropy`` fuses softmax and the log-likelihood: it never forms probabilities that
could under/overflow (log-sum-exp with the row maximum subtracted), and its gradient is
the familiar softmax(O) - onehot(target). ``OutputLayer.loss_and_backward`` computes the
same on host arrays: on each share of the rows (the backend's run_rows: on "cpu" one split
over its threads) the logits GEMM, the compiled passes (gpurnn.train.fused: bias, shift,
exp, normalise, log-likelihood, one-hot, scale, bias gradient) and the dh and dW GEMMs,
in buffers kept across steps.
"""
import math

import numpy as np

from ..arrays import array_module, to_numpy
from ..contract import decline, matmul, run_rows
from ..validation import check_positive_int

LN2 = math.log(2.0)


def log_softmax(logits):
    """log softmax over the last axis, stable for any finite logits."""
    xp = array_module(logits)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))


def cross_entropy(logits, targets, reduction="mean"):
    """Softmax cross-entropy of ``logits`` (N, V) against integer ``targets`` (N,).

    Returns (loss, dlogits): the loss in nats (a Python float; mean or sum over the N rows)
    and its gradient w.r.t. ``logits``. Plain array expressions (NumPy or CuPy); the output
    layer fuses the same on host arrays (OutputLayer.loss_and_backward).
    """
    xp = array_module(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits: expected shape (N, V), got {tuple(logits.shape)}")
    targets = xp.asarray(targets)
    _check_xent(logits.shape[0], targets.shape, reduction)
    n = logits.shape[0]
    logp = log_softmax(logits)
    rows = xp.arange(n)
    nll = -float(logp[rows, targets].astype(np.float64).sum())
    dlogits = xp.exp(logp)
    dlogits[rows, targets] -= 1
    if reduction == "mean":
        nll /= max(n, 1)
        dlogits /= max(n, 1)
    return nll, dlogits


def _check_xent(n, targets_shape, reduction):
    """ValueError unless ``targets_shape`` is (n,) and ``reduction`` is mean or sum."""
    if tuple(targets_shape) != (n,):
        raise ValueError(f"targets: expected shape ({n},) to match logits, "
                         f"got {tuple(targets_shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")


def nats_to_bits(nats):
    return nats / LN2


def unigram_entropy_bits(ids, vocab_size=None):
    """Entropy (bits/symbol) of the symbol frequencies in ``ids``: the bpc of the best
    model that ignores context, i.e. the baseline a sequence model has to beat."""
    counts = np.bincount(np.asarray(ids).ravel(), minlength=vocab_size or 0)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


class OutputLayer:
    """O_t = H_t W + b followed by softmax cross-entropy.

    ``weight`` is (H, V) as in the lecture note's O = H W^(2) + b^(2) (not torch's (V, H)).
    Like the recurrent layers, ``parameters()`` are live arrays updated in place and
    ``grads`` accumulate over ``loss_and_backward`` calls until ``zero_grad``. Its arrays
    are ``backend``'s (a name or a backend object, gpurnn.get_backend). Its three
    products are, on the fused path, per share of the rows of the contract's ``run_rows``
    (on "cpu" split over the cores the way the layers are); on the plain path, the
    contract's ``matmul``.

    ``fused`` (default True): on NumPy arrays, everything between the GEMMs runs as the
    compiled passes of gpurnn.train.fused on buffers this layer keeps across calls; False,
    or arrays of another kind (CuPy), runs ``cross_entropy``'s array expressions.
    ``path`` says which the last ``loss_and_backward`` ran: "fused", or "plain: <why>"; a
    plain path on NumPy arrays (h of another dtype than the layer's) warns once, and
    GPURNN_STRICT=1 raises gpurnn.contract.FallbackError.
    """

    def __init__(self, hidden_size, vocab_size, dtype="float32", seed=None, backend="numpy",
                 fused=True):
        from ..backend import get_backend
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.vocab_size = check_positive_int("vocab_size", vocab_size)
        self.dtype = np.dtype(dtype)
        self.backend = get_backend(backend)
        self.xp = xp = self.backend.xp
        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(hidden_size)
        self._params = {
            "weight": xp.asarray(rng.uniform(-bound, bound, (hidden_size, vocab_size)).astype(self.dtype)),
            "bias": xp.zeros(vocab_size, self.dtype),
        }
        self.grads = {}
        self.zero_grad()
        self.fused = bool(fused)
        self.path = None
        self._buffers = {}      # the fused path's host work arrays, by name

    def _matmul(self, a, b):
        return matmul(self.backend, a, b)

    def parameters(self):
        return self._params

    def zero_grad(self):
        for name, p in self._params.items():
            self.grads[name] = self.xp.zeros(p.shape, self.dtype)

    def logits(self, h):
        """O = H W + b for H of shape (..., hidden_size)."""
        lead = h.shape[:-1]
        o = self._matmul(h.reshape(-1, self.hidden_size), self._params["weight"])
        return (o + self._params["bias"]).reshape(*lead, self.vocab_size)

    def loss_and_backward(self, h, targets, reduction="mean"):
        """Cross-entropy of the next-symbol prediction from ``h`` (..., H) against integer
        ``targets`` (..., the same N = prod(...) entries). Accumulates dW = H^T dlogits and
        db = column sums of dlogits into ``grads``; returns (loss_nats, dh = dlogits W^T)."""
        lead = h.shape[:-1]
        h2 = h.reshape(-1, self.hidden_size)
        self.path = self._path(h2)
        if self.path.startswith("plain: h is"):     # NumPy arrays the passes could take
            decline(f"gpurnn OutputLayer: loss by array expressions, not the fused passes "
                    f"({self.path[7:]})")
        if self.path == "fused":
            loss, dh = self._fused_loss_and_backward(h2, targets, reduction)
        else:
            loss, dlogits = cross_entropy(self.logits(h2), self.xp.asarray(targets).reshape(-1), reduction)
            dlogits = dlogits.astype(self.dtype, copy=False)
            self.grads["bias"] += dlogits.sum(axis=0)
            self.grads["weight"] += self._matmul(h2.T, dlogits)
            dh = self._matmul(dlogits, self._params["weight"].T)
        return loss, dh.reshape(*lead, self.hidden_size)

    def _path(self, h2):
        """The path loss_and_backward takes: "fused" where the compiled passes apply (NumPy
        arrays of the layer's dtype), else "plain: <why>"."""
        if not self.fused:
            return "plain: fused=False"
        arrays = (h2, *self._params.values(), *self.grads.values())
        if not all(isinstance(a, np.ndarray) for a in arrays):
            kinds = sorted({type(a).__module__.split(".")[0] for a in arrays} - {"numpy"})
            return f"plain: {', '.join(kinds)} arrays (the fused passes need NumPy's)"
        if h2.dtype != self.dtype:
            return f"plain: h is {h2.dtype}, the layer {self.dtype}"
        return "fused"

    def _buffer(self, name, shape, dtype):
        """The work array ``name``, kept across calls, reallocated when its shape changes."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._buffers[name] = np.empty(shape, dtype)
        return buf

    def _fused_loss_and_backward(self, h2, targets, reduction):
        """(loss, dh) as the plain path computes them, and dW, db into ``grads``: the rows
        of h2 (N, H) NumPy split into shares by the backend's ``run_rows``, each share
        running its logits GEMM, the compiled passes (gpurnn.train.fused) and its dh and
        partial-dW GEMMs while its logits are still in cache; the shares' dW, db and loss
        are summed after, in share order. targets: N integers in any shape."""
        from . import fused
        n, V = h2.shape[0], self.vocab_size
        targets = np.asarray(targets)
        _check_xent(n, (targets.size,), reduction)
        ids = self._buffer("targets", (n,), np.int64)
        np.copyto(ids.reshape(targets.shape), targets, casting="same_kind")
        shift = self._buffer("target_shift", (n,), np.float64)
        dlogits = self._buffer("dlogits", (n, V), self.dtype)   # the logits, then their gradient
        dh = np.empty((n, self.hidden_size), self.dtype)
        w, bias = self._params["weight"], self._params["bias"]
        scale = 1.0 / max(n, 1) if reduction == "mean" else 1.0
        starts = set()                       # this call's shares (set.add holds the GIL)

        def share(r0, r1):
            """-> (first bad target row or -1, the share's nll, its db, its dW)."""
            starts.add(r0)
            z, t, ts = dlogits[r0:r1], ids[r0:r1], shift[r0:r1]
            np.matmul(h2[r0:r1], w, out=z)
            bad = fused.softmax_xent_shift(z, bias, t, ts)
            if bad >= 0:
                return r0 + bad, 0.0, None, None
            np.exp(z, out=z)
            db = self._buffer(("db", r0), (V,), np.float64)
            nll = fused.softmax_xent_grad(z, t, ts, scale, db)
            dw = self._buffer(("dw", r0), w.shape, self.dtype)
            np.matmul(h2[r0:r1].T, z, out=dw)
            np.matmul(z, w.T, out=dh[r0:r1])
            return -1, nll, db, dw

        shares = run_rows(self.backend, n, share)
        for key in [k for k in self._buffers if isinstance(k, tuple) and k[1] not in starts]:
            del self._buffers[key]           # other shares' (another row or thread count)
        for bad, *_ in shares:
            if bad >= 0:
                raise ValueError(f"targets: expected symbol ids in 0..{V - 1}, got "
                                 f"{ids[bad]} (entry {bad})")
        nll = 0.0
        for _, share_nll, db, dw in shares:     # nothing is accumulated before every share is checked
            nll += share_nll
            self.grads["bias"] += db
            self.grads["weight"] += dw
        return (nll / max(n, 1) if reduction == "mean" else nll), dh

    def nll(self, h, targets):
        """Summed -log P(x_t | x_<t) in nats, no gradient (evaluation)."""
        logp = log_softmax(self.logits(h.reshape(-1, self.hidden_size)))
        t = self.xp.asarray(targets).reshape(-1)
        return -float(logp[self.xp.arange(t.shape[0]), t].astype(np.float64).sum())

    def state_dict(self):
        return {k: np.array(to_numpy(v)) for k, v in self._params.items()}

    def load_state_dict(self, state_dict):
        for name, p in self._params.items():
            if name not in state_dict:
                raise ValueError(f"state_dict: missing key {name!r} for the output layer")
            value = np.asarray(state_dict[name])
            if value.shape != p.shape:
                raise ValueError(f"state_dict[{name!r}]: expected shape {tuple(p.shape)}, got {value.shape}")
        self._params = {k: self.xp.asarray(np.asarray(state_dict[k]).astype(self.dtype))
                        for k in self._params}
