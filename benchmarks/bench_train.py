"""Training throughput of `gpurnn train`'s model vs the same model in PyTorch (CPU).

One training step = forward over a window of k characters for B streams, softmax
cross-entropy, BPTT, gradient clipping, Adam — exactly what `gpurnn train` does per step,
with the same sizes (defaults are the CLI's) and the same one-hot inputs on both sides.
Steps are timed after warm-up (JIT compilation excluded), the versions taking turns step by
step in one process (benchmarks are on shared, noisy machines), or with --block N in turns
of one untimed and N timed steps (what a run of one model alone meets: right after a torch
step its OpenMP workers still spin for a few ms, on the cores the next step needs); chars/s = B*k / median step
time; each row also gives GFLOP/s of the one-hot model, the GFLOP/s each version executes
(gpurnn's token inputs skip the first layer's GEMMs with X) and that as a fraction of the
CPU's fp32 peak (machine.py: nominal, or the measured GEMM ceiling where that is higher).
Before any timing, every version's first window (loss and every gradient, from the same
weights) is checked against the float64 NumPy reference: a wrong one stops the run, no time.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_train.py   # auto vs torch
    python benchmarks/bench_train.py --backends cpu,numpy --steps 30
    python benchmarks/bench_train.py --hidden 128 --batch 16 --out /tmp/r.md

Writes benchmarks/RESULTS_train.md (table, exact command, machine and versions).
"""
import argparse
import os
import platform
import statistics
import sys
from importlib import metadata

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gpurnn.apps.charlm import LMConfig, Trainer  # noqa: E402
from gpurnn.arrays import to_numpy  # noqa: E402
from gpurnn.backend import BackendUnavailable, get_backend  # noqa: E402
from gpurnn.cells import get_cell  # noqa: E402
from gpurnn.train.data import default_corpus  # noqa: E402
from gpurnn.train.optim import unprefixed  # noqa: E402
from gpurnn.train.tbptt import window_at  # noqa: E402
from machine import (anchored_peak, cpu_figures, describe_peak, gemm_ceiling_gflops,  # noqa: E402
                     openblas_architecture)
from timing import interleaved_times, layer_flops, validate  # noqa: E402

def make_trainer(text, args, backend, dtype="float32"):
    return Trainer(text, LMConfig(cell=args.cell, hidden=args.hidden, layers=args.layers,
                                  window=args.window, batch=args.batch, backend=backend, dtype=dtype))


def first_window(trainer):
    """(x, y): the ids of the first training window, (k, B) each."""
    steps, _ = window_at(0, trainer.config.window, trainer.windows_per_epoch, None)
    return trainer.streams[:, steps].T, trainer.streams[:, steps.start + 1:steps.stop + 1].T


def step_results(trainer):
    """The loss and every (pre-clip) gradient of one training window from zero state; the
    trainer's weights, optimizer, state and step count are left as they were."""
    x, y = first_window(trainer)
    trainer.lm.zero_grad()
    loss, _ = trainer.lm.train_window(x, y, None)
    got = {"loss": np.asarray(loss), **{k: np.asarray(to_numpy(g)) for k, g in trainer.lm.grads().items()}}
    trainer.lm.zero_grad()
    return got


def gpurnn_step(text, args, backend, reference):
    """(trainer, its training step), checked against the reference first."""
    trainer = make_trainer(text, args, backend)
    validate(f"gpurnn backend={trainer.lm.backend}", step_results(trainer), reference)
    return trainer, trainer.train_step


def step_flops(args, vocab):
    """FLOPs of one training step: the recurrent layers (timing.layer_flops, their dX
    included as the first layer's one-hot GEMM would do it) and the output layer's three
    GEMMs (logits, dW, dH); pointwise work and Adam are not counted."""
    G = get_cell(args.cell).n_gates
    T, B, H = args.window, args.batch, args.hidden
    layers = sum(layer_flops(T, B, vocab if k == 0 else H, H, G) for k in range(args.layers))
    return layers + 3 * 2 * T * B * H * vocab


