"""The ``gpurnn`` command: train / sample a character LM, forecast, gradflow, info.

    gpurnn train --out runs/demo            # LSTM on the standard library's source
    gpurnn sample runs/demo/checkpoint.npz --prime "def "
    gpurnn forecast --out runs/forecast     # AR(tau) vs MLP vs latent AR
    gpurnn gradflow --out runs/gradflow     # vanishing / exploding gradients, plotted
    gpurnn info                             # backends, GPU, versions: paste into bug reports

Problems the user can fix (a bad argument value, bad text, window too long, bad
checkpoint, backend missing, unwritable output, a diverging run) end with exit code 2 and
one line naming the problem, never a traceback: commands raise, and main() is the one
place that reports (``expected_errors``). Training saves DIR/checkpoint.npz periodically
and on SIGINT/SIGTERM (exit 130/143); README, Reliability.
"""
import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with the user's input: reported in one line, exit code 2."""


class Stopped(Exception):
    """Training stopped by a signal after saving: exit code 128 + the signal's number."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.code = 128 + signum


# ----------------------------------------------------------------------------- argument types


def integer(low, high):
    """argparse type: an int in low..high."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in {low}..{high:,}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def number(low=None, high=None, allow_low=False):
    """argparse type: a finite float, above ``low`` (or equal, with allow_low), below ``high``."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = math.isfinite(value) and (low is None or value > low or (allow_low and value == low)) \
            and (high is None or value < high)
        if not ok:
            bound = "" if low is None else f" {'>=' if allow_low else '>'} {low:g}"
            bound += "" if high is None else f"{' and' if bound else ''} < {high:g}"
            raise argparse.ArgumentTypeError(f"expected a finite number{bound}, got {text}")
        return value
    parse.__name__ = "number"
    return parse


def cell_list(text):
    """argparse type: comma-separated cell names, at least one."""
    from .charlm import CELLS
    cells = tuple(c for c in text.split(",") if c)
    bad = [c for c in cells if c not in CELLS]
    if bad or not cells:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(CELLS)}, "
                                         f"got {text!r}")
    return cells


def resolve_backend(name, option="--backend"):
    """The backend object for a --backend value; UsageError naming the option otherwise."""
    from ..backend import BackendUnavailable, get_backend
    try:
        return get_backend(name)
    except (ValueError, BackendUnavailable) as exc:
        raise UsageError(f"{option}: {exc}") from None


def output_dir(path, option="--out"):
    """Create ``path`` (a directory for the command's outputs) or say why not."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{option} {path}: exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot create it ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: not writable")
    return path


@contextlib.contextmanager
def writing(path):
    """Turns an OSError while writing ``path`` into a one-line UsageError."""
    try:
        yield
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None

# ----------------------------------------------------------------------------- train


# About a minute on a 2-core CPU with the cpu backend (README shows a measured run).
DEFAULT_STEPS = 1000
CHECKPOINT_EVERY, CHECKPOINT_SECONDS = 100, 60.0
MAX_STEPS = 10 ** 9
# The LMConfig fields that are train options (same names, "_" -> "-"); their defaults are
# LMConfig's, so that a resumed run can tell which ones the user gave.
CONFIG_OPTIONS = ("cell", "hidden", "layers", "backend", "window", "batch", "lr", "optimizer", "clip",
                  "val_fraction", "seed")


def add_train_args(p):
    from .charlm import CELLS, LMConfig
    d = LMConfig()
    p.add_argument("--text", metavar="FILE", help="UTF-8 text to train on (default: the Python "
                   "standard library's own source, found on every machine with Python)")
    p.add_argument("--cell", choices=CELLS, help=f"recurrent cell (default: {d.cell})")
    p.add_argument("--hidden", type=int, help=f"hidden units per layer (default: {d.hidden})")
    p.add_argument("--layers", type=int, help=f"stacked layers (default: {d.layers})")
    p.add_argument("--backend", help=f"numpy | cpu | cuda | auto (default: {d.backend})")
    p.add_argument("--window", "-k", type=int,
                   help=f"truncated-BPTT window k in characters (default: {d.window})")
    p.add_argument("--batch", type=int, help=f"parallel text streams B (default: {d.batch})")
    p.add_argument("--lr", type=float, help=f"learning rate (default: {d.lr:g})")
    p.add_argument("--optimizer", choices=["adam", "sgd"], help=f"(default: {d.optimizer})")
    p.add_argument("--clip", type=float, help=f"max global gradient norm (default: {d.clip:g})")
    p.add_argument("--steps", type=integer(1, MAX_STEPS), default=DEFAULT_STEPS,
                   help=f"optimizer steps in total, one window each (default: {DEFAULT_STEPS})")
    p.add_argument("--val-fraction", type=float,
                   help=f"held-out tail of the text for validation (default: {d.val_fraction:g})")
    p.add_argument("--eval-every", type=integer(1, MAX_STEPS), default=None,
                   help="validate every N steps (default: steps/5)")
    p.add_argument("--sample-every", type=integer(0, MAX_STEPS), default=None,
                   help="print a sample every N steps (default: steps/4; 0 = never)")
    p.add_argument("--sample-length", type=integer(0, 10 ** 6), default=200,
                   help="characters per sample (default: 200)")
    p.add_argument("--temperature", type=number(0.0), default=0.8,
                   help="sampling temperature > 0 (default: 0.8)")
    p.add_argument("--seed", type=int, help=f"weights and sampling seed (default: {d.seed})")
    p.add_argument("--out", default="runs/charlm", metavar="DIR",
                   help="writes DIR/metrics.json, DIR/loss_curve.png, DIR/checkpoint.npz "
                        "(default: runs/charlm)")
    p.add_argument("--checkpoint-every", type=integer(0, MAX_STEPS), default=CHECKPOINT_EVERY,
                   metavar="N", help=f"save DIR/checkpoint.npz every N steps (default: "
                   f"{CHECKPOINT_EVERY}; 0 = only at the end), and on Ctrl-C / SIGTERM")
    p.add_argument("--checkpoint-seconds", type=number(0.0, allow_low=True), default=CHECKPOINT_SECONDS,
                   metavar="S", help=f"...and at least every S seconds (default: {CHECKPOINT_SECONDS:g}; "
                   f"0 = no time limit)")
    p.add_argument("--resume", metavar="CKPT", help="continue the run saved in CKPT (same text, same "
                   "settings) up to --steps in total; it matches the uninterrupted run bit for bit")


def _config_for(args, text):
    """(Trainer, notes) for a new run or a resumed one; every conflict is a UsageError."""
    from .charlm import ConfigError, LMConfig, RESUME_OVERRIDES, Trainer
    from ..train.checkpoint import load_checkpoint
    given = {k: getattr(args, k) for k in CONFIG_OPTIONS if getattr(args, k) is not None}
    notes = []
    try:
        if not args.resume:
            return Trainer(text, LMConfig(**given)), notes
        saved = load_checkpoint(args.resume, expect=lambda c, keys: dict.fromkeys(keys))   # meta only
        conflicts = [f"--{k.replace('_', '-')} {v!r} (the checkpoint has {saved.config.get(k)!r})"
                     for k, v in given.items() if k not in RESUME_OVERRIDES and v != saved.config.get(k)]
        if conflicts:
            raise UsageError(f"--resume keeps the saved run's settings; these differ: "
                             f"{', '.join(conflicts)}. Drop them, or start a new run without --resume")
        if saved.step >= args.steps:
            raise UsageError(f"--steps {args.steps}: the checkpoint is already at step {saved.step}; "
                             f"ask for more (--steps N, N > {saved.step}) to continue training")
        overrides = {k: v for k, v in given.items() if k in RESUME_OVERRIDES}
        notes = [f"note: --{k} {v!r} replaces the checkpoint's {saved.config.get(k)!r}"
                 + ("" if k == "backend" else "; the run no longer repeats the uninterrupted one")
                 for k, v in overrides.items() if v != saved.config.get(k)]
        return Trainer.resume(args.resume, text, **overrides), notes
    except ConfigError as exc:
        raise UsageError(f"--{exc.field.replace('_', '-')}: {exc.problem}") from None


def cmd_train(args):
    import numpy as np

    from .charlm import TrainingDiverged, plot_loss_curve
    from ..train.checkpoint import remove_stale_temps
    from ..train.data import default_corpus, load_text
    if args.backend is not None:
        resolve_backend(args.backend)
    output_dir(args.out)
    ckpt_path = os.path.join(args.out, "checkpoint.npz")
    remove_stale_temps(ckpt_path)          # left by a writer that was killed (kill -9)
    if args.text:
        text, source = load_text(args.text), args.text
    else:
        text, source = default_corpus()
    trainer, notes = _config_for(args, text)
    c = trainer.config
    for note in notes:
        print(note, file=sys.stderr)
    print(f"text: {source} ({len(text)} chars, vocabulary {len(trainer.vocab)}, unigram entropy "
          f"{trainer.unigram_bpc:.2f} bits/char)")
    print(f"model: {c.cell} {c.layers}x{c.hidden} on backend {trainer.lm.backend!r}; window k={c.window}, "
          f"batch {trainer.batch}, {c.optimizer} lr {c.lr}, {args.steps} steps "
          f"({trainer.chars_per_step} chars/step)")
    sys.stdout.flush()

    eval_every = args.eval_every or max(1, args.steps // 5)
    sample_every = args.sample_every if args.sample_every is not None else max(1, args.steps // 4)
    saver = PeriodicCheckpoint(trainer, ckpt_path, args.checkpoint_every, args.checkpoint_seconds,
                               extra={"text_source": source},
                               saved_step=trainer.step if args.resume and _same_file(args.resume, ckpt_path)
                               else None)
    bar = ProgressBar(args.steps, start=trainer.step)
    t_start = time.perf_counter()
    val_bpc = None
    # Overflow on the way to a divergence is reported once, by the check in train_step,
    # not as a screenful of NumPy RuntimeWarnings.
    with StopOnSignal() as stop, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            while trainer.step < args.steps and not stop.signum:
                bpc, _ = trainer.train_step()
                if trainer.step % eval_every == 0 or trainer.step == args.steps:
                    trainer.check_finite()
                    val_bpc = trainer.evaluate("val")
                bar.update(trainer.step, bpc, trainer.chars_per_second, val_bpc)
                if sample_every and trainer.step % sample_every == 0 and trainer.step < args.steps:
                    trainer.check_finite()
                    bar.clear()
                    print(f"--- sample at step {trainer.step} (val {val_bpc if val_bpc is not None else float('nan'):.3f}"
                          f" bpc) ---\n{trainer.sample(args.sample_length, args.temperature)}\n---", flush=True)
                saver.maybe_save()
        except TrainingDiverged as exc:
            bar.clear()
            raise UsageError(f"{exc}; {saver.save_if_good()}") from None
        if stop.signum:
            bar.clear()
            saver.save()
            raise Stopped(f"stopped by {signal.Signals(stop.signum).name} at step {trainer.step}; saved "
                          f"{ckpt_path}; continue with --resume {ckpt_path} --steps {args.steps}",
                          stop.signum)
    bar.finish()
    trainer.check_finite()
    if saver.saved_step != trainer.step:
        saver.save()                   # before the final evaluation: a Ctrl-C there loses nothing
    if val_bpc is None or trainer.history["val_step"][-1:] != [trainer.step]:
        val_bpc = trainer.evaluate("val")
    train_bpc = trainer.evaluate("train")
    wall = time.perf_counter() - t_start
    saver.save()
    curve_path = os.path.join(args.out, "loss_curve.png")
    with writing(curve_path):
        plot_loss_curve(trainer.history, curve_path, trainer.unigram_bpc,
                        title=f"{c.cell} {c.layers}x{c.hidden}, backend {trainer.lm.backend}")
    metrics = {
        "val_bpc": val_bpc, "train_bpc": train_bpc, "train_bpc_chars": trainer.train_eval_chars,
        "unigram_bpc": trainer.unigram_bpc,
        "steps": trainer.step, "backend": trainer.lm.backend, "chars_per_s": trainer.chars_per_second,
        "wall_s": wall, "text": source, "text_chars": len(text), "vocab_size": len(trainer.vocab),
        "batch": trainer.batch, "config": asdict(c),
        "val_history": {"step": trainer.history["val_step"], "val_bpc": trainer.history["val_bpc"]},
    }
    metrics_path = os.path.join(args.out, "metrics.json")
    with writing(metrics_path), open(metrics_path, "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"--- final sample (temperature {args.temperature}) ---\n"
          f"{trainer.sample(args.sample_length, args.temperature)}\n---")
    print(f"done: {trainer.step} steps in {_fmt_time(wall)} on backend {trainer.lm.backend!r}, "
          f"{trainer.chars_per_second:,.0f} chars/s")
    print(f"val {val_bpc:.3f} bits/char, train {train_bpc:.3f} bits/char on its first "
          f"{trainer.train_eval_chars:,} chars (unigram entropy {trainer.unigram_bpc:.3f})")
    print(f"wrote {metrics_path}, {curve_path}, {ckpt_path}")
    return 0


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class PeriodicCheckpoint:
    """Saves the trainer every ``every`` steps or ``seconds`` seconds, whichever comes first
    (0 turns either off), atomically (checkpoint.save_checkpoint), only with finite weights."""

    def __init__(self, trainer, path, every, seconds, extra=None, saved_step=None):
        self.trainer, self.path, self.every, self.seconds = trainer, path, every, seconds
        self.extra = extra
        self.saved_step = saved_step        # the step of the last good checkpoint at path
        self.last_time = time.monotonic()

    def maybe_save(self):
        step = self.trainer.step
        due_steps = self.every and step % self.every == 0
        due_time = self.seconds and time.monotonic() - self.last_time >= self.seconds
        if due_steps or due_time:
            self.trainer.check_finite()
            self.save()

    def save(self):
        with writing(self.path):
            self.trainer.save(self.path, extra=self.extra)
        self.saved_step, self.last_time = self.trainer.step, time.monotonic()

    def save_if_good(self):
        """After a divergence: save the current state if its weights are finite (the step
        that diverged was not applied); say which checkpoint the user has."""
        from .charlm import TrainingDiverged
        try:
            self.trainer.check_finite()
            self.save()
        except TrainingDiverged:
            pass
        if self.saved_step is None:
            return "no checkpoint was saved (no step before it had finite weights)"
        return f"the last good checkpoint is {self.path} (step {self.saved_step})"


class StopOnSignal:
    """SIGINT / SIGTERM during training set ``signum``: the loop finishes its step, saves
    and exits 128 + signum (130 / 143). A second signal interrupts at once. Installed only
    on the main thread (Python delivers signals there)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.signum, self._previous = None, {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class ProgressBar:
    """One self-rewriting line on a terminal; a line every ~5% when stderr is a file.

    The ETA counts from the end of the first update's step, so the first step's JIT
    compile (seconds, cold) does not inflate it."""

    def __init__(self, total, start=0, stream=None, width=24):
        self.total, self.width = total, width
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0, self.start = None, start
        self.every = max(1, total // 20)
        self.last = ""

    def line(self, step, bpc, chars_per_s, val_bpc):
        frac = step / self.total
        filled = int(self.width * frac)
        if self.t0 is None:                    # the first step (compile included) just ended
            self.t0, self.start = time.perf_counter(), step
        done = step - self.start
        eta = f"{_fmt_time((time.perf_counter() - self.t0) / done * (self.total - step))}" if done else "--"
        val = f" | val {val_bpc:.3f}" if val_bpc is not None else ""
        return (f"step {step:>{len(str(self.total))}}/{self.total} [{'#' * filled}{'.' * (self.width - filled)}]"
                f" {frac:4.0%} | train {bpc:.3f} bits/char{val} | {chars_per_s / 1000:.1f}k chars/s"
                f" | eta {eta}")

    def update(self, step, bpc, chars_per_s, val_bpc=None):
        self.last = self.line(step, bpc, chars_per_s, val_bpc)
        if self.tty:
            self.stream.write("\r" + self.last + "\033[K")
            self.stream.flush()
        elif step % self.every == 0 or step == self.total:
            self.stream.write(self.last + "\n")
            self.stream.flush()

    def clear(self):
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def finish(self):
        if self.tty and self.last:
            self.stream.write("\r" + self.last + "\033[K\n")
            self.stream.flush()


def _fmt_time(seconds):
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"

# ----------------------------------------------------------------------------- sample


def add_sample_args(p):
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint.npz written by gpurnn train")
    p.add_argument("--length", type=integer(0, 10 ** 7), default=500,
                   help="characters to generate (default: 500)")
    p.add_argument("--temperature", type=number(0.0), default=0.8,
                   help="softmax temperature > 0; lower is more conservative (default: 0.8)")
    p.add_argument("--prime", default="", help="text to condition on (printed before the sample)")
    p.add_argument("--seed", type=integer(0, 2 ** 63 - 1), default=None,
                   help="sampling seed (default: random)")
    p.add_argument("--backend", default="auto", help="numpy | cpu | cuda | auto (default: auto)")


def cmd_sample(args):
    import numpy as np

    from .charlm import load_model, sample
    resolve_backend(args.backend)
    lm, vocab, _ = load_model(args.checkpoint, args.backend)
    text = sample(lm, vocab, args.length, args.temperature, args.prime, np.random.default_rng(args.seed))
    print(args.prime + text)
    return 0

# ----------------------------------------------------------------------------- forecast


def add_forecast_args(p):
    p.add_argument("--out", default="runs/forecast", metavar="DIR",
                   help="writes DIR/forecast.md (table) and DIR/forecast.png (default: runs/forecast)")
    p.add_argument("--n", type=integer(20, 10 ** 7), default=4000,
                   help="length of each series (default: 4000)")
    p.add_argument("--tau", type=integer(1, 1000), default=5, help="window of AR(tau) and the MLP (default: 5)")
    p.add_argument("--hidden", type=integer(1, 4096), default=32,
                   help="hidden units of MLP and latent models (default: 32)")
    p.add_argument("--steps", type=integer(1, MAX_STEPS), default=800,
                   help="training steps of the latent models (default: 800)")
    p.add_argument("--cells", type=cell_list, default=("rnn_tanh", "lstm", "gru"),
                   help="latent cells, comma-separated (default: rnn_tanh,lstm,gru)")
    p.add_argument("--backend", default="auto", help="numpy | cpu | cuda | auto (default: auto)")
    p.add_argument("--seed", type=integer(0, 2 ** 63 - 1), default=0)


def cmd_forecast(args):
    from .forecast import plot_forecasts, results_table, run_forecast
    if args.n < 10 * (args.tau + 1):
        raise UsageError(f"--n: the series must be much longer than the window; got n={args.n}, tau={args.tau}")
    resolve_backend(args.backend)
    output_dir(args.out)
    t0 = time.perf_counter()

    def progress(message):                  # a cold start compiles for ~50 s: say what runs
        print(f"[{_fmt_time(time.perf_counter() - t0)}] {message}", file=sys.stderr, flush=True)
    results, floors = run_forecast(args.n, args.tau, args.hidden, args.steps, args.backend, args.seed,
                                   args.cells, progress=progress)
    table = results_table(results, floors)
    md_path, png_path = os.path.join(args.out, "forecast.md"), os.path.join(args.out, "forecast.png")
    with writing(md_path), open(md_path, "w") as f:
        f.write(f"One-step-ahead test MSE (standardised series, last 25% held out), tau={args.tau}\n\n"
                f"{table}\n")
    with writing(png_path):
        plot_forecasts(results, png_path)
    print(table)
    print(f"wrote {md_path}, {png_path}")
    return 0

# ----------------------------------------------------------------------------- gradflow


def add_gradflow_args(p):
    p.add_argument("--out", default="runs/gradflow", metavar="DIR",
                   help="writes DIR/gradflow.png and DIR/gradflow.json (default: runs/gradflow)")
    p.add_argument("--length", "-T", type=integer(2, 100_000), default=120,
                   help="sequence length T (default: 120)")
    p.add_argument("--hidden", type=integer(1, 4096), default=32, help="hidden units (default: 32)")
    p.add_argument("--truncate", type=integer(1, 100_000), default=20,
                   help="truncated-BPTT window k (default: 20)")
    p.add_argument("--cells", type=cell_list, default=("rnn_tanh", "rnn_relu", "lstm", "gru"),
                   help="cells to compare, comma-separated (default: rnn_tanh,rnn_relu,lstm,gru)")
    p.add_argument("--seed", type=integer(0, 2 ** 63 - 1), default=0)


def cmd_gradflow(args):
    from .diagnostics import decay_rate, gradient_flow_all, plot_gradient_flow
    output_dir(args.out)
    flows = gradient_flow_all(cells=args.cells, T=args.length, hidden=args.hidden, truncate=args.truncate,
                              seed=args.seed)
    png_path, json_path = os.path.join(args.out, "gradflow.png"), os.path.join(args.out, "gradflow.json")
    with writing(png_path):
        plot_gradient_flow(flows, png_path)
    with writing(json_path), open(json_path, "w") as f:
        json.dump({c: {"distance": fl.distance.tolist(), "grad_norm": fl.grad_norm.tolist(),
                       "grad_norm_truncated": fl.grad_norm_truncated.tolist(),
                       "jacobian_norm": fl.jacobian_norm.tolist(), "truncate": fl.truncate}
                   for c, fl in flows.items()}, f)
    T = args.length
    print(f"||dL/dh_t|| at distance T-t (loss at the last of T={T} steps; truncated window k={args.truncate})")
    marks = [d for d in (1, 10, args.truncate, 50, T - 1) if d < T]
    marks = sorted(set(marks))
    print(f"{'cell':<10}" + "".join(f"{'d=' + str(d):>11}" for d in marks) + f"{'decades/step':>14}")
    for cell, fl in flows.items():
        print(f"{cell:<10}" + "".join(f"{fl.grad_norm[d]:>11.2e}" for d in marks)
              + f"{decay_rate(fl):>+14.3f}")
    print(f"wrote {os.path.join(args.out, 'gradflow.png')}, {os.path.join(args.out, 'gradflow.json')}")
    return 0

# ----------------------------------------------------------------------------- info


def collect_info():
    """(label, value) pairs; every probe is guarded, so this never raises."""
    import platform
    rows = [("gpurnn", _safe(lambda: __import__("gpurnn").__version__)),
            ("python", sys.version.split()[0]), ("platform", platform.platform()),
            ("cpu cores", str(os.cpu_count()))]
    from importlib import metadata
    for dist in ("numpy", "scipy", "numba", "numba-cuda", "cupy-cuda12x", "cupy-cuda13x", "cupy",
                 "torch", "matplotlib"):
        rows.append((dist, _safe(lambda d=dist: metadata.version(d), "not installed")))
    rows.append(("cuda-bindings", _safe(lambda: metadata.version("cuda-bindings"), "not installed")))
    rows.append(("CUDA toolkit packages", _safe(_toolkit_packages, "unknown")))
    sim = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"
    rows.append(("CUDA simulator", "on (NUMBA_ENABLE_CUDASIM=1)" if sim else "off"))
    rows.append(("GPU / driver", _safe(_gpu_description, "none found")))
    rows.append(("backends available", _safe(lambda: ", ".join(__import__("gpurnn").available_backends()))))
    rows.append(("backend 'auto' picks", _safe(lambda: __import__("gpurnn").get_backend("auto").name)))
    rows.append(("cuda GEMM path", _safe(_gemm_path)))
    rows.append(("cpu GEMM path", _safe(_cpu_gemm_path)))
    rows.append(("cpu thread pool", _safe(_cpu_pool)))
    return rows


def _cpu_pool():
    """Which threads the cpu backend's split recurrence runs its parts 1.. on here."""
    import gpurnn
    if "cpu" not in gpurnn.available_backends():
        return "none (no cpu backend here: pip install numba)"
    return gpurnn.get_backend("cpu").pool_path()


def _toolkit_packages():
    """The pip-installed CUDA toolkit pieces (numba-cuda[cu12/cu13] brings them)."""
    from importlib import metadata
    found = sorted({(d.metadata["Name"], d.version) for d in metadata.distributions()
                    if d.metadata["Name"] and (d.metadata["Name"].lower().startswith("nvidia-")
                                               or d.metadata["Name"].lower() == "cuda-toolkit")})
    if not found:
        return "none (no NVVM: real PTX needs pip install -e '.[test-cu12]' or '.[cuda12]')"
    return ", ".join(f"{name} {version}" for name, version in found)


def _gemm_path():
    """Which GEMM the cuda backend's input projection and weight gradients will use."""
    import gpurnn
    if "cuda" not in gpurnn.available_backends():
        return "none (no cuda backend here)"
    if gpurnn.get_backend("cuda").xp.__name__ == "cupy":     # the contract's array module
        return "cuBLAS via CuPy"
    why = "the CUDA simulator" if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else "CuPy not importable"
    return f"Numba gemm kernel (fallback: {why}; pip install -e '.[cuda12]' for cuBLAS)"


def _cpu_gemm_path():
    """Which library the cpu backend's float32 "rows" recurrence (B > 8) multiplies with,
    where its time loop runs, and why (what tape["plan"] will say)."""
    import gpurnn
    if "cpu" not in gpurnn.available_backends():
        return "none (no cpu backend here: pip install numba)"
    return gpurnn.get_backend("cpu").products_path("float32")


def _gpu_description():
    import shutil
    import subprocess
    if not shutil.which("nvidia-smi"):
        return "none (no nvidia-smi)"
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    if out.returncode != 0:
        return f"nvidia-smi failed: {out.stderr.strip()[:200]}"
    return "; ".join(line.strip() for line in out.stdout.splitlines() if line.strip())


def _safe(fn, default="unknown"):
    try:
        value = fn()
        return default if value in (None, "") else str(value)
    except Exception as exc:   # info must never crash: report what went wrong instead
        return f"{default} ({type(exc).__name__}: {str(exc)[:120]})" if default == "unknown" else default


def cmd_info(args):
    for label, value in collect_info():
        print(f"{label + ':':<22} {value}")
    return 0

# ----------------------------------------------------------------------------- main


class Parser(argparse.ArgumentParser):
    """argparse whose errors are UsageErrors, so that main() reports them like all others."""

    def error(self, message):
        raise UsageError(message)


def build_parser():
    parser = Parser(
        prog="gpurnn", description="Fused RNN/LSTM/GRU kernels: train a character language model, "
        "forecast time series, look at gradient flow.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = {
        "train": (add_train_args, cmd_train, "train a character-level language model (truncated BPTT)"),
        "sample": (add_sample_args, cmd_sample, "generate text from a checkpoint"),
        "forecast": (add_forecast_args, cmd_forecast, "AR(tau) vs window MLP vs latent-AR RNN/LSTM/GRU"),
        "gradflow": (add_gradflow_args, cmd_gradflow, "gradient norm vs distance through time, per cell"),
        "info": (lambda p: None, cmd_info, "backends, GPU and driver, library versions"),
    }
    for name, (add_args, fn, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(func=fn)
    return parser


def expected_errors():
    """The exceptions that are the user's to fix: one line each, exit code 2."""
    from ..backend import BackendUnavailable
    from .charlm import ConfigError, TrainingDiverged
    from ..train.checkpoint import CheckpointError
    from ..train.data import TextError
    return (UsageError, TextError, CheckpointError, ConfigError, TrainingDiverged, BackendUnavailable)


def main(argv=None):
    """Run one command. The one place errors are reported: an expected failure (bad
    argument, text, checkpoint, backend; divergence; out of memory) prints one line
    ``gpurnn COMMAND: error: ...`` and returns 2; a signal that stopped training after
    saving returns 128 + its number; Ctrl-C elsewhere returns 130."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    prog = f"gpurnn {command}" if command else "gpurnn"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_USAGE
        return args.func(args)
    except expected_errors() as exc:
        message = str(exc)
    except MemoryError:
        message = "out of memory; use a smaller model (--hidden, --layers, --batch) or shorter inputs"
    except Stopped as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return 130
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
