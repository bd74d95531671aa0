"""backend="cpu" now vs backend="cpu" at an earlier commit, taking turns in ONE process.

    python benchmarks/bench_vs_commit.py --commit 93d3b57 [--repeats 15] [--threads 1]
                                         [--cells lstm,gru]

For refactors that must not cost speed (e.g. the generated kernels of "Cells defined
once" against the hand-written ones). The earlier commit's ``gpurnn`` package is
extracted with ``git archive`` into a temporary directory as ``gpurnn_at_<commit>`` (its
imports are relative; its Numba cache keys are renamed so the two never share a compiled
function), both models get the same weights and inputs, each is checked against the
NumPy reference before it is timed, and the two are timed alternately (A B A B ...),
medians reported with the ratio now / then. Configs: bench_cpu.CONFIGS (the issue's LSTM
and GRU shapes). Thread count: NUMBA_NUM_THREADS / OPENBLAS_NUM_THREADS set before the
libraries load, so run with ``--threads`` only (the script re-executes itself).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def extract(commit, into):
    """The package at ``commit`` as ``gpurnn_at_<commit>`` under ``into``; returns its name."""
    name = "gpurnn_at_" + re.sub(r"\W", "_", commit)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "gpurnn"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    os.rename(os.path.join(into, "gpurnn"), os.path.join(into, name))
    for path in Path(into, name).rglob("*.py"):        # distinct Numba dispatcher identities
        text = path.read_text()
        path.write_text(text.replace('"gpurnn.cpu:', f'"{name}.cpu:').replace("f\"gpurnn.cpu:", f"f\"{name}.cpu:"))
    return name


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commit", required=True)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cells", default="lstm,gru")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.child:
        env = dict(os.environ, NUMBA_NUM_THREADS=str(args.threads),
                   OPENBLAS_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
        sys.exit(subprocess.call([sys.executable, __file__, *sys.argv[1:], "--child"], env=env))

    import importlib
    import gpurnn
    from bench_cpu import CONFIGS, config_name
    from timing import time_calls
    tmp = tempfile.mkdtemp(prefix="gpurnn_prev_")
    sys.path.insert(0, tmp)
    old = importlib.import_module(extract(args.commit, tmp))
    old_cpu = importlib.import_module(old.__name__ + ".cpu.backend").CpuBackend
    new_cpu = importlib.import_module("gpurnn.cpu.backend").CpuBackend
    classes = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN"}
    cells = args.cells.split(",")
    print(f"# backend=cpu, this tree vs {args.commit}, {args.threads} thread(s), "
          f"median of {args.repeats}, forward+backward float32, alternating in one process")
    print("| config | now ms | then ms | now / then, median of pairs (p20-p80) |\n|---|---:|---:|---:|")
    for cfg in CONFIGS:
        cell, T, B, I, H = cfg
        if cell not in cells:
            continue
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        dout = rng.standard_normal((T, B, H)).astype(np.float32)
        ref = getattr(gpurnn, classes[cell])(I, H, backend="numpy", dtype="float32", seed=1)
        models = {"now": getattr(gpurnn, classes[cell])(I, H, backend=new_cpu(), dtype="float32"),
                  "then": getattr(old, classes[cell])(I, H, backend=old_cpu(), dtype="float32")}
        small = T * B * H <= 100 * 32 * 256
        if small:
            ref_out, _ = ref(x)
            ref_dx, _ = ref.backward(dout)
        steps = {}
        for label, m in models.items():
            m.load_state_dict(ref.state_dict())
            out, _ = m(x)
            dx, _ = m.backward(dout)
            if small:       # refuse to time a wrong result
                for a, b in ((out, ref_out), (dx, ref_dx)):
                    err = np.linalg.norm(a - b) / np.linalg.norm(b)
                    if not err <= 1e-5:
                        raise SystemExit(f"{label} {config_name(cfg)}: rel err {err:.2e} vs reference")
            steps[label] = (lambda m=m: (m(x), m.backward(dout)))
        times = {k: [] for k in steps}
        for k in steps:
            time_calls(steps[k], 1, warmup=3)
        for _ in range(args.repeats):
            for k, fn in steps.items():
                times[k] += time_calls(fn, 1, warmup=1)
        now, then = (np.median(times[k]) * 1e3 for k in ("now", "then"))
        pairs = np.array(times["now"]) / np.array(times["then"])     # neighbours share the load
        print(f"| {config_name(cfg)} | {now:.2f} | {then:.2f} | {np.median(pairs):.3f}"
              f" ({np.percentile(pairs, 20):.2f}-{np.percentile(pairs, 80):.2f}) |", flush=True)


if __name__ == "__main__":
    main()