def one_hot_flops(args, vocab):
    """The FLOPs of step_flops that gpurnn's token inputs do not execute: the first layer's
    three GEMMs with its one-hot X (X W_ih^T, dW_ih = dG^T X, dX = dG W_ih): the layer's
    products with input size ``vocab`` less those with none."""
    T, B, H, G = args.window, args.batch, args.hidden, get_cell(args.cell).n_gates
    return layer_flops(T, B, vocab, H, G) - layer_flops(T, B, 0, H, G)


def torch_step(trainer, args, weights, reference):
    """``trainer``: for the text's streams and sizes; ``weights``: the initial weights every
    version starts from (gpurnn names), for the check against ``reference``."""
    import torch
    torch.manual_seed(0)
    V, H = len(trainer.vocab), args.hidden
    rnn_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN}[args.cell]
    rnn = rnn_cls(V, H, num_layers=args.layers)
    head = torch.nn.Linear(H, V)
    rnn.load_state_dict({k: torch.from_numpy(v) for k, v in unprefixed(weights, "rnn").items()})
    head.load_state_dict({"weight": torch.from_numpy(weights["head.weight"].T.copy()),
                          "bias": torch.from_numpy(weights["head.bias"])})
    params = list(rnn.parameters()) + list(head.parameters())
    x, y = (torch.from_numpy(a) for a in first_window(trainer))
    out, _ = rnn(torch.nn.functional.one_hot(x, V).float())
    loss = torch.nn.functional.cross_entropy(head(out).reshape(-1, V), y.reshape(-1))
    loss.backward()
    got = {"loss": loss.item(), **{f"rnn.{k}": p.grad.numpy() for k, p in rnn.named_parameters()},
           "head.weight": head.weight.grad.numpy().T, "head.bias": head.bias.grad.numpy()}
    validate(f"PyTorch {version('torch')}", got, reference)
    opt = torch.optim.Adam(params, lr=trainer.config.lr)
    streams = torch.from_numpy(trainer.streams)
    k = args.window
    state = {"h": None, "w": 0}

    def step():
        w = state["w"] % trainer.windows_per_epoch
        x = streams[:, w * k:(w + 1) * k].T
        y = streams[:, w * k + 1:(w + 1) * k + 1].T
        inputs = torch.nn.functional.one_hot(x, V).float()
        h = state["h"]
        if h is not None:   # carry the state, stop its gradient (truncated BPTT)
            h = tuple(s.detach() for s in h) if isinstance(h, tuple) else h.detach()
        out, state["h"] = rnn(inputs, h)
        loss = torch.nn.functional.cross_entropy(head(out).reshape(-1, V), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, trainer.config.clip)
        opt.step()
        state["w"] += 1

    return step, torch.get_num_threads()


