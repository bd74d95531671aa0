"""CPU benchmark: gpurnn backend="cpu" vs torch.nn on the CPU (and the NumPy reference).

    python benchmarks/bench_cpu.py [--out benchmarks/out] [--repeats 7] [--threads 2]
                                   [--cells lstm,gru,rnn_tanh] [--quick] [--no-profile]

Grid: forward+backward (float32) of one layer through the public API (gpurnn.LSTM/GRU/RNN vs
torch.nn.LSTM/GRU/RNN with the same weights), for the configs in CONFIGS. Peers in the same
run: torch (the baseline every ratio divides by) and the NumPy reference (small configs
only: it is slow). Each repeat runs every backend untimed for at least SETTLE_S (0.2 s),
then once timed, backends interleaved, so machine load (shared cores) hits all of them alike
and none shares the cores with the previous one's spinning idle threads; JIT compilation is
excluded by a warm-up. Before any timing, every version's output, dx and weight gradients
are checked against the float64 NumPy reference (timing.validate): a wrong result stops the
run with no time reported. ``--threads N`` runs everything in
a child process with N BLAS/OpenMP/Numba threads (OPENBLAS_NUM_THREADS, OMP_NUM_THREADS,
NUMBA_NUM_THREADS must be set before the libraries load) and torch.set_num_threads(N);
several values (--threads 1,2) give several blocks of rows.

Writes under --out (default benchmarks/out/, gitignored): cpu.csv (config, backend, median,
p20, p80 in ms, ratio to torch, tape bytes, how backend="cpu" split the layer over the
threads), cpu.md (the same as a Markdown table, plus the profile of the largest config) and cpu.png (ratios to torch, one bar per config and backend).
"""
import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from timing import (gpurnn_results, layer_reference, time_calls, torch_results,  # noqa: E402
                    validate)  # (benchmarks/ is on sys.path when run as a script)

# (cell, T, B, I, H); the first three are the LSTM targets (ratio <= 0.5, 1.0, 1.0).
CONFIGS = [(cell, *shape) for cell in ("lstm", "gru", "rnn_tanh")
           for shape in ((100, 1, 128, 256), (100, 32, 128, 256), (100, 64, 512, 512))]
QUICK_CONFIGS = [("lstm", 20, 1, 32, 64), ("gru", 20, 8, 32, 64), ("rnn_tanh", 20, 8, 32, 64)]
NUMPY_MAX_WORK = 100 * 32 * 256 * 1024   # T*B*H*G*H above which the reference is skipped
# Untimed runs of each backend before its timed one, for at least this long. OpenBLAS's
# worker threads spin for ~100 ms after every threaded call (2^28 cycles,
# OPENBLAS_THREAD_TIMEOUT; the numpy reference wakes them) and torch's OpenMP workers
# briefly: the backend measured next must not share its cores with them. A pause instead
# would not do: on this VM a core left idle for 150 ms runs the next ~50 ms of a 2-thread
# split 2x slower (measured), so each backend gets that long to warm up, alike.
SETTLE_S = 0.2
TORCH_CLASS = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN"}
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1}


def config_name(cfg):
    cell, T, B, I, H = cfg
    return f"{cell} T={T} B={B} I={I} H={H}"


# ----------------------------------------------------------------------------- runners
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


def torch_runner(cfg, weights, x, dout):
    import torch
    cell, T, B, I, H = cfg
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


def split_plan(model):
    """How backend="cpu" split the recurrence over threads, e.g. "units x2" (kernels.Plan)."""
    kind, nparts = model.last_plans["forward"][0][0]["split"]
    return f"{kind} x{nparts}"


def tape_bytes(model):
    """Bytes the backend keeps between forward and backward (x and weights excluded)."""
    from gpurnn.cpu import tape_nbytes
    tapes = [t for layer in model._tape["tapes"] for t in layer]
    if model.backend == "cpu":
        return sum(tape_nbytes(t) for t in tapes)
    return sum(a.nbytes for t in tapes for s in t["steps"] for a in s.values()
               if isinstance(a, np.ndarray))


