"""Character-level language model trained with truncated BPTT (the min-char-rnn loop).

The model is the lecture note's latent autoregression: H_t = Net(H_{t-1}, X_{t-1}) with
Net an LSTM/GRU/RNN from gpurnn, and P(x_t | x_<t) = softmax(H_t W + b). Training
minimises -sum_t log P(x_t | x_<t) over windows of k characters:

    for each step:
        x, y   = the next k characters of each of B streams, and the same shifted by one
        H, s   = rnn(x, s)                  # x: ids = one-hot rows; s carried over...
        loss   = cross_entropy(H W + b, y)  # ...but its gradient is stopped there (TBPTT)
        backward, clip the global gradient norm, optimizer step

The B streams are B contiguous slices of the training text, so window w of a stream
continues window w-1 and the carried state is the right context. Every step's data is a
function of the step number alone, which makes a resumed run repeat the uninterrupted one.
"""
import hashlib
import math
import time
from dataclasses import asdict, dataclass, fields

import numpy as np

from ..arrays import to_numpy
from ..cells import get_cell, names
from ..layers import make_layer
from ..train.checkpoint import Checkpoint, CheckpointError, check_config_matches, load_checkpoint, save_checkpoint
from ..train.data import TextError, Vocabulary, as_streams, split_train_val
from ..train.losses import LN2, OutputLayer, unigram_entropy_bits
from ..train.optim import clip_scale, global_norm, make_optimizer, prefixed, unprefixed
from ..train.tbptt import tbptt_window, window_at
from ..validation import physical_memory

CELLS = tuple(names())        # every registered cell (the built-ins at import)


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

    def check(self):
        """ConfigError naming the first field whose value cannot train (wrong type, out of
        range, NaN); returns self. Bounds are far above any run that fits a machine, and
        stop a typo (or a crafted checkpoint) from asking for terabytes."""
        for name, (kind, low, high) in CONFIG_RULES.items():
            value = getattr(self, name)
            if kind is int:
                ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
                expected = f"an integer in {low}..{high}"
            elif kind is float:
                ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                      and math.isfinite(value) and low < value < high)
                expected = f"a finite number in ({low:g}, {high:g})"
            else:
                ok = value in kind
                expected = f"one of {', '.join(kind)}"
            if not ok:
                raise ConfigError(name, f"expected {expected}, got {value!r}")
        if not isinstance(self.backend, str):
            raise ConfigError("backend", f"expected a backend name, got {self.backend!r}")
        return self


class ConfigError(ValueError):
    """An LMConfig value that cannot train; ``field`` names it."""

    def __init__(self, field, problem):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


# (type, low, high) per LMConfig field; a tuple of strings is the set of choices.
CONFIG_RULES = {
    "cell": (CELLS, None, None), "hidden": (int, 1, 1 << 16), "layers": (int, 1, 64),
    "window": (int, 1, 1 << 20), "batch": (int, 1, 1 << 16), "lr": (float, 0.0, math.inf),
    "optimizer": (("adam", "sgd"), None, None), "clip": (float, 0.0, math.inf),
    "val_fraction": (float, 0.0, 1.0), "dtype": (("float32", "float64"), None, None),
    "seed": (int, 0, 2 ** 63 - 1),
}

# Config entries that change the model's shapes or the data order: a checkpoint must agree.
SHAPE_KEYS = ("cell", "hidden", "layers")
# What a resumed run may change (it then continues, but not as the saved run would have).
RESUME_OVERRIDES = ("backend", "lr", "clip")


def param_shapes(config, vocab_size):
    """{name: shape} of CharLM's parameters, from torch's layout (the public contract of
    the layers' state_dict; tests/test_reliability_checkpoint.py checks it against a model),
    without building the model: a checkpoint's arrays are checked against it first."""
    G, H, V = get_cell(config.cell).n_gates, config.hidden, vocab_size
    shapes = {}
    for layer in range(config.layers):
        shapes[f"rnn.weight_ih_l{layer}"] = (G * H, V if layer == 0 else H)
        shapes[f"rnn.weight_hh_l{layer}"] = (G * H, H)
        shapes[f"rnn.bias_ih_l{layer}"] = (G * H,)
        shapes[f"rnn.bias_hh_l{layer}"] = (G * H,)
    shapes.update({"head.weight": (H, V), "head.bias": (V,)})
    return shapes