def version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="auto",
                   help="gpurnn backends to time, comma-separated (default: auto; add numpy "
                        "for the reference's speed)")
    p.add_argument("--cell", default="lstm", choices=["lstm", "gru", "rnn_tanh"])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (JIT compile)")
    p.add_argument("--block", type=int, default=1,
                   help="steps per turn (default 1: step by step); > 1: each turn one untimed "
                        "step, then BLOCK timed ones, as a run of only that model meets it "
                        "(no other version's threads still spinning); --steps turns")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS_train.md"))
    args = p.parse_args(argv)

    ceiling = gemm_ceiling_gflops()       # before any timing: its BLAS workers spin after
    text, source = default_corpus()
    chars = args.batch * args.window
    rows, seen, trainer = [], set(), None
    # every version's first window (loss and gradients) against the float64 reference first
    oracle = make_trainer(text, args, "numpy", dtype="float64")
    reference = step_results(oracle)
    initial = {k: v.astype(np.float32) for k, v in oracle.lm.state_dict().items()}   # = every version's
    steps = {}                            # label -> one training step, all checked first
    for name in [b for b in args.backends.split(",") if b]:
        try:
            resolved = get_backend(name).name
        except BackendUnavailable as exc:
            print(f"skipping backend {name!r}: {exc}", flush=True)
            continue
        if resolved in seen:
            continue                      # "auto" resolved to a backend already timed
        seen.add(resolved)
        trainer, steps[f"gpurnn backend={resolved}" + (" (auto)" if name == "auto" else "")] = \
            gpurnn_step(text, args, resolved, reference)
    torch_label = None
    try:
        step, torch_threads = torch_step(trainer, args, initial, reference)
        torch_label = f"PyTorch {version('torch')} CPU ({torch_threads} threads)"
        steps[torch_label] = step
    except ImportError:
        print("torch not installed: no PyTorch row", flush=True)
    # the versions take turns step by step (every order in turn), in this one process
    rows = list(interleaved_times(steps, args.steps, args.warmup, args.block).items())
    for label, times in rows:
        print(f"{label}: {chars / statistics.median(times):,.0f} chars/s", flush=True)
    torch_median = statistics.median(dict(rows)[torch_label]) if torch_label else None
    flops, fig = step_flops(args, len(trainer.vocab)), anchored_peak(cpu_figures(), ceiling)
    skipped = one_hot_flops(args, len(trainer.vocab))
    lines = [
        "# `gpurnn train` throughput vs PyTorch CPU",
        "",
        f"Model: {args.cell}, {args.layers}x{args.hidden} hidden, vocabulary {len(trainer.vocab)} (one-hot inputs), "
        f"window k={args.window}, batch B={args.batch} ({chars} chars/step); Adam, clip 5; "
        + (f"median of {args.steps} steps after {args.warmup} warm-up rounds, the versions taking "
           f"turns step by step in one process (every order in turn)" if args.block == 1 else
           f"median of {args.steps} turns x {args.block} steps after {args.warmup} warm-up rounds, "
           f"the versions taking turns in blocks of one untimed and {args.block} timed steps in "
           f"one process (every order in turn)") + f". Text: {source}.",
        "",
        f"{flops / 1e9:.2f} GFLOP per step as the one-hot model computes it (recurrent layers "
        f"with dX, output layer; pointwise and Adam not counted): PyTorch does all of it; "
        f"gpurnn's token inputs replace the first layer's X W_ih^T and dW_ih GEMMs by a gather "
        f"and a scatter-add and skip its dX ({skipped / 1e9:.2f} GFLOP fewer executed), so its "
        f"one-hot GFLOP/s is an equivalent; % of peak is of the executed GFLOP/s. "
        f"Peak: {describe_peak(fig)}. OpenBLAS: {openblas_architecture()}.",
        "",
        "| model | median ms/step | p20 ms | p80 ms | chars/s | vs PyTorch | one-hot GFLOP/s "
        "| executed GFLOP/s | % of peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, times in rows:
        med = statistics.median(times)
        q = np.percentile(times, [20, 80])
        ratio = f"{torch_median / med:.2f}x" if torch_median else "n/a"
        executed = (flops - skipped if label.startswith("gpurnn") else flops) / med / 1e9
        lines.append(f"| {label} | {med * 1e3:.1f} | {q[0] * 1e3:.1f} | {q[1] * 1e3:.1f} | "
                     f"{chars / med:,.0f} | {ratio} | {flops / med / 1e9:.0f} | {executed:.0f} | "
                     f"{100 * executed / fig['peak_gflops']:.0f} |")
    env_prefix = "".join(f"{k}={os.environ[k]} " for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
                         if k in os.environ)
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    lines += [
        "",
        "`vs PyTorch` > 1 means faster than PyTorch on the same machine in the same run.",
        "",
        f"Command: `{env_prefix}python {' '.join([os.path.relpath(sys.argv[0])] + (argv if argv is not None else sys.argv[1:]))}`",
        "",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {tuple(round(x, 1) for x in load) if load[0] != '?' else '?'} at the end of the run; "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}.",
        "",
        f"Versions: Python {platform.python_version()}, numpy {version('numpy')}, scipy {version('scipy')}, "
        f"numba {version('numba')}, numba-cuda {version('numba-cuda')}, torch {version('torch')}.",
        "",
    ]
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