def measure(cfg, repeats, with_numpy):
    cell, T, B, I, H = cfg
    rng = np.random.default_rng(0)
    G, bound = GATES[cell], 1 / np.sqrt(H)
    weights = {}
    for name, shape in (("weight_ih_l0", (G * H, I)), ("weight_hh_l0", (G * H, H)),
                        ("bias_ih_l0", (G * H,)), ("bias_hh_l0", (G * H,))):
        weights[name] = rng.uniform(-bound, bound, shape).astype(np.float32)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dout = rng.standard_normal((T, B, H)).astype(np.float32)

    runners, models = {}, {}
    reference = layer_reference(cell, weights, x, dout)     # float64: every version is checked
    for backend in ["cpu"] + (["numpy"] if with_numpy else []):
        runners[backend], models[backend] = gpurnn_runner(backend, cfg, weights, x, dout)
        validate(f"gpurnn backend={backend}, {config_name(cfg)}",
                 gpurnn_results(models[backend], x, dout), reference)
    try:
        runners["torch"], torch_model = torch_runner(cfg, weights, x, dout)
        validate(f"torch, {config_name(cfg)}", torch_results(torch_model, x, dout), reference)
    except ImportError:
        pass
    for run in runners.values():          # JIT compile / first-touch warm-up
        run()
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            warm_until = time.perf_counter() + SETTLE_S
            run()                         # untimed, for at least SETTLE_S: the previous
            while time.perf_counter() < warm_until:   # backend's idle threads stop spinning,
                run()                     # this one's are awake and on their cores
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    rows = []
    for name, ts in times.items():
        ms = np.array(ts) * 1e3
        rows.append(dict(config=config_name(cfg), cell=cell, T=T, B=B, I=I, H=H, backend=name,
                         median_ms=np.median(ms), p20_ms=np.percentile(ms, 20),
                         p80_ms=np.percentile(ms, 80),
                         tape_bytes=tape_bytes(models[name]) if name in models else "",
                         plan=split_plan(models[name]) if name == "cpu" else ""))
    base = np.median(times["torch"]) if "torch" in times else None
    for r in rows:
        r["ratio_to_torch"] = r["median_ms"] / (base * 1e3) if base else float("nan")
    return rows


# ----------------------------------------------------------------------------- profile
def profile(cfg, repeats):
    """Where the time of backend="cpu" goes for one layer of ``cfg``: each phase timed alone,
    split over threads as the backend splits it (kernels.Plan)."""
    from gpurnn.cells import get_cell
    from gpurnn.cpu import CpuBackend
    from gpurnn.cpu.kernels import Plan, gemm, recurrence_kernels, transpose
    from gpurnn.cpu.parallel import recurrence_threads
    cell, T, B, I, H = cfg
    G = GATES[cell]
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

    def split(fn, backward=False):              # fn(plan, part) on every part, as the backend runs it
        def run():
            plan = Plan(T, B, H, G * H, recurrence_threads())
            plan = plan.for_backward(f32) if backward else plan
            plan.run(lambda p: fn(plan, p))
        return run

    def products_only(plan, p):                 # the forward's per-step BLAS calls alone ("rows")
        if plan.kind != "rows":
            return
        b0, b1 = plan.rows(p)
        ghT = np.empty((G * H, b1 - b0), f32)
        for t in range(T):
            np.matmul(w_hh, tape["st"][0, t, b0:b1].T, out=ghT)

    phases = {
        "forward: input GEMM gx = X W_ih^T": split(lambda plan, p: gemm(x2, w_ih.T, gx2, p, plan.nparts)),
        "forward: recurrence (products + fused cell)": split(lambda plan, p: forward_part(
            plan, p, gx, w_hh, w_hh_t, np.zeros((2, G * H), f32), tape["lengths"], tape["st"], tape["aux"], out,
            be.transposed_forward)),
        "  of which the per-step BLAS products (B > 8)": split(products_only),
        "backward: recurrence (fused cell + products)": split(lambda plan, p: backward_part(
            plan, p, tape["acts"], tape["st"], tape["aux"], w_hh, w_hh_t, tape["lengths"],
            0, dout, np.zeros((S, B, H), f32), dgx, dgx if spec.all_tied else np.empty_like(dgx)),
            backward=True),
        "backward: dX = dG W_ih": split(lambda plan, p: gemm(d2, w_ih, np.empty((T * B, I), f32), p, plan.nparts)),
        "backward: dW_ih = dG^T X": split(lambda plan, p: gemm(d2.T, x2, np.empty((G * H, I), f32), p, plan.nparts)),
        "backward: dW_hh = dG^T H_prev": split(lambda plan, p: gemm(
            d2.T, tape["st"][0, :T].reshape(T * B, H), np.empty((G * H, H), f32), p, plan.nparts)),
        "backward: bias sums": lambda: d2.sum(0),
        "whole layer (backend forward + backward)": lambda: be.backward(
            be.forward(spec, x, w_ih, w_hh, b, b, (None,) * S, None)[2], dout, (None,) * S, None),
    }
    return [(name, np.median(time_calls(fn, repeats, warmup=1)) * 1e3) for name, fn in phases.items()]


# ----------------------------------------------------------------------------- outputs
def machine_info(threads):
    import numba
    model = platform.processor()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    versions = [f"python {platform.python_version()}", f"numpy {np.__version__}", f"numba {numba.__version__}"]
    try:
        import torch
        versions.append(f"torch {torch.__version__}")
    except ImportError:
        versions.append("torch not installed")
    return (f"{model}, {os.cpu_count()} cores, {threads} BLAS/OpenMP/torch threads; "
            + ", ".join(versions))


