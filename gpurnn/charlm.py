"""Character-level language model trained with truncated BPTT (the min-char-rnn loop).

The model is the lecture note's latent autoregression: H_t = Net(H_{t-1}, X_{t-1}) with
Net an LSTM/GRU/RNN from gpurnn, and P(x_t | x_<t) = softmax(H_t W + b). Training
minimises -sum_t log P(x_t | x_<t) over windows of k characters:

    for each step:
        x, y   = the next k characters of each of B streams, and the same shifted by one
        H, s   = rnn(onehot(x), s)          # s carried over from the previous window...
        loss   = cross_entropy(H W + b, y)  # ...but its gradient is stopped there (TBPTT)
        backward, clip the global gradient norm, optimizer step

The B streams are B contiguous slices of the training text, so window w of a stream
continues window w-1 and the carried state is the right context. Every step's data is a
function of the step number alone, which makes a resumed run repeat the uninterrupted one.
"""
import contextlib
import hashlib
import time
from dataclasses import asdict, dataclass, fields

import numpy as np

from .arrays import to_numpy
from .backend import get_backend
from .checkpoint import Checkpoint, CheckpointError, check_config_matches, load_checkpoint, save_checkpoint
from .data import TextError, Vocabulary, as_streams, one_hot, split_train_val
from .layers import make_layer
from .losses import LN2, OutputLayer, unigram_entropy_bits
from .optim import clip_grad_norm, make_optimizer

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


def make_rnn(cell, input_size, hidden_size, num_layers=1, backend="auto", dtype="float32", seed=None):
    """A gpurnn recurrent layer by cell name: lstm, gru, rnn_tanh, rnn_relu."""
    return make_layer(cell, input_size, hidden_size, num_layers=num_layers, backend=backend,
                      dtype=dtype, seed=seed)


@dataclass
class LMConfig:
    """Everything that defines a training run (saved in the checkpoint)."""
    cell: str = "lstm"
    hidden: int = 256
    layers: int = 1
    window: int = 64          # k: truncated-BPTT window, characters per stream per step
    batch: int = 32           # B: parallel streams
    lr: float = 1e-2          # Adam; with clipping, fast enough for a few hundred steps
    optimizer: str = "adam"
    clip: float = 5.0         # max global gradient norm
    val_fraction: float = 0.1
    backend: str = "auto"
    dtype: str = "float32"
    seed: int = 0

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# Config entries that change the model's shapes or the data order: a checkpoint must agree.
SHAPE_KEYS = ("cell", "hidden", "layers")


