"""Overhead of gpurnn.torch against calling the gpurnn backend module directly, and the
throughput of examples/ddp_train.py with 1 and 2 processes.

    python benchmarks/bench_torch_bridge.py                 # everything, writes RESULTS_torch.md
    python benchmarks/bench_torch_bridge.py --no-ddp --reps 20

Overhead rows (same process, same run, JIT warm-up excluded): one forward + backward of an
LSTM through
  direct  gpurnn.LSTM(backend=b): m(x) then m.backward(dout)           (NumPy arrays)
  bridge  gpurnn.torch.LSTM(backend=b): m(x) then out.backward(dout)   (torch tensors)
  torch   torch.nn.LSTM (peer, its own CPU kernels)
reported as median / p20 / p80 over --reps repetitions, and bridge - direct (the bridge's
cost: tensor<->array views, autograd bookkeeping, gradient accumulation into .grad).
Before any timing each version's output, dx and weight gradients (same weights) are checked
against the float64 NumPy reference: a wrong one stops the run, no time reported.
DDP rows run torchrun --standalone --nproc_per_node={1,2} examples/ddp_train.py and read
its RESULT line. Writes benchmarks/results_torch_bridge.csv and benchmarks/RESULTS_torch.md.
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

os.environ.setdefault("OMP_NUM_THREADS", "1")   # before NumPy/torch load their BLAS pools

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import gpurnn  # noqa: E402
import gpurnn.torch as gt  # noqa: E402
from timing import gpurnn_results, layer_reference, time_calls, torch_results, validate  # noqa: E402

SHAPES = [  # (label, T, B, I, H)
    ("tiny T=1 B=1 H=8", 1, 1, 8, 8),
    ("small T=20 B=8 H=32", 20, 8, 32, 32),
    ("medium T=50 B=16 H=128", 50, 16, 128, 128),
]


def timeit(fn, reps, warmup=2):
    return np.percentile(time_calls(fn, reps, warmup), [50, 20, 80]) * 1e3   # ms


def overhead_rows(backends, reps, layers=1):
    rows = []
    for label, T, B, I, H in SHAPES:
        reps_here = reps * 10 if T * B * H < 1000 else reps     # tiny calls: more samples
        rng = np.random.default_rng(0)
        x_np = rng.standard_normal((T, B, I)).astype(np.float32)
        dout_np = rng.standard_normal((T, B, H)).astype(np.float32)
        x_t, dout_t = torch.from_numpy(x_np), torch.from_numpy(dout_np)
        weights = gt.LSTM(I, H, num_layers=layers).state_dict()      # every version's
        weights = {k: v.numpy() for k, v in weights.items()}
        reference = layer_reference("lstm", weights, x_np, dout_np)   # float64, checked first
        for b in backends:
            direct = gpurnn.LSTM(I, H, num_layers=layers, backend=b)
            direct.load_state_dict(weights)
            validate(f"{label}: gpurnn.LSTM(backend={b!r})", gpurnn_results(direct, x_np, dout_np),
                     reference)

            def run_direct():
                direct.zero_grad()
                direct(x_np)
                direct.backward(dout_np)

            bridge = gt.LSTM(I, H, num_layers=layers, backend=b)
            bridge.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
            validate(f"{label}: gpurnn.torch.LSTM(backend={b!r})", torch_results(bridge, x_t, dout_t),
                     reference)
            xs = x_t.clone().requires_grad_()

            def run_bridge():
                bridge.zero_grad(set_to_none=True)
                xs.grad = None
                out, _ = bridge(xs)
                out.backward(dout_t)

            # interleave the two so background load hits both alike
            t_d, t_b = [], []
            for _ in range(3):
                t_d.append(timeit(run_direct, max(1, reps_here // 3)))
                t_b.append(timeit(run_bridge, max(1, reps_here // 3)))
            d, br = np.median(t_d, axis=0), np.median(t_b, axis=0)
            rows.append(dict(kind="overhead", shape=label, backend=b, direct_ms=d[0], direct_p20=d[1],
                             direct_p80=d[2], bridge_ms=br[0], bridge_p20=br[1], bridge_p80=br[2],
                             overhead_us=(br[0] - d[0]) * 1e3, ratio=br[0] / d[0]))
            print(f"{label:24s} {b:6s} direct {d[0]:9.3f} ms  bridge {br[0]:9.3f} ms  "
                  f"overhead {(br[0] - d[0]) * 1e3:8.1f} us  ({br[0] / d[0]:.3f}x)", flush=True)
        ref = torch.nn.LSTM(I, H, num_layers=layers)
        ref.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        validate(f"{label}: torch.nn.LSTM", torch_results(ref, x_t, dout_t), reference)
        xs = x_t.clone().requires_grad_()

        def run_torch():
            ref.zero_grad(set_to_none=True)
            out, _ = ref(xs)
            out.backward(dout_t)

        t = timeit(run_torch, reps_here)
        rows.append(dict(kind="peer", shape=label, backend="torch.nn.LSTM", direct_ms=t[0],
                         direct_p20=t[1], direct_p80=t[2]))
        print(f"{label:24s} torch.nn.LSTM {t[0]:9.3f} ms", flush=True)
    return rows


def ddp_rows(nprocs, args_extra, timeout, rounds):
    """Alternate the process counts for ``rounds`` rounds (background load hits all alike);
    report the median samples/s of each and every round's value."""
    runs = {n: [] for n in nprocs}
    for _ in range(rounds):
        for n in nprocs:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={n}", str(ROOT / "examples" / "ddp_train.py"), *args_extra]
            env = dict(os.environ, OMP_NUM_THREADS="1")
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
            line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if res.returncode != 0 or line is None:
                print(res.stdout, res.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"DDP run with {n} processes failed")
            r = json.loads(line[len("RESULT "):])
            runs[n].append(r)
            print(f"DDP nproc={n}: {r['samples_per_s']:.1f} samples/s, final loss {r['loss']:.4f}", flush=True)
    rows = []
    for n, rs in runs.items():
        sps = [r["samples_per_s"] for r in rs]
        row = dict(rs[0], kind="ddp", nproc=n, samples_per_s=float(np.median(sps)),
                   all_samples_per_s=" / ".join(f"{v:.0f}" for v in sps),
                   command="OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=%d "
                           "examples/ddp_train.py %s" % (n, " ".join(args_extra)))
        rows.append(row)
    return rows