def write_outputs(out_dir, rows, profile_rows, info, command, load):
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = ["threads", "config", "cell", "T", "B", "I", "H", "backend", "median_ms", "p20_ms",
              "p80_ms", "ratio_to_torch", "tape_bytes", "plan"]
    with open(out_dir / "cpu.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})

    lines = [f"Command: `{command}`", "", f"Machine: {info}", "", f"Load average (1 min) before/after: {load}",
             "", "| threads | config | backend | median ms | p20 ms | p80 ms | ratio to torch | tape bytes | split |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['threads']} | {r['config']} | {r['backend']} | {r['median_ms']:.2f} | {r['p20_ms']:.2f} |"
                     f" {r['p80_ms']:.2f} | {r['ratio_to_torch']:.2f} | {r['tape_bytes']} | {r['plan']} |")
    for threads, prof_cfg, prof in profile_rows:
        lines += ["", f"Profile, backend=cpu, {config_name(prof_cfg)}, {threads} thread(s) (each phase timed alone, median ms):",
                  "", "| phase | ms |", "|---|---:|"] + [f"| {n} | {ms:.2f} |" for n, ms in prof]
    (out_dir / "cpu.md").write_text("\n".join(lines) + "\n")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    labels = sorted({(r["threads"], r["config"]) for r in rows}, key=lambda k: (k[0], k[1]))
    backends = [b for b in ("cpu", "numpy") if any(r["backend"] == b for r in rows)]
    fig, ax = plt.subplots(figsize=(max(6, len(labels) * 0.9), 4.5))
    for k, backend in enumerate(backends):
        ratios = [next((r["ratio_to_torch"] for r in rows if (r["threads"], r["config"]) == lab
                        and r["backend"] == backend), np.nan) for lab in labels]
        ax.bar(np.arange(len(labels)) + k * 0.4, ratios, 0.4, label=f"gpurnn {backend}")
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label="torch")
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(labels)) + 0.2 * (len(backends) - 1))
    ax.set_xticklabels([f"{c}\n{t} thr" for t, c in labels], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("time / torch time (fwd+bwd, lower is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "cpu.png", dpi=120)


# ----------------------------------------------------------------------------- main
def run_in_process(args):
    """Measure the whole grid with the thread count this process was started with."""
    threads = int(os.environ["OPENBLAS_NUM_THREADS"])
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        pass
    configs = [c for c in (QUICK_CONFIGS if args.quick else CONFIGS) if c[0] in args.cells.split(",")]
    rows = []
    for cfg in configs:
        _, T, B, I, H = cfg
        with_numpy = T * B * H * GATES[cfg[0]] * H <= NUMPY_MAX_WORK
        for r in measure(cfg, args.repeats, with_numpy):
            rows.append(dict(threads=threads, **r))
            print(f"[{threads} thr] {r['config']:<32} {r['backend']:<6} {r['median_ms']:9.2f} ms"
                  f"  ratio {r['ratio_to_torch']:.2f}", flush=True)
    largest = max(configs, key=lambda c: c[1] * c[2] * c[4] * (c[3] + c[4]) * GATES[c[0]])
    prof = [] if args.no_profile else [(threads, largest, profile(largest, args.repeats))]
    return rows, prof


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", default=str(os.cpu_count()),
                        help="comma-separated thread counts, one block of rows each")
    parser.add_argument("--quick", action="store_true", help="tiny configs (smoke test)")
    parser.add_argument("--cells", default="lstm,gru,rnn_tanh", help="comma-separated subset")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:   # measure, print the rows for the parent as the last line
        rows, prof = run_in_process(args)
        print("ROWS=" + json.dumps([rows, prof], default=float))
        return

    command = "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:])
    load_before = os.getloadavg()[0]
    rows, profiles = [], []
    for threads in [int(t) for t in args.threads.split(",")]:
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
        child = [sys.executable, __file__, "--child", "--repeats", str(args.repeats), "--cells", args.cells]
        child += ["--quick"] * args.quick + ["--no-profile"] * args.no_profile
        proc = subprocess.run(child, env=env, stdout=subprocess.PIPE, text=True, check=True)
        *progress, last = proc.stdout.strip().splitlines()
        print("\n".join(progress), flush=True)
        child_rows, child_prof = json.loads(last[len("ROWS="):])
        rows += child_rows
        profiles += child_prof
    load = f"{load_before:.2f} / {os.getloadavg()[0]:.2f}"
    write_outputs(args.out, rows, profiles, machine_info(args.threads), command, load)
    print(f"wrote {args.out}/cpu.csv, cpu.md, cpu.png (load average before/after: {load})")


if __name__ == "__main__":
    main()
