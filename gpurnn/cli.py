"""The ``gpurnn`` command: train / sample a character LM, forecast, gradflow, info.

    gpurnn train --out runs/demo            # LSTM on the standard library's source
    gpurnn sample runs/demo/checkpoint.npz --prime "def "
    gpurnn forecast --out runs/forecast     # AR(tau) vs MLP vs latent AR
    gpurnn gradflow --out runs/gradflow     # vanishing / exploding gradients, plotted
    gpurnn info                             # backends, GPU, versions: paste into bug reports

Problems the user can fix (bad text, window too long, bad checkpoint, backend missing)
end with exit code 2 and one line naming the problem, never a traceback.
"""
import argparse
import json
from dataclasses import asdict
import os
import sys
import time

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with the user's input: reported in one line, exit code 2."""


# ----------------------------------------------------------------------------- train


# About a minute on a 2-core CPU with the cpu backend (README shows a measured run).
DEFAULT_STEPS = 1000


def add_train_args(p):
    p.add_argument("--text", metavar="FILE", help="UTF-8 text to train on (default: the Python "
                   "standard library's own source, found on every machine with Python)")
    p.add_argument("--cell", default="lstm", choices=["lstm", "gru", "rnn_tanh", "rnn_relu"],
                   help="recurrent cell (default: lstm)")
    p.add_argument("--hidden", type=int, default=256, help="hidden units per layer (default: 256)")
    p.add_argument("--layers", type=int, default=1, help="stacked layers (default: 1)")
    p.add_argument("--backend", default="auto", help="numpy | cpu | cuda | auto (default: auto)")
    p.add_argument("--window", "-k", type=int, default=64,
                   help="truncated-BPTT window k in characters (default: 64)")
    p.add_argument("--batch", type=int, default=32, help="parallel text streams B (default: 32)")
    p.add_argument("--lr", type=float, default=1e-2, help="learning rate (default: 1e-2)")
    p.add_argument("--optimizer", default="adam", choices=["adam", "sgd"], help="(default: adam)")
    p.add_argument("--clip", type=float, default=5.0, help="max global gradient norm (default: 5)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"optimizer steps, one window each (default: {DEFAULT_STEPS})")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="held-out tail of the text for validation (default: 0.1)")
    p.add_argument("--eval-every", type=int, default=None, help="validate every N steps (default: steps/5)")
    p.add_argument("--sample-every", type=int, default=None,
                   help="print a sample every N steps (default: steps/4; 0 = never)")
    p.add_argument("--sample-length", type=int, default=200, help="characters per sample (default: 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default: 0.8)")
    p.add_argument("--seed", type=int, default=0, help="weights and sampling seed (default: 0)")
    p.add_argument("--out", default="runs/charlm", metavar="DIR",
                   help="writes DIR/metrics.json, DIR/loss_curve.png, DIR/checkpoint.npz "
                        "(default: runs/charlm)")
    p.add_argument("--resume", metavar="CKPT", help="continue the run saved in CKPT (same text) up to "
                   "--steps in total")


def cmd_train(args):
    from .backend import BackendUnavailable
    from .charlm import LMConfig, Trainer, plot_loss_curve
    from .checkpoint import CheckpointError
    from .data import TextError, default_corpus, load_text
    for name in ("hidden", "layers", "window", "batch", "steps"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name}: expected an integer >= 1, got {getattr(args, name)}")
    if not args.lr > 0:
        raise UsageError(f"--lr: expected a positive number, got {args.lr}")
    if args.text:
        text, source = load_text(args.text), args.text
    else:
        text, source = default_corpus()
    config = LMConfig(cell=args.cell, hidden=args.hidden, layers=args.layers, window=args.window,
                      batch=args.batch, lr=args.lr, optimizer=args.optimizer, clip=args.clip,
                      val_fraction=args.val_fraction, backend=args.backend, seed=args.seed)
    try:
        if args.resume:
            trainer = Trainer.resume(args.resume, text, backend=args.backend)
        else:
            trainer = Trainer(text, config)
    except BackendUnavailable as exc:
        raise UsageError(f"--backend: {exc}") from None
    except ValueError as exc:       # the library's argument checks, e.g. an unknown backend name
        if isinstance(exc, (TextError, CheckpointError)):
            raise
        raise UsageError(str(exc)) from None
    c = trainer.config
    print(f"text: {source} ({len(text)} chars, vocabulary {len(trainer.vocab)}, unigram entropy "
          f"{trainer.unigram_bpc:.2f} bits/char)")
    print(f"model: {c.cell} {c.layers}x{c.hidden} on backend {trainer.lm.backend!r}; window k={c.window}, "
          f"batch {trainer.batch}, {c.optimizer} lr {c.lr}, {args.steps} steps "
          f"({trainer.chars_per_step} chars/step)")
    sys.stdout.flush()

    os.makedirs(args.out, exist_ok=True)
    eval_every = args.eval_every or max(1, args.steps // 5)
    sample_every = args.sample_every if args.sample_every is not None else max(1, args.steps // 4)
    bar = ProgressBar(args.steps, start=trainer.step)
    t_start = time.perf_counter()
    val_bpc = None
    while trainer.step < args.steps:
        bpc, _ = trainer.train_step()
        bar.update(trainer.step, bpc, trainer.chars_per_second, val_bpc)
        if trainer.step % eval_every == 0 or trainer.step == args.steps:
            val_bpc = trainer.evaluate("val")
        if sample_every and trainer.step % sample_every == 0 and trainer.step < args.steps:
            bar.clear()
            print(f"--- sample at step {trainer.step} (val {val_bpc if val_bpc is not None else float('nan'):.3f}"
                  f" bpc) ---\n{trainer.sample(args.sample_length, args.temperature)}\n---", flush=True)
    bar.finish()
    if val_bpc is None or trainer.history["val_step"][-1:] != [trainer.step]:
        val_bpc = trainer.evaluate("val")
    train_bpc = trainer.evaluate("train")
    wall = time.perf_counter() - t_start

    ckpt_path = os.path.join(args.out, "checkpoint.npz")
    trainer.save(ckpt_path, extra={"text_source": source})
    curve_path = os.path.join(args.out, "loss_curve.png")
    plot_loss_curve(trainer.history, curve_path, trainer.unigram_bpc,
                    title=f"{c.cell} {c.layers}x{c.hidden}, backend {trainer.lm.backend}")
    metrics = {
        "val_bpc": val_bpc, "train_bpc": train_bpc, "unigram_bpc": trainer.unigram_bpc,
        "steps": trainer.step, "backend": trainer.lm.backend, "chars_per_s": trainer.chars_per_second,
        "wall_s": wall, "text": source, "text_chars": len(text), "vocab_size": len(trainer.vocab),
        "batch": trainer.batch, "config": asdict(c),
        "val_history": {"step": trainer.history["val_step"], "val_bpc": trainer.history["val_bpc"]},
    }
    metrics_path = os.path.join(args.out, "metrics.json")
    with open(metrics_path, "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"--- final sample (temperature {args.temperature}) ---\n"
          f"{trainer.sample(args.sample_length, args.temperature)}\n---")
    print(f"done: {trainer.step} steps in {_fmt_time(wall)} on backend {trainer.lm.backend!r}, "
          f"{trainer.chars_per_second:,.0f} chars/s")
    print(f"val {val_bpc:.3f} bits/char, train {train_bpc:.3f} bits/char "
          f"(unigram entropy {trainer.unigram_bpc:.3f})")
    print(f"wrote {metrics_path}, {curve_path}, {ckpt_path}")
    return 0


class ProgressBar:
    """One self-rewriting line on a terminal; a line every ~5% when stderr is a file."""

    def __init__(self, total, start=0, stream=None, width=24):
        self.total, self.width = total, width
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0, self.start = time.perf_counter(), start
        self.every = max(1, total // 20)
        self.last = ""

    def line(self, step, bpc, chars_per_s, val_bpc):
        frac = step / self.total
        filled = int(self.width * frac)
        elapsed = time.perf_counter() - self.t0
        done = step - self.start
        eta = elapsed / done * (self.total - step) if done else 0.0
        val = f" | val {val_bpc:.3f}" if val_bpc is not None else ""
        return (f"step {step:>{len(str(self.total))}}/{self.total} [{'#' * filled}{'.' * (self.width - filled)}]"
                f" {frac:4.0%} | train {bpc:.3f} bits/char{val} | {chars_per_s / 1000:.1f}k chars/s"
                f" | eta {_fmt_time(eta)}")

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
    p.add_argument("--length", type=int, default=500, help="characters to generate (default: 500)")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="softmax temperature; lower is more conservative, 0 is greedy (default: 0.8)")
    p.add_argument("--prime", default="", help="text to condition on (printed before the sample)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    p.add_argument("--backend", default="auto", help="numpy | cpu | cuda | auto (default: auto)")


def cmd_sample(args):
    import numpy as np

    from .backend import BackendUnavailable
    from .charlm import load_model, sample
    if args.length < 0:
        raise UsageError(f"--length: expected an integer >= 0, got {args.length}")
    try:
        lm, vocab, _ = load_model(args.checkpoint, args.backend)
    except BackendUnavailable as exc:
        raise UsageError(f"--backend: {exc}") from None
    text = sample(lm, vocab, args.length, args.temperature, args.prime, np.random.default_rng(args.seed))
    print(args.prime + text)
    return 0

# ----------------------------------------------------------------------------- forecast


def add_forecast_args(p):
    p.add_argument("--out", default="runs/forecast", metavar="DIR",
                   help="writes DIR/forecast.md (table) and DIR/forecast.png (default: runs/forecast)")
    p.add_argument("--n", type=int, default=4000, help="length of each series (default: 4000)")
    p.add_argument("--tau", type=int, default=5, help="window of AR(tau) and the MLP (default: 5)")
    p.add_argument("--hidden", type=int, default=32, help="hidden units of MLP and latent models (default: 32)")
    p.add_argument("--steps", type=int, default=800, help="training steps of the latent models (default: 800)")
    p.add_argument("--cells", default="rnn_tanh,lstm,gru", help="latent cells (default: rnn_tanh,lstm,gru)")
    p.add_argument("--backend", default="auto", help="numpy | cpu | cuda | auto (default: auto)")
    p.add_argument("--seed", type=int, default=0)


def cmd_forecast(args):
    from .backend import BackendUnavailable
    from .forecast import plot_forecasts, results_table, run_forecast
    cells = tuple(c for c in args.cells.split(",") if c)
    if args.n < 10 * (args.tau + 1):
        raise UsageError(f"--n: the series must be much longer than the window; got n={args.n}, tau={args.tau}")
    try:
        results, floors = run_forecast(args.n, args.tau, args.hidden, args.steps, args.backend, args.seed,
                                       cells)
    except BackendUnavailable as exc:
        raise UsageError(f"--backend: {exc}") from None
    table = results_table(results, floors)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "forecast.md"), "w") as f:
        f.write(f"One-step-ahead test MSE (standardised series, last 25% held out), tau={args.tau}\n\n"
                f"{table}\n")
    plot_forecasts(results, os.path.join(args.out, "forecast.png"))
    print(table)
    print(f"wrote {os.path.join(args.out, 'forecast.md')}, {os.path.join(args.out, 'forecast.png')}")
    return 0

# ----------------------------------------------------------------------------- gradflow


def add_gradflow_args(p):
    p.add_argument("--out", default="runs/gradflow", metavar="DIR",
                   help="writes DIR/gradflow.png and DIR/gradflow.json (default: runs/gradflow)")
    p.add_argument("--length", "-T", type=int, default=120, help="sequence length T (default: 120)")
    p.add_argument("--hidden", type=int, default=32, help="hidden units (default: 32)")
    p.add_argument("--truncate", type=int, default=20, help="truncated-BPTT window k (default: 20)")
    p.add_argument("--cells", default="rnn_tanh,rnn_relu,lstm,gru", help="cells to compare")
    p.add_argument("--seed", type=int, default=0)


def cmd_gradflow(args):
    from .diagnostics import decay_rate, gradient_flow_all, plot_gradient_flow
    if args.length < 2 or args.truncate < 1 or args.hidden < 1:
        raise UsageError("--length must be >= 2, --truncate and --hidden >= 1")
    flows = gradient_flow_all(cells=tuple(c for c in args.cells.split(",") if c), T=args.length,
                              hidden=args.hidden, truncate=args.truncate, seed=args.seed)
    os.makedirs(args.out, exist_ok=True)
    plot_gradient_flow(flows, os.path.join(args.out, "gradflow.png"))
    with open(os.path.join(args.out, "gradflow.json"), "w") as f:
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
    return rows


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
        return "none (no cuda backend here; the cpu backend's GEMMs are NumPy's BLAS)"
    from gpurnn.cuda.backend import _cupy
    if _cupy() is not None:
        return "cuBLAS via CuPy"
    why = "the CUDA simulator" if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else "CuPy not importable"
    return f"Numba gemm kernel (fallback: {why}; pip install -e '.[cuda12]' for cuBLAS)"


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


def build_parser():
    parser = argparse.ArgumentParser(
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


def main(argv=None):
    from .checkpoint import CheckpointError
    from .data import TextError
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except (UsageError, TextError, CheckpointError) as exc:
        print(f"gpurnn {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\ngpurnn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