def machine():
    try:
        import numba
        numba_v = numba.__version__
    except ImportError:
        numba_v = "-"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs visible; Python {platform.python_version()}, "
            f"torch {torch.__version__}, numpy {np.__version__}, numba {numba_v}, "
            f"gpurnn {gpurnn.__version__}; backends available: {gpurnn.available_backends()}")


def write_markdown(path, over, ddp, cmdline, ddp_args, load_start):
    load_end = os.getloadavg()
    lines = ["# gpurnn.torch: bridge overhead and DDP throughput", "",
             f"Machine: {machine()}.", "",
             f"Load note: 1-minute load average {load_start[0]:.1f} at the start and {load_end[0]:.1f} at"
             f" the end of the run on {os.cpu_count()} CPUs (shared with other jobs): expect noise,"
             " compare only rows measured in the same run.", "",
             f"Command: `{cmdline}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).", "",
             "Timings are wall-clock medians (p20-p80 in brackets) of one LSTM forward + backward,",
             "float32, one layer, OMP_NUM_THREADS=1 and torch.set_num_threads(1) unless the command says",
             "otherwise; direct and bridge are measured interleaved in the same process.",
             "", "## Bridge overhead (gpurnn.torch.LSTM vs the gpurnn module directly)", "",
             "| shape | backend | direct ms | bridge ms | overhead us | bridge/direct |",
             "|---|---|---|---|---|---|"]
    for r in over:
        if r["kind"] == "overhead":
            lines.append(f"| {r['shape']} | {r['backend']} | {r['direct_ms']:.3f} [{r['direct_p20']:.3f}-"
                         f"{r['direct_p80']:.3f}] | {r['bridge_ms']:.3f} [{r['bridge_p20']:.3f}-"
                         f"{r['bridge_p80']:.3f}] | {r['overhead_us']:.0f} | {r['ratio']:.3f} |")
    lines += ["", "Peer in the same run (torch's own CPU LSTM, forward + backward):", "",
              "| shape | torch.nn.LSTM ms |", "|---|---|"]
    for r in over:
        if r["kind"] == "peer":
            lines.append(f"| {r['shape']} | {r['direct_ms']:.3f} [{r['direct_p20']:.3f}-{r['direct_p80']:.3f}] |")
    if ddp:
        lines += ["", "## DDP example throughput (examples/ddp_train.py, gloo on CPU)", "",
                  "| processes | median samples/s (all ranks) | each round | final loss | command |",
                  "|---|---|---|---|---|"]
        for r in ddp:
            lines.append(f"| {r['nproc']} | {r['samples_per_s']:.1f} | {r['all_samples_per_s']} | {r['loss']:.4f} |"
                         f" `{r['command']}` |")
        lines += ["", f"Per-process batch {ddp[0]['batch_per_rank']}, window {ddp[0]['seq']}, hidden "
                  f"{ddp[0]['hidden']}, backend {ddp[0]['backend']}; one process runs without the DDP "
                  "wrapper (world size 1), two processes all-reduce gradients every step. Each process "
                  "runs one torch thread; the two processes share the machine's cores with whatever "
                  "else runs (see the load note)."]
    Path(path).write_text("\n".join(lines) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--backends", default=None, help="comma list; default: numpy and cpu where available")
    p.add_argument("--no-ddp", action="store_true")
    p.add_argument("--ddp-args", default="--steps 40 --warmup 5 --batch 16 --seq 32 --hidden 64 --threads 1")
    p.add_argument("--out", default=str(ROOT / "benchmarks"))
    p.add_argument("--ddp-rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    backends = a.backends.split(",") if a.backends else [
        b for b in ("numpy", "cpu") if b in gpurnn.available_backends()]
    load_start = os.getloadavg()
    print(machine(), flush=True)
    over = overhead_rows(backends, a.reps)
    ddp_args = a.ddp_args.split() + ["--device", "cpu"]
    ddp = [] if a.no_ddp else ddp_rows([1, 2], ddp_args, timeout=900, rounds=a.ddp_rounds)
    out = Path(a.out)
    with open(out / "results_torch_bridge.csv", "w", newline="") as f:
        keys = sorted({k for r in over + ddp for k in r})
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(over + ddp)
    write_markdown(out / "RESULTS_torch.md", over, ddp, "python " + " ".join(sys.argv), ddp_args,
                   load_start)
    print(f"wrote {out / 'RESULTS_torch.md'}")


if __name__ == "__main__":
    main()