class CharLM:
    """RNN + output layer over one-hot characters."""

    def __init__(self, vocab_size, cell="lstm", hidden=256, layers=1, backend="auto",
                 dtype="float32", seed=0):
        self.vocab_size = vocab_size
        self.rnn = make_rnn(cell, vocab_size, hidden, layers, backend, dtype, seed)
        self._backend = get_backend(backend)
        matmul, self._blas_scope = None, contextlib.nullcontext
        if self._backend.name == "cpu":
            # The CPU layers split themselves over the cores with one-thread BLAS; so do the
            # head's products, and the step keeps BLAS at one thread throughout: a threaded
            # BLAS call leaves OpenBLAS's workers spinning ~100 ms on the cores the layers
            # need (training step 83 vs 46 ms at 2 threads, benchmarks/RESULTS_train.md).
            from .cpu.kernels import split_matmul
            from .cpu.parallel import single_threaded_blas
            matmul, self._blas_scope = split_matmul, single_threaded_blas
        self.head = OutputLayer(hidden, vocab_size, dtype, seed=None if seed is None else seed + 1,
                                xp=self._backend.xp, matmul=matmul)
        self.dtype = np.dtype(dtype)

    @property
    def backend(self):
        return self.rnn.backend

    def parameters(self):
        """Live arrays of the RNN and the head, named rnn.<torch name> and head.<name>."""
        named = {f"rnn.{k}": v for k, v in self.rnn.parameters().items()}
        named.update({f"head.{k}": v for k, v in self.head.parameters().items()})
        return named

    def grads(self):
        named = {f"rnn.{k}": v for k, v in self.rnn.grads.items()}
        named.update({f"head.{k}": v for k, v in self.head.grads.items()})
        return named

    def zero_grad(self):
        self.rnn.zero_grad()
        self.head.zero_grad()

    def state_dict(self):
        sd = {f"rnn.{k}": v for k, v in self.rnn.state_dict().items()}
        sd.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        return sd

    def load_state_dict(self, sd):
        self.rnn.load_state_dict({k[4:]: v for k, v in sd.items() if k.startswith("rnn.")})
        self.head.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("head.")})

    def inputs(self, ids):
        return self._backend.asarray(one_hot(ids, self.vocab_size, self.dtype))

    def train_window(self, x_ids, y_ids, state):
        """Forward + backward on one (k, B) window. Returns (mean loss in nats, new state);
        gradients accumulate in grads()."""
        with self._blas_scope():
            out, state = self.rnn(self.inputs(x_ids), state)
            loss, dout = self.head.loss_and_backward(out, y_ids)
            self.rnn.backward(dout)      # no dh_n: the carried state's gradient stops here
        return loss, state

    def nll(self, ids, window, batch):
        """-sum log P(x_t | x_<t) (nats) over ``ids`` after its first character, and the
        number of characters scored; run as ``batch`` streams in windows, no gradient."""
        rows = max(1, min(batch, (len(ids) - 1) // max(window, 2)))
        streams = as_streams(np.asarray(ids), rows)
        was_training = self.rnn.training
        self.rnn.eval()
        total, state = 0.0, None
        for start in range(0, streams.shape[1] - 1, window):
            x = streams[:, start:start + window]
            y = streams[:, start + 1:start + window + 1]
            x = x[:, :y.shape[1]]
            out, state = self.rnn(self.inputs(x.T), state)
            total += self.head.nll(out, y.T)
        self.rnn.train(was_training)
        return total, rows * (streams.shape[1] - 1)


def sample(lm, vocab, length, temperature=1.0, prime="", rng=None):
    """Generate ``length`` characters after ``prime``; temperature <= 0 means greedy.

    The prime is run through the RNN first, so its state conditions the sample."""
    rng = np.random.default_rng() if rng is None else rng
    if not prime:
        prime = "\n" if "\n" in vocab.index else vocab.chars[0]
    ids = vocab.encode(prime, what="prime")
    was_training = lm.rnn.training
    lm.rnn.eval()
    out, state = lm.rnn(lm.inputs(ids[:, None]), None)
    h = out[-1]
    generated = []
    for _ in range(length):
        logits = np.asarray(to_numpy(lm.head.logits(h)), dtype=np.float64).ravel()
        if temperature <= 0:
            nxt = int(np.argmax(logits))
        else:
            z = logits / temperature
            p = np.exp(z - z.max())
            nxt = int(rng.choice(len(p), p=p / p.sum()))
        generated.append(nxt)
        out, state = lm.rnn(lm.inputs(np.array([[nxt]])), state)
        h = out[-1]
    lm.rnn.train(was_training)
    return vocab.decode(generated)


class Trainer:
    """Owns the text, model, optimizer, carried state, RNG and history of one run."""

    def __init__(self, text, config=None, vocab=None, max_val_chars=50_000):
        self.config = config or LMConfig()
        c = self.config
        if len(text) <= c.window:
            raise TextError(f"window: --window {c.window} is longer than the text "
                            f"({len(text)} characters); use a smaller window or a longer text")
        self.vocab = vocab or Vocabulary.from_text(text)
        self.text_digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        ids = self.vocab.encode(text)
        self.train_ids, self.val_ids = split_train_val(ids, c.val_fraction)
        self.val_ids = self.val_ids[:max_val_chars]
        if len(self.train_ids) - 1 < c.window:
            raise TextError(f"window: --window {c.window} is longer than the training part of the "
                            f"text ({len(self.train_ids)} characters after holding out "
                            f"{c.val_fraction:.0%} for validation)")
        # Fewer streams than asked when the text is short: each needs at least one window.
        self.batch = max(1, min(c.batch, (len(self.train_ids) - 1) // (c.window + 1)))
        self.streams = as_streams(self.train_ids, self.batch)
        self.windows_per_epoch = (self.streams.shape[1] - 1) // c.window
        self.lm = CharLM(len(self.vocab), c.cell, c.hidden, c.layers, c.backend, c.dtype, c.seed)
        self.optimizer = make_optimizer(c.optimizer, c.lr)
        self.rng = np.random.default_rng(c.seed)     # sampling during training
        self.step = 0
        self.state = None
        self.history = {"step": [], "train_bpc": [], "grad_norm": [], "val_step": [], "val_bpc": []}
        self.train_seconds = 0.0
        self.unigram_bpc = unigram_entropy_bits(ids, len(self.vocab))

    @property
    def chars_per_step(self):
        return self.batch * self.config.window

    def train_step(self):
        """One truncated-BPTT window + optimizer step. Returns (loss in bpc, pre-clip norm)."""
        k = self.config.window
        w = self.step % self.windows_per_epoch
        if w == 0:
            self.state = None            # a new pass over the text starts from zero state
        x = self.streams[:, w * k:(w + 1) * k].T            # (k, B)
        y = self.streams[:, w * k + 1:(w + 1) * k + 1].T
        t0 = time.perf_counter()
        self.lm.zero_grad()
        loss, self.state = self.lm.train_window(x, y, self.state)
        grads = self.lm.grads()
        norm = clip_grad_norm(grads, self.config.clip)
        self.optimizer.step(self.lm.parameters(), grads)
        self.train_seconds += time.perf_counter() - t0
        self.step += 1
        bpc = loss / LN2
        self.history["step"].append(self.step)
        self.history["train_bpc"].append(bpc)
        self.history["grad_norm"].append(norm)
        return bpc, norm

    def evaluate(self, which="val"):
        """Bits per character on the validation text, or on an equally long slice of the
        training text (which="train"), carrying state across windows."""
        ids = self.val_ids if which == "val" else self.train_ids[:len(self.val_ids)]
        nats, count = self.lm.nll(ids, self.config.window, self.config.batch)
        bpc = nats / count / LN2
        if which == "val":
            self.history["val_step"].append(self.step)
            self.history["val_bpc"].append(bpc)
        return bpc

    def sample(self, length=200, temperature=0.8, prime=""):
        return sample(self.lm, self.vocab, length, temperature, prime, self.rng)

    @property
    def chars_per_second(self):
        return self.step * self.chars_per_step / self.train_seconds if self.train_seconds else 0.0

    # ------------------------------------------------------------- checkpoints
    def to_checkpoint(self, extra=None):
        opt_arrays, opt_meta = self.optimizer.state_dict()
        arrays = {}
        if self.state is not None:
            parts = self.state if isinstance(self.state, tuple) else (self.state,)
            arrays = {f"state{i}": s for i, s in enumerate(parts)}
        return Checkpoint(step=self.step, params=self.lm.state_dict(), config=asdict(self.config),
                          vocab=self.vocab.chars, rng_state=self.rng.bit_generator.state,
                          optimizer_arrays=opt_arrays, optimizer_meta=opt_meta, arrays=arrays,
                          extra=dict(history=self.history, train_seconds=self.train_seconds,
                                     batch=self.batch, text_digest=self.text_digest, **(extra or {})))

    def save(self, path, extra=None):
        save_checkpoint(path, self.to_checkpoint(extra))

    @classmethod
    def resume(cls, path, text, **overrides):
        """A Trainer continuing the run saved at ``path`` on the same ``text``.

        ``overrides`` may change settings that do not affect shapes (e.g. backend)."""
        ckpt = load_checkpoint(path)
        config = LMConfig.from_dict({**ckpt.config, **overrides})
        if not ckpt.vocab:
            raise CheckpointError(f"checkpoint {path}: has no vocabulary")
        try:
            trainer = cls(text, config, vocab=Vocabulary(ckpt.vocab))
        except TextError as exc:
            raise CheckpointError(f"{path} was trained on a different text ({exc}); resume needs "
                                  f"the same text") from None
        trainer.restore(ckpt, path)
        return trainer

    def restore(self, ckpt, path="checkpoint"):
        check_config_matches(ckpt, asdict(self.config), SHAPE_KEYS + ("window", "seed"), path)
        if list(ckpt.vocab or []) != self.vocab.chars:
            raise CheckpointError(f"{path}: vocabulary differs from this model's "
                                  f"({len(ckpt.vocab or [])} vs {len(self.vocab)} characters)")
        if ckpt.extra.get("text_digest", self.text_digest) != self.text_digest:
            raise CheckpointError(f"{path} was trained on a different text (digest "
                                  f"{ckpt.extra.get('text_digest')} vs {self.text_digest}); resume "
                                  f"needs the same text")
        if ckpt.extra.get("batch", self.batch) != self.batch:
            raise CheckpointError(f"{path}: was trained with {ckpt.extra.get('batch')} streams, this "
                                  f"text/config gives {self.batch}; resume needs the same text")
        be = self.lm._backend
        try:
            self.lm.load_state_dict(ckpt.params)
            self.optimizer.load_state_dict(ckpt.optimizer_arrays, ckpt.optimizer_meta or {}, be.asarray)
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(f"{path} does not fit this model: {exc}") from None
        self.step = ckpt.step
        states = [be.asarray(ckpt.arrays[k]) for k in sorted(ckpt.arrays) if k.startswith("state")]
        self.state = None if not states else (tuple(states) if len(states) > 1 else states[0])
        self.rng.bit_generator.state = ckpt.rng_state
        self.history = {k: list(v) for k, v in ckpt.extra.get("history", self.history).items()}
        self.train_seconds = float(ckpt.extra.get("train_seconds", 0.0))


def load_model(path, backend="auto"):
    """(CharLM, Vocabulary, checkpoint) from a checkpoint written by ``Trainer.save``."""
    ckpt = load_checkpoint(path)
    if not ckpt.vocab:
        raise CheckpointError(f"checkpoint {path}: has no vocabulary (not a character LM)")
    config = LMConfig.from_dict({**ckpt.config, "backend": backend})
    lm = CharLM(len(ckpt.vocab), config.cell, config.hidden, config.layers, backend, config.dtype, None)
    try:
        lm.load_state_dict(ckpt.params)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: weights do not fit its config: {exc}") from None
    return lm, Vocabulary(ckpt.vocab), ckpt


def plot_loss_curve(history, path, unigram_bpc=None, title="character LM"):
    """Training bpc per step (and a running mean), validation bpc, unigram entropy."""
    from .plotting import pyplot
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    steps, bpc = np.asarray(history["step"]), np.asarray(history["train_bpc"])
    if len(bpc):
        ax.plot(steps, bpc, color="tab:blue", alpha=0.3, lw=0.8, label="train (per step)")
        n = max(1, min(50, len(bpc) // 10))
        smooth = np.convolve(bpc, np.ones(n) / n, mode="valid")
        ax.plot(steps[n - 1:], smooth, color="tab:blue", label=f"train ({n}-step mean)")
    if history.get("val_step"):
        ax.plot(history["val_step"], history["val_bpc"], "o-", color="tab:orange", label="validation")
    if unigram_bpc is not None:
        ax.axhline(unigram_bpc, color="gray", ls="--", label=f"unigram entropy {unigram_bpc:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per character")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["CELLS", "CharLM", "LMConfig", "Trainer", "load_model", "make_rnn", "plot_loss_curve",
           "sample"]
