"""CPU benchmark: gpurnn backend="cpu" vs torch.nn on the CPU, as a user meets them.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_cpu.py
        [--mode interleaved|settled] [--load quiet|busy|both] [--busy-core]
        [--out benchmarks/out] [--repeats 12] [--threads 2] [--cells lstm,gru,rnn_tanh]
        [--quick] [--no-profile]

Run it under ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE``: the project's machines set
these to force OpenBLAS onto its AVX2 (Haswell) kernels, which users' machines don't do; the
header prints the OpenBLAS "architecture" (threadpoolctl) so a reader sees which kernels ran.

Every row is forward + backward (float32) of one layer with the same weights and inputs.
Before any timing, every version's output, dx and weight gradients are checked against the
float64 NumPy reference (timing.validate): a wrong result stops the run with no time reported.
JIT compilation is kept out by an untimed warm-up.

--mode interleaved (the default, the headline): in one process, for each config, three
versions take turns call by call with no settle time between them, each repeat in another of
the six orders (timing.interleaved_orders) so each follows each other one equally often (a
plain rotation kept native right after torch, whose OpenMP workers still spin then):
  native  gpurnn.LSTM/GRU/RNN(I, H, backend="cpu", dtype="float32"): m(x), m.backward(dout)
  bridge  gpurnn.torch.LSTM/GRU/RNN(I, H, backend="cpu"): out = m(x), out.backward(dout)
  torch   torch.nn.LSTM/GRU/RNN: out = m(x), out.backward(dout)
x requires grad in both torch versions (native's backward computes dx): all do the same work.
Median of --repeats (default 12), p20/p80; ratios native/torch and bridge/torch from the same
run. Default configs: INTERLEAVED_CONFIGS, the issue's (targets in TARGETS).

--mode settled (the earlier protocol): per repeat every backend runs untimed for at least
SETTLE_S (0.2 s), then once timed, so none shares the cores with the previous one's spinning
idle threads; peers are torch and, on small configs, the NumPy reference. Configs: CONFIGS.

--busy-core (= --load busy) measures while a separate process spins one core (a plain
Python ``while True: pass``, started before the measurement and killed after it, also on an
error or Ctrl-C); --load both measures quiet, then busy, in one invocation, and reports for
each busy row its time and its ratio to torch relative to the quiet run's (target: within
1.2x). With --busy-core alone there is no quiet run to compare with: use --load both.
On 2 cores the default configs take ~2 minutes per load (check the load average the header
prints: other work on the machine makes the "quiet" run a busy one).

``--threads N`` runs each load's measurement in a child process with N BLAS/OpenMP/Numba
threads (OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, NUMBA_NUM_THREADS must be set before the
libraries load) and torch.set_num_threads(N); several values (--threads 1,2) give several
blocks of rows. The default is every core, as a user's process gets.

Every row carries the FLOPs of the call (timing.layer_flops: the matrix products of forward
and backward, 6 T B G H (I + H); pointwise work ignored), the GFLOP/s achieved and the
fraction of the machine's fp32 peak, cores x FMA units x SIMD lanes x 2 x clock
(machine.cpu_figures: lanes from /proc/cpuinfo's flags, avx512f 16 / avx2 8; 2 FMA units per
core ASSUMED; clock from lscpu "CPU max MHz", else /proc/cpuinfo "cpu MHz"), or the measured
ceiling of one large GEMM where that is higher (machine.anchored_peak: the reported clock was
low).

Writes under --out (default benchmarks/out/, gitignored): cpu.csv (mode, load, threads,
config, version, median/p20/p80 ms, ratio to torch, target, GFLOP, GFLOP/s, fraction of
peak, busy/quiet figures, tape bytes, how backend="cpu" split the layer over the threads),
cpu.md (the command, machine, peak and OpenBLAS kernels, one table per load, the profile of
the largest config) and cpu.png (ratios to torch per config, one bar per gpurnn version, a
mark at each target; quiet and busy panels side by side).
"""
import argparse
import csv
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# (benchmarks/ is on sys.path when run as a script)
from machine import (anchored_peak, busy_core, cpu_figures, describe_peak,  # noqa: E402
                     gemm_ceiling_gflops, openblas_architecture)