OPTIMIZER_BUFFERS = {"adam": ("m", "v"), "sgd": ("velocity",)}


def train_nbytes(config, vocab_size):
    """About the memory a training run holds: weights, gradients and optimizer buffers,
    plus one window's activations and tape."""
    params = sum(math.prod(s) for s in param_shapes(config, vocab_size).values())
    G = get_cell(config.cell).n_gates
    acts = config.window * config.batch * (config.layers * (G + 3) * config.hidden + 2 * vocab_size)
    copies = 2 + len(OPTIMIZER_BUFFERS[config.optimizer])
    return (copies * params + acts) * np.dtype(config.dtype).itemsize


class TrainingDiverged(ValueError):
    """A non-finite loss, gradient norm or weight: the step that showed it was not applied."""

    def __init__(self, step, what, value, config):
        super().__init__(f"training diverged at step {step}: the {what} is {value}; lower the "
                         f"learning rate (--lr, now {config.lr:g}) or clip harder (--clip, now "
                         f"{config.clip:g})")
        self.step = step


class CharLM:
    """RNN + output layer over one-hot characters."""

    def __init__(self, vocab_size, cell="lstm", hidden=256, layers=1, backend="auto",
                 dtype="float32", seed=0):
        self.vocab_size = vocab_size
        self.rnn = make_layer(cell, vocab_size, hidden, num_layers=layers, backend=backend,
                              dtype=dtype, seed=seed)
        self._backend = self.rnn.backend_impl
        # The head's products are the contract's matmul (on "cpu" split over the cores the
        # way the layers are), and a step runs inside compute_scope (on "cpu" BLAS held at
        # one thread throughout; gpurnn.contract).
        self.head = OutputLayer(hidden, vocab_size, dtype, seed=None if seed is None else seed + 1,
                                backend=self._backend)
        self.dtype = np.dtype(dtype)

    @property
    def backend(self):
        return self.rnn.backend

    def parameters(self):
        """Live arrays of the RNN and the head, named rnn.<torch name> and head.<name>."""
        return prefixed(rnn=self.rnn.parameters(), head=self.head.parameters())

    def grads(self):
        return prefixed(rnn=self.rnn.grads, head=self.head.grads)

    def zero_grad(self):
        self.rnn.zero_grad()
        self.head.zero_grad()

    def state_dict(self):
        return prefixed(rnn=self.rnn.state_dict(), head=self.head.state_dict())

    def load_state_dict(self, sd):
        self.rnn.load_state_dict(unprefixed(sd, "rnn"))
        self.head.load_state_dict(unprefixed(sd, "head"))

    def inputs(self, ids):
        """The RNN's input for character ids (T, B): the ids themselves, as int64 token
        inputs (gpurnn.layers): the first layer gathers W_ih's columns instead of
        multiplying by one_hot(ids), the same numbers without the (T, B, V) matrix, its
        dense GEMMs and a dx nobody uses."""
        return self._backend.asarray(np.asarray(ids, np.int64))

    def train_window(self, x_ids, y_ids, state):
        """Forward + backward on one (k, B) window. Returns (mean loss in nats, new state);
        gradients accumulate in grads()."""
        return tbptt_window(self.rnn, self.inputs(x_ids),
                            lambda out, start: self.head.loss_and_backward(out, y_ids), state)

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
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or math.isnan(temperature):
        raise ValueError(f"temperature: expected a number (<= 0 for greedy), got {temperature!r}")
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
        if not np.all(np.isfinite(logits)):
            raise ValueError("sample: the model's outputs are not finite (NaN or Inf weights: a "
                             "diverged run); sample from an earlier checkpoint")
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
        self.config = (config or LMConfig()).check()
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
        need, have = train_nbytes(c, len(self.vocab)), physical_memory()
        if have and need > have:
            raise ConfigError("hidden", f"{c.hidden} ({c.layers} layer(s) of {c.cell}, batch "
                              f"{self.batch}, window {c.window}) needs about {need / 2**30:.1f} GiB, "
                              f"this machine has {have / 2**30:.1f} GiB; use a smaller model")
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
        """One truncated-BPTT window + optimizer step. Returns (loss in bpc, pre-clip norm).

        TrainingDiverged if the loss or the gradient norm is not finite; that step is then
        not applied (weights, optimizer, carried state and step count stay as they were)."""
        # a new pass over the text starts from zero state
        steps, carried = window_at(self.step, self.config.window, self.windows_per_epoch, self.state)
        x = self.streams[:, steps].T                                    # (k, B)
        y = self.streams[:, steps.start + 1:steps.stop + 1].T
        t0 = time.perf_counter()
        self.lm.zero_grad()
        loss, state = self.lm.train_window(x, y, carried)
        grads = self.lm.grads()
        norm = global_norm(grads)
        for what, value in (("loss", loss), ("gradient norm", norm)):
            if not math.isfinite(value):
                raise TrainingDiverged(self.step + 1, what, value, self.config)
        # the clip factor is applied inside the update (one pass per parameter, grads unchanged)
        self.optimizer.step(self.lm.parameters(), grads, clip_scale(norm, self.config.clip))
        self.state = state
        self.train_seconds += time.perf_counter() - t0
        self.step += 1
        bpc = loss / LN2
        self.history["step"].append(self.step)
        self.history["train_bpc"].append(bpc)
        self.history["grad_norm"].append(norm)
        return bpc, norm

    def check_finite(self):
        """TrainingDiverged unless every weight is finite (a step with a finite loss and
        gradient can still overflow them); checked before evaluating, sampling, saving."""
        for name, p in self.lm.parameters().items():
            if not np.all(np.isfinite(to_numpy(p))):
                raise TrainingDiverged(self.step, f"weight {name}", "not finite", self.config)

    @property
    def train_eval_chars(self):
        """Characters evaluate("train") scores: the start of the training text, as many as
        the validation text has."""
        return min(len(self.train_ids), len(self.val_ids))

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

        ``overrides`` may change RESUME_OVERRIDES (backend, lr, clip) only."""
        wrong = sorted(set(overrides) - set(RESUME_OVERRIDES))
        if wrong:
            raise ValueError(f"overrides: a resumed run keeps its {', '.join(wrong)}; only "
                             f"{', '.join(RESUME_OVERRIDES)} may change")
        ckpt = load_checkpoint(path, expect=lambda c, keys: expected_entries(c, keys, path, training=True))
        config = _checkpoint_config(ckpt, path, overrides)
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
        extra = _checked_extra(ckpt, path)
        if extra.get("text_digest", self.text_digest) != self.text_digest:
            raise CheckpointError(f"{path} was trained on a different text (digest "
                                  f"{extra.get('text_digest')} vs {self.text_digest}); resume "
                                  f"needs the same text")
        if extra.get("batch", self.batch) != self.batch:
            raise CheckpointError(f"{path}: was trained with {extra.get('batch')} streams, this "
                                  f"text/config gives {self.batch}; resume needs the same text")
        be = self.lm._backend
        try:
            self.lm.load_state_dict(ckpt.params)
            self.optimizer.load_state_dict(ckpt.optimizer_arrays, ckpt.optimizer_meta or {}, be.asarray)
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(f"{path} does not fit this model: {exc}") from None
        if self.optimizer.t != ckpt.step:
            raise CheckpointError(f"checkpoint {path}: meta.optimizer.t: expected the step, "
                                  f"{ckpt.step}, got {self.optimizer.t!r}")
        try:
            self.rng.bit_generator.state = ckpt.rng_state
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {path}: meta.rng_state: not a {type(self.rng.bit_generator).__name__} "
                                  f"state ({type(exc).__name__}: {exc})") from None
        self.step = ckpt.step
        states = [be.asarray(ckpt.arrays[k]) for k in sorted(ckpt.arrays) if k.startswith("state")]
        self.state = None if not states else (tuple(states) if len(states) > 1 else states[0])
        self.history = {k: list(v) for k, v in extra.get("history", self.history).items()}
        self.train_seconds = float(extra.get("train_seconds", 0.0))


def _checkpoint_config(ckpt, path, overrides=None):
    """The checkpoint's LMConfig (with ``overrides``), every value checked."""
    unknown = sorted(set(ckpt.config) - {f.name for f in fields(LMConfig)})
    if unknown:
        raise CheckpointError(f"checkpoint {path}: config: unknown keys {unknown}")
    try:
        return LMConfig.from_dict({**ckpt.config, **(overrides or {})}).check()
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: config.{exc}") from None
    except TypeError as exc:
        raise CheckpointError(f"checkpoint {path}: config: {exc}") from None


