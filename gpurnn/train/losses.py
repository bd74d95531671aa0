"""The output layer and the sequence likelihood.

A language model factorises a sequence's probability by the chain rule,

    P(x_1, ..., x_T) = prod_t P(x_t | x_<t),

and an RNN summarises x_<t in its hidden state H_t, so the output layer only has to map
H_t to a distribution over the next symbol: O_t = H_t W + b, P(x_t | x_<t) = softmax(O_t).
The sequence loss is the negative log-likelihood -sum_t log P(x_t | x_<t) (nats); divided
by the number of symbols and by ln 2 it is bits per character (bpc).

``cross_entropy`` fuses softmax and the log-likelihood: it never forms probabilities that
could under/overflow (log-sum-exp with the row maximum subtracted), and its gradient is
the familiar softmax(O) - onehot(target).
"""
import math

import numpy as np

from ..arrays import array_module, to_numpy
from ..contract import matmul
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
    and its gradient w.r.t. ``logits``.
    """
    xp = array_module(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits: expected shape (N, V), got {tuple(logits.shape)}")
    targets = xp.asarray(targets)
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"targets: expected shape ({logits.shape[0]},) to match logits, "
                         f"got {tuple(targets.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
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
    are ``backend``'s (a name or a backend object, gpurnn.get_backend), and its three
    products are the backend contract's ``matmul`` (on "cpu" split over the cores the way
    the layers are).
    """

    def __init__(self, hidden_size, vocab_size, dtype="float32", seed=None, backend="numpy"):
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
        ``targets`` (...). Accumulates dW, db into ``grads``; returns (loss_nats, dh)."""
        lead = h.shape[:-1]
        h2 = h.reshape(-1, self.hidden_size)
        loss, dlogits = cross_entropy(self.logits(h2), self.xp.asarray(targets).reshape(-1), reduction)
        dlogits = dlogits.astype(self.dtype, copy=False)
        self.grads["weight"] += self._matmul(h2.T, dlogits)
        self.grads["bias"] += dlogits.sum(axis=0)
        dh = self._matmul(dlogits, self._params["weight"].T)
        return loss, dh.reshape(*lead, self.hidden_size)

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