from timing import (gpurnn_results, interleaved_times, layer_flops, layer_reference, time_calls,  # noqa: E402
                    torch_results, validate)

# (cell, T, B, I, H)
# settled mode: the first three are issue 3's LSTM targets (ratio <= 0.5, 1.0, 1.0).
CONFIGS = [(cell, *shape) for cell in ("lstm", "gru", "rnn_tanh")
           for shape in ((100, 1, 128, 256), (100, 32, 128, 256), (100, 64, 512, 512))]
# interleaved mode: issue 16's, sizes real use meets (char-LM: I = 65 characters)
INTERLEAVED_CONFIGS = [("lstm", 64, 32, 65, 256), ("lstm", 100, 1, 128, 256),
                       ("lstm", 100, 64, 512, 512), ("gru", 64, 32, 65, 256)]
QUICK_CONFIGS = [("lstm", 20, 1, 32, 64), ("gru", 20, 8, 32, 64), ("rnn_tanh", 20, 8, 32, 64)]
# issue 16's targets for the ratio to torch, interleaved mode: (cell, version) -> at most
TARGETS = {("lstm", "native"): 0.8, ("lstm", "bridge"): 0.9,
           ("gru", "native"): 0.5, ("gru", "bridge"): 0.5}
BUSY_QUIET_TARGET = 1.2       # busy ratio / quiet ratio, at most
INTERLEAVED_VERSIONS = ("native", "bridge", "torch")
NUMPY_MAX_WORK = 100 * 32 * 256 * 1024   # T*B*H*G*H above which the reference is skipped
# Untimed runs of each backend before its timed one, for at least this long. OpenBLAS's
# worker threads spin for ~100 ms after every threaded call (2^28 cycles,
# OPENBLAS_THREAD_TIMEOUT; the numpy reference wakes them) and torch's OpenMP workers
# briefly: the backend measured next must not share its cores with them. A pause instead
# would not do: on this VM a core left idle for 150 ms runs the next ~50 ms of a 2-thread
# split 2x slower (measured), so each backend gets that long to warm up, alike.
SETTLE_S = 0.2
TORCH_CLASS = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN"}


def gates(cell):
    """Gate count of a cell, from its one definition (gpurnn.cells)."""
    from gpurnn.cells import get_cell
    return get_cell(cell).n_gates


def config_name(cfg):
    cell, T, B, I, H = cfg
    return f"{cell} T={T} B={B} I={I} H={H}"


def config_flops(cfg):
    cell, T, B, I, H = cfg
    return layer_flops(T, B, I, H, gates(cell))


# ----------------------------------------------------------------------------- runners
def problem(cfg):
    """Weights (torch names), x and dout of one config, the same for every version."""
    cell, T, B, I, H = cfg
    rng = np.random.default_rng(0)
    G, bound = gates(cell), 1 / np.sqrt(H)
    weights = {}
    for name, shape in (("weight_ih_l0", (G * H, I)), ("weight_hh_l0", (G * H, H)),
                        ("bias_ih_l0", (G * H,)), ("bias_hh_l0", (G * H,))):
        weights[name] = rng.uniform(-bound, bound, shape).astype(np.float32)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dout = rng.standard_normal((T, B, H)).astype(np.float32)
    return weights, x, dout


def gpurnn_runner(backend, cfg, weights, x, dout):
    import gpurnn
    cell, T, B, I, H = cfg
    cls = {"lstm": gpurnn.LSTM, "gru": gpurnn.GRU, "rnn_tanh": gpurnn.RNN}[cell]
    model = cls(I, H, backend=backend, dtype="float32")
    model.load_state_dict(weights)

    def step():
        model(x)
        model.backward(dout)
    return step, model