def _checked_vocab(ckpt, path):
    chars = ckpt.vocab
    if not chars:
        raise CheckpointError(f"checkpoint {path}: meta.vocab: has no vocabulary (not a character LM)")
    bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
    if bad or len(set(chars)) != len(chars):
        raise CheckpointError(f"checkpoint {path}: meta.vocab: expected distinct single characters, "
                              f"got {(bad or ['duplicates'])[0]!r}")
    return Vocabulary(chars)


def _checked_extra(ckpt, path):
    """ckpt.extra with the fields the trainer uses checked (history, batch, timing)."""
    extra = ckpt.extra
    history = extra.get("history")
    if history is not None:
        keys = {"step", "train_bpc", "grad_norm", "val_step", "val_bpc"}
        if (not isinstance(history, dict) or set(history) != keys
                or not all(isinstance(v, list) for v in history.values())):
            raise CheckpointError(f"checkpoint {path}: meta.extra.history: expected lists "
                                  f"{sorted(keys)}")
    batch = extra.get("batch")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise CheckpointError(f"checkpoint {path}: meta.extra.batch: expected an integer >= 1, got {batch!r}")
    seconds = extra.get("train_seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
        raise CheckpointError(f"checkpoint {path}: meta.extra.train_seconds: expected a number >= 0, "
                              f"got {seconds!r}")
    return extra


def expected_entries(ckpt, keys, path, training):
    """``load_checkpoint``'s ``expect`` for a character LM: {entry: (shape, dtype) or None},
    from the checkpoint's own (checked) config and vocabulary. ``training``: the optimizer
    buffers and the carried state are read too (an exact resume needs them)."""
    config = _checkpoint_config(ckpt, path)
    vocab = _checked_vocab(ckpt, path)
    shapes = param_shapes(config, len(vocab))
    dtype = config.dtype
    plan = {f"param/{n}": (s, dtype) for n, s in shapes.items()}
    buffers = OPTIMIZER_BUFFERS[config.optimizer]
    optim = {f"optim/{b}/{n}": (s, dtype) for b in buffers for n, s in shapes.items()}
    if training and ckpt.step > 0 and not set(optim) <= set(keys):
        raise CheckpointError(f"checkpoint {path}: has no optimizer state ({config.optimizer} "
                              f"{'/'.join(buffers)} buffers) at step {ckpt.step}; resuming would "
                              f"restart the optimizer, not continue the run")
    n_states = get_cell(config.cell).n_states
    states = {f"array/state{i}": i for i in range(n_states)}
    present = [k for k in states if k in keys]
    if training and present:
        batch = _checked_extra(ckpt, path).get("batch")
        if batch is None or len(present) != n_states:
            raise CheckpointError(f"checkpoint {path}: carried state: expected {n_states} arrays "
                                  f"and meta.extra.batch, got {present} and batch {batch!r}")
        plan.update({k: ((config.layers, batch, config.hidden), dtype) for k in states})
    else:
        plan.update(dict.fromkeys(present))
    plan.update({k: spec if training else None for k, spec in optim.items() if k in keys})
    return plan


def load_model(path, backend="auto"):
    """(CharLM, Vocabulary, checkpoint) from a checkpoint written by ``Trainer.save``; only
    the weights are read (sizes checked against the config before any allocation)."""
    ckpt = load_checkpoint(path, expect=lambda c, keys: expected_entries(c, keys, path, training=False))
    config = _checkpoint_config(ckpt, path)
    vocab = _checked_vocab(ckpt, path)
    for name, value in ckpt.params.items():
        if not np.all(np.isfinite(value)):
            raise CheckpointError(f"checkpoint {path}: param/{name} contains NaN or Inf (a diverged run)")
    lm = CharLM(len(vocab), config.cell, config.hidden, config.layers, backend, config.dtype, None)
    try:
        lm.load_state_dict(ckpt.params)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: weights do not fit its config: {exc}") from None
    return lm, vocab, ckpt


def plot_loss_curve(history, path, unigram_bpc=None, title="character LM"):
    """Training bpc per step (and a running mean), validation bpc, unigram entropy."""
    from .plotting import pyplot, save_figure
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
    save_figure(fig, path)


__all__ = ["CELLS", "CharLM", "ConfigError", "LMConfig", "Trainer", "TrainingDiverged", "load_model",
           "param_shapes", "plot_loss_curve", "sample"]