def torch_runner(cfg, weights, x, dout, bridge=False):
    """torch.nn's layer, or with ``bridge`` gpurnn.torch's (backend="cpu"); x requires grad,
    so dx is computed, as gpurnn's own backward computes it."""
    import torch
    cell, T, B, I, H = cfg
    if bridge:
        import gpurnn.torch as gt
        model = getattr(gt, TORCH_CLASS[cell])(I, H, backend="cpu")
    else:
        model = getattr(torch.nn, TORCH_CLASS[cell])(I, H)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    xt = torch.from_numpy(x).requires_grad_()
    dt = torch.from_numpy(dout)

    def step():
        model.zero_grad()
        xt.grad = None
        out, _ = model(xt)
        out.backward(dt)
    return step, model


def checked_runner(version, cfg, weights, x, dout, reference):
    """(step, model) of one version, after its results passed the check against ``reference``.
    Versions: native (= cpu), numpy (gpurnn backends), bridge (gpurnn.torch), torch."""
    if version in ("torch", "bridge"):
        step, model = torch_runner(cfg, weights, x, dout, bridge=version == "bridge")
        got = torch_results(model, x, dout)
    else:
        step, model = gpurnn_runner("cpu" if version == "native" else version, cfg, weights, x, dout)
        got = gpurnn_results(model, x, dout)
    validate(f"{version}, {config_name(cfg)}", got, reference)
    return step, model


def split_plan(model):
    """How backend="cpu" ran the forward: split over threads, per-step products and the
    pool parts 1.. ran on, e.g. "units x2 njit openmp", "units x1 (1 core busy) njit",
    "rows x2 mkl own" (kernels.Plan, parallel.run_parts_on_pool)."""
    plan = model.last_plans["forward"][0][0]
    kind, nparts, *busy = plan["split"]
    return " ".join([f"{kind} x{nparts}"] + [f"({b})" for b in busy] + [plan.get("products", "")]
                    + [plan["pool"] or ""]).strip()


def tape_bytes(model):
    """Bytes the backend keeps between forward and backward (x and weights excluded)."""
    from gpurnn.cpu import tape_nbytes
    tapes = [t for layer in model._tape["tapes"] for t in layer]
    if model.backend == "cpu":
        return sum(tape_nbytes(t) for t in tapes)
    return sum(a.nbytes for t in tapes for s in t["steps"] for a in s.values()
               if isinstance(a, np.ndarray))


# ----------------------------------------------------------------------------- timing
def settled_times(runners, repeats):
    for run in runners.values():          # JIT compile / first-touch warm-up
        run()
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            warm_until = time.perf_counter() + SETTLE_S
            run()                         # untimed, for at least SETTLE_S: the previous
            while time.perf_counter() < warm_until:   # backend's idle threads stop spinning,
                run()                     # this one's are awake and on their cores
            times[name].append(time_calls(run, 1, warmup=0)[0])
    return times


def measure(cfg, mode, repeats, with_numpy, peak_gflops):
    cell, T, B, I, H = cfg
    weights, x, dout = problem(cfg)
    reference = layer_reference(cell, weights, x, dout)     # float64: every version is checked
    if mode == "interleaved":
        versions = list(INTERLEAVED_VERSIONS)
    else:
        versions = ["cpu"] + ["numpy"] * with_numpy + ["torch"]
    runners, models = {}, {}
    for version in versions:
        try:
            runners[version], models[version] = checked_runner(version, cfg, weights, x, dout,
                                                               reference)
        except ImportError:               # no torch: settled mode times gpurnn alone
            if mode == "interleaved":
                raise SystemExit("--mode interleaved needs torch (the bridge and the baseline)")
    times = (interleaved_times if mode == "interleaved" else settled_times)(runners, repeats)
    base = np.median(times["torch"]) if "torch" in times else None
    flops = config_flops(cfg)
    rows = []
    for name, ts in times.items():
        med = float(np.median(ts))
        gpurnn_model = name in ("cpu", "native", "numpy")
        rows.append(dict(config=config_name(cfg), cell=cell, T=T, B=B, I=I, H=H, backend=name,
                         median_ms=med * 1e3, p20_ms=np.percentile(ts, 20) * 1e3,
                         p80_ms=np.percentile(ts, 80) * 1e3,
                         ratio_to_torch=med / base if base else float("nan"),
                         target=TARGETS.get((cell, name), ""), gflop=flops / 1e9,
                         gflops=flops / med / 1e9, peak_fraction=flops / med / 1e9 / peak_gflops,
                         tape_bytes=tape_bytes(models[name]) if gpurnn_model else "",
                         plan=split_plan(models[name]) if name in ("cpu", "native") else ""))
    return rows


# ----------------------------------------------------------------------------- profile
def profile(cfg, repeats):
    """Where the time of backend="cpu" goes for one layer of ``cfg``: each phase timed alone,
    split over threads as the backend splits it (kernels.Plan)."""
    from gpurnn.cells import get_cell
    from gpurnn.cpu import CpuBackend
    from gpurnn.cpu.kernels import Plan, recurrence_kernels, transpose
    from gpurnn.cpu.parallel import recurrence_threads
    cell, T, B, I, H = cfg
    G = gates(cell)
    rng = np.random.default_rng(1)
    f32 = np.float32
    x = rng.standard_normal((T, B, I)).astype(f32)
    w_ih = (rng.standard_normal((G * H, I)) / np.sqrt(H)).astype(f32)
    w_hh = (rng.standard_normal((G * H, H)) / np.sqrt(H)).astype(f32)
    b = np.zeros(G * H, f32)
    dout = rng.standard_normal((T, B, H)).astype(f32)
    be = CpuBackend()
    spec = get_cell(cell)
    S = spec.n_states
    tape = be.forward(spec, x, w_ih, w_hh, b, b, (None,) * S, None)[2]
    forward_part, backward_part = recurrence_kernels(spec, "float32")
    w_hh_t = np.empty((H, G * H), f32)
    transpose(w_hh, w_hh_t)
    gx, out, dgx = np.empty((T, B, G * H), f32), np.empty((T, B, H), f32), np.empty((T, B, G * H), f32)
    x2, gx2, d2 = x.reshape(T * B, I), gx.reshape(T * B, G * H), dgx.reshape(T * B, G * H)

    products = be._products(np.dtype(f32))[0]  # "mkl" or "openblas", as the backend chooses

    def split(fn, backward=False):              # fn(plan, part) on every part, as the backend runs it
        def run():
            plan = Plan(T, B, H, G * H, recurrence_threads(), products=products)
            plan = plan.for_backward(f32) if backward else plan
            plan.run(lambda p: fn(plan, p))
        return run

    def products_only(plan, p):                 # the forward's per-step OpenBLAS calls alone
        if plan.kind != "rows":                 # (MKL's run inside the njit loop: not timed
            return                              # apart, a Python call per step would dominate)
        b0, b1 = plan.rows(p)
        ghT = np.empty((G * H, b1 - b0), f32)
        for t in range(T):
            np.matmul(w_hh, tape["st"][0, t, b0:b1].T, out=ghT)

    phases = {
        "forward: input GEMM gx = X W_ih^T": split(lambda plan, p: plan.gemm(x2, w_ih.T, gx2, p)),
        "forward: recurrence (products + fused cell)": split(lambda plan, p: forward_part(
            plan, p, gx, w_hh, w_hh_t, np.zeros((2, G * H), f32), tape["lengths"], tape["st"], tape["aux"], out,
            be.transposed_forward, x2, w_ih)),        # (a fresh Plan's gemms is "rows": loop only)
        **({} if products == "mkl" else {
            "  of which the per-step BLAS products (B > 8)": split(products_only)}),
        "backward: recurrence (fused cell + products)": split(lambda plan, p: backward_part(
            plan, p, tape["acts"], tape["st"], tape["aux"], w_hh, w_hh_t, tape["lengths"],
            0, dout, np.zeros((S, B, H), f32), dgx, dgx if spec.all_tied else np.empty_like(dgx),
            x2, tape["st"][0, :T].reshape(T * B, H), w_ih, None, np.empty((G * H, I), f32),
            np.empty((G * H, H), f32)), backward=True),
        "backward: dX = dG W_ih": split(lambda plan, p: plan.gemm(d2, w_ih, np.empty((T * B, I), f32), p)),
        "backward: dW_ih = dG^T X": split(lambda plan, p: plan.gemm(d2.T, x2, np.empty((G * H, I), f32), p)),
        "backward: dW_hh = dG^T H_prev": split(lambda plan, p: plan.gemm(
            d2.T, tape["st"][0, :T].reshape(T * B, H), np.empty((G * H, H), f32), p)),
        "backward: bias sums": lambda: d2.sum(0),
        "whole layer (backend forward + backward)": lambda: be.backward(
            be.forward(spec, x, w_ih, w_hh, b, b, (None,) * S, None)[2], dout, (None,) * S, None),
    }
    return [(name, np.median(time_calls(fn, repeats, warmup=1)) * 1e3) for name, fn in phases.items()]


# ----------------------------------------------------------------------------- outputs
def versions_line():
    import numba
    versions = [f"python {platform.python_version()}", f"numpy {np.__version__}", f"numba {numba.__version__}"]
    try:
        import torch
        versions.append(f"torch {torch.__version__}")
    except ImportError:
        versions.append("torch not installed")
    return ", ".join(versions)


def add_busy_vs_quiet(rows):
    """For each busy row: its time and its ratio to torch over the quiet run's (same threads,
    config, version), where this invocation measured both."""
    quiet = {(r["threads"], r["config"], r["backend"]): r for r in rows if r["load"] == "quiet"}
    for r in rows:
        q = quiet.get((r["threads"], r["config"], r["backend"])) if r["load"] == "busy" else None
        r["time_busy_vs_quiet"] = r["median_ms"] / q["median_ms"] if q else ""
        r["ratio_busy_vs_quiet"] = r["ratio_to_torch"] / q["ratio_to_torch"] if q else ""


FIELDS = ["mode", "load", "threads", "config", "cell", "T", "B", "I", "H", "backend", "median_ms",
          "p20_ms", "p80_ms", "ratio_to_torch", "target", "gflop", "gflops", "peak_fraction",
          "time_busy_vs_quiet", "ratio_busy_vs_quiet", "tape_bytes", "plan"]


def fmt(v, spec):
    return format(v, spec) if isinstance(v, float) else str(v)


def markdown_table(rows):
    """One Markdown table of ``rows`` (one load); busy/quiet columns where there are any."""
    vs_quiet = any(r["time_busy_vs_quiet"] != "" for r in rows)
    head = ["threads", "config", "version", "median ms", "p20 ms", "p80 ms", "ratio to torch",
            "target", "GFLOP", "GFLOP/s", "% of peak"]
    head += ["time busy/quiet", f"ratio busy/quiet (<= {BUSY_QUIET_TARGET})"] * vs_quiet
    head += ["tape bytes", "split"]
    align = ["---" if h in ("config", "version", "target", "split") else "---:" for h in head]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for r in rows:
        cells = [r["threads"], r["config"], r["backend"], fmt(r["median_ms"], ".2f"), fmt(r["p20_ms"], ".2f"),
                 fmt(r["p80_ms"], ".2f"), fmt(r["ratio_to_torch"], ".3f"),
                 f"<= {r['target']}" if r["target"] != "" else "", fmt(r["gflop"], ".3g"),
                 fmt(r["gflops"], ".1f"), fmt(100 * r["peak_fraction"], ".1f")]
        if vs_quiet:
            cells += [fmt(r["time_busy_vs_quiet"], ".2f"), fmt(r["ratio_busy_vs_quiet"], ".2f")]
        cells += [r["tape_bytes"], r["plan"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


LOAD_NOTE = {"quiet": "no load added by the benchmark",
             "busy": "a separate process spinning one core (`python -c 'while True: pass'`) throughout"}
MODE_NOTE = {"interleaved": "versions take turns call by call in one process, no settle time, "
                            "every order in turn (each version after each other equally often)",
             "settled": f"every backend runs untimed for >= {SETTLE_S} s before each timed call"}


def write_outputs(out_dir, rows, profile_rows, header, loads):
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "cpu.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})

    lines = list(header)
    for load in loads:
        lines += ["", f"### {load}: {LOAD_NOTE[load]}", ""]
        if loads == ["busy"]:
            lines += ["No quiet run in this invocation to compare with (--load both measures both).", ""]
        lines += markdown_table([r for r in rows if r["load"] == load])
    for threads, prof_cfg, prof in profile_rows:
        lines += ["", f"Profile, backend=cpu, {config_name(prof_cfg)}, {threads} thread(s) (each phase timed alone, median ms):",
                  "", "| phase | ms |", "|---|---:|"] + [f"| {n} | {ms:.2f} |" for n, ms in prof]
    text = "\n".join(lines) + "\n"
    (out_dir / "cpu.md").write_text(text)
    write_chart(out_dir / "cpu.png", rows, loads)
    return text


def write_chart(path, rows, loads):
    """Ratios to torch, one group of bars per config (one bar per gpurnn version), a mark at
    each bar's target; one panel per load, side by side."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    labels = list(dict.fromkeys((r["threads"], r["config"]) for r in rows))   # in run order
    versions = [v for v in ("native", "bridge", "cpu", "numpy") if any(r["backend"] == v for r in rows)]
    width = 0.8 / len(versions)
    log = max(r["ratio_to_torch"] for r in rows) > 10          # the NumPy reference's bars
    fig, axes = plt.subplots(1, len(loads), sharey=True, squeeze=False,
                             figsize=(max(6, len(labels) * 0.9) * len(loads), 4.5))
    for ax, load in zip(axes[0], loads):
        for k, version in enumerate(versions):
            found = [next((r for r in rows if (r["threads"], r["config"]) == lab and r["load"] == load
                           and r["backend"] == version), None) for lab in labels]
            xs = np.arange(len(labels)) + k * width
            ax.bar(xs, [r["ratio_to_torch"] if r else np.nan for r in found], width,
                   label=f"gpurnn {version}", color=f"C{k}")
            targets = [(xk, r["target"]) for xk, r in zip(xs, found) if r and r["target"] != ""]
            if targets:
                ax.hlines([t for _, t in targets], [xk - width / 2 for xk, _ in targets],
                          [xk + width / 2 for xk, _ in targets], colors="k", lw=2,
                          label="target" if k == 0 else None)
        ax.axhline(1.0, color="k", lw=0.8, ls="--", label="torch")
        if log:
            ax.set_yscale("log")
        ax.set_title(f"{load}: {LOAD_NOTE[load].split('(')[0].strip()}", fontsize=9)
        ax.set_xticks(np.arange(len(labels)) + width * (len(versions) - 1) / 2)
        ax.set_xticklabels([f"{c}\n{t} thr" for t, c in labels], rotation=60, ha="right", fontsize=7)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("time / torch time (fwd+bwd, lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def chosen_configs(args):
    default = INTERLEAVED_CONFIGS if args.mode == "interleaved" else CONFIGS
    return [c for c in (QUICK_CONFIGS if args.quick else default) if c[0] in args.cells.split(",")]


def run_in_process(args):
    """Measure the whole grid with the thread count this process was started with."""
    threads = int(os.environ["OPENBLAS_NUM_THREADS"])
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        pass
    configs = chosen_configs(args)
    peak = anchored_peak(cpu_figures(), args.ceiling)["peak_gflops"]
    rows = []
    for cfg in configs:
        _, T, B, I, H = cfg
        with_numpy = T * B * H * gates(cfg[0]) * H <= NUMPY_MAX_WORK
        for r in measure(cfg, args.mode, args.repeats, with_numpy, peak):
            rows.append(dict(threads=threads, **r))
            print(f"[{threads} thr] {r['config']:<32} {r['backend']:<6} {r['median_ms']:9.2f} ms"
                  f"  ratio {r['ratio_to_torch']:.2f}  {r['gflops']:6.1f} GFLOP/s", flush=True)
    largest = max(configs, key=config_flops)
    prof = [] if args.no_profile else [(threads, largest, profile(largest, args.repeats))]
    return rows, prof


def measure_threads(args, thread_counts, no_profile):
    """Rows and profiles of every thread count, each measured in a child process."""
    rows, profiles = [], []
    for threads in thread_counts:
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
        child = [sys.executable, __file__, "--child", "--mode", args.mode, "--repeats", str(args.repeats),
                 "--cells", args.cells, "--ceiling", str(args.ceiling)]
        child += ["--quick"] * args.quick + ["--no-profile"] * no_profile
        proc = subprocess.run(child, env=env, stdout=subprocess.PIPE, text=True, check=True)
        *progress, last = proc.stdout.strip().splitlines()
        print("\n".join(progress), flush=True)
        child_rows, child_prof = json.loads(last[len("ROWS="):])
        rows += child_rows
        profiles += child_prof
    return rows, profiles


def command_line(argv):
    """The command as run, with the environment variables that change what it measures."""
    env = "".join(f"{k}={os.environ[k]} " for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                    "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                    "NUMBA_NUM_THREADS") if k in os.environ)
    return env + "python " + " ".join([os.path.relpath(__file__, ROOT)] + argv)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["interleaved", "settled"], default="interleaved")
    parser.add_argument("--load", choices=["quiet", "busy", "both"], default="quiet",
                        help="busy: while another process spins one core; both: quiet, then busy")
    parser.add_argument("--busy-core", action="store_true", help="the same as --load busy")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument("--repeats", type=int, default=None, help="default 12 interleaved, 7 settled")
    parser.add_argument("--threads", default=str(os.cpu_count()),
                        help="comma-separated thread counts, one block of rows each")
    parser.add_argument("--quick", action="store_true", help="tiny configs (smoke test)")
    parser.add_argument("--cells", default="lstm,gru,rnn_tanh", help="comma-separated subset")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ceiling", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 12 if args.mode == "interleaved" else 7

    if args.child:   # measure, print the rows for the parent as the last line
        rows, prof = run_in_process(args)
        print("ROWS=" + json.dumps([rows, prof], default=float))
        return

    if not chosen_configs(args):
        parser.error(f"no {args.mode} config of the cells {args.cells!r}")
    if args.busy_core and args.load == "quiet":
        args.load = "busy"
    loads = ["quiet", "busy"] if args.load == "both" else [args.load]
    # a SIGTERM unwinds like Ctrl-C: the busy-core spinner and the child are killed
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    load_before = os.getloadavg()[0]
    args.ceiling = gemm_ceiling_gflops()       # before any timing: its BLAS workers spin after
    time.sleep(0.2)
    fig = anchored_peak(cpu_figures(), args.ceiling)
    rows, profiles = [], []
    for k, load in enumerate(loads):
        no_profile = args.no_profile or k > 0          # one profile, of the first load
        thread_counts = [int(t) for t in args.threads.split(",")]
        if load == "busy":
            with busy_core():
                new_rows, new_profiles = measure_threads(args, thread_counts, no_profile)
        else:
            new_rows, new_profiles = measure_threads(args, thread_counts, no_profile)
        rows += [dict(r, mode=args.mode, load=load) for r in new_rows]
        profiles += new_profiles
    add_busy_vs_quiet(rows)
    load = f"{load_before:.2f} / {os.getloadavg()[0]:.2f}"
    header = [f"Command: `{command_line(sys.argv[1:] if argv is None else argv)}`", "",
              f"Mode: {args.mode} ({MODE_NOTE[args.mode]}); median of {args.repeats} repeats, "
              "forward + backward of one float32 layer; ratio = median / torch's median in the same run.", "",
              f"Machine: {describe_peak(fig)}; {os.cpu_count()} logical CPUs visible; "
              f"threads {args.threads}; {versions_line()}", "",
              f"OpenBLAS kernels (threadpoolctl architecture): {openblas_architecture()}; "
              f"measured ceiling, one 2048^3 float32 GEMM at the default threads: "
              f"{args.ceiling:.0f} GFLOP/s (machine.gemm_ceiling_gflops)", "",
              "FLOPs: the matrix products of forward + backward (6 T B G H (I + H)); pointwise "
              "work ignored. % of peak = GFLOP/s / the fp32 peak above.", "",
              f"Load average (1 min) before/after: {load}"]
    text = write_outputs(args.out, rows, profiles, header, loads)
    print("\n" + text)
    print(f"wrote {args.out}/cpu.csv, cpu.md, cpu.png (load average before/after: {load})")


if __name__ == "__main__":
    main()
