"""GPU benchmark: gpurnn LSTM (cuda backend, step and persistent kernels) vs torch.nn.LSTM
(cuDNN) fp32 (strict, TF32 off: the baseline of every ratio), TF32 (torch's default) and
fp16, all measured in the same run on the same GPU.

Rows (issue 4's targets):
  fwd_per_step   B=16, H=I=256/512/768, T=1024: forward, reported per timestep
  fwdbwd         B=16, H=I=768, T=1024: forward + backward
  fastrnns       T=100, B=64, I=H=512: forward and forward + backward
Timing: CUDA events around each call (the gpurnn calls include their Python launch loop),
JIT/cuDNN warm-up runs excluded, median / p20 / p80 over --reps runs. Inputs live on the
GPU (CuPy arrays for gpurnn, torch tensors for torch); no host copies are timed.
Each gpurnn version is checked against torch fp32 (strict, TF32 off) before it is timed:
relative error of the output and of dx <= 1e-3, else the row is not timed and the log
says CHECK FAILED. What ran comes from the layer's per-call plans (last_plans).

Run (real GPU; needs cupy + torch + numba-cuda):
    PYTHONPATH=. python benchmarks/bench_gpu.py --out results/ [--quick] [--reps 10]
Writes bench.csv and bench.md under --out. `--help` works anywhere (no GPU imports).
"""
import argparse
import csv
import os
import sys
import time

CONFIGS = [
    # name, mode, T, B, I, H
    ("fwd_per_step", "fwd", 1024, 16, 256, 256),
    ("fwd_per_step", "fwd", 1024, 16, 512, 512),
    ("fwd_per_step", "fwd", 1024, 16, 768, 768),
    ("fwdbwd", "fwdbwd", 1024, 16, 768, 768),
    ("fastrnns", "fwd", 100, 64, 512, 512),
    ("fastrnns", "fwdbwd", 100, 64, 512, 512),
]
QUICK = [("fwd_per_step", "fwd", 128, 16, 256, 256), ("fastrnns", "fwdbwd", 20, 64, 512, 512)]


def _pct(xs, q):
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _time_cupy(cp, fn, reps, warmup):
    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(reps):
        s, e = cp.cuda.Event(), cp.cuda.Event()
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(cp.cuda.get_elapsed_time(s, e))
    return times


def _time_torch(torch, fn, reps, warmup):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return times


def run(args):
    import numpy as np
    import cupy as cp
    import torch
    import gpurnn
    from gpurnn.cuda import CudaBackend

    torch.backends.cudnn.enabled = True
    configs = QUICK if args.quick else CONFIGS
    rows = []
    log = print
    start = time.time()
    for name, mode, T, B, I, H in configs:
        if args.budget_s and time.time() - start > args.budget_s:
            log(f"budget of {args.budget_s} s spent: skipping {name} {mode} T={T} B={B} H={H}")
            continue
        rng = np.random.default_rng(0)
        x_np = rng.standard_normal((T, B, I)).astype(np.float32)
        dout_np = rng.standard_normal((T, B, H)).astype(np.float32)
        ref = torch.nn.LSTM(I, H).cuda()
        sd = {k: v.detach().cpu().numpy() for k, v in ref.state_dict().items()}
        x_t = torch.from_numpy(x_np).cuda()
        dout_t = torch.from_numpy(dout_np).cuda()
        torch.backends.cudnn.allow_tf32 = False     # the accuracy reference: strict fp32
        xg = x_t.clone().requires_grad_(True)
        out_ref, _ = ref(xg)
        out_ref.backward(dout_t)
        want = out_ref.detach().float().cpu().numpy()
        want_dx = xg.grad.float().cpu().numpy()       # checked before any timing
        results = {}

        for algo in ("step", "persistent"):
            be = CudaBackend(algo=algo)
            m = gpurnn.LSTM(I, H, backend=be)
            m.load_state_dict(sd)
            x = cp.asarray(x_np)
            dout = cp.asarray(dout_np)

            def f_fwd():
                return m(x)

            def f_fb():
                m(x)
                m.backward(dout)

            t0 = time.time()
            out = m(x)[0]
            err = float(np.linalg.norm(cp.asnumpy(out) - want) / np.linalg.norm(want))
            # what ran: the per-call plans (tape["plan"] / DirectionGrads.plan) of the
            # layer's last forward / backward, never state on the backend object
            dx = m.backward(dout)[0]
            err_dx = float(np.linalg.norm(cp.asnumpy(dx) - want_dx) / np.linalg.norm(want_dx))
            if not (err < 1e-3 and err_dx < 1e-3):
                log(f"CHECK FAILED {name} {mode} H={H} {algo}: rel err out {err:.2e} "
                    f"dx {err_dx:.2e} vs torch fp32: not timed")
                continue
            fplan = m.last_plans["forward"][0][0]
            bplan = m.last_plans["backward"][0][0]
            ran = f"{fplan.get('algorithm')}/{bplan.get('algorithm')}"
            declined = fplan.get("declined") or bplan.get("declined") or ""
            times = _time_cupy(cp, f_fwd if mode == "fwd" else f_fb, args.reps, args.warmup)
            results[f"gpurnn-{algo}"] = (times, f"ran={ran} declined={declined!r} "
                                         f"fwd_plan={fplan} rel_err_vs_cudnn={err:.2e} dx_rel_err={err_dx:.2e}"
                                         f" first_call_s={time.time() - t0:.1f}")

        for prec in ("fp32", "tf32", "fp16"):
            # fp32: strict (cudnn.allow_tf32 off); tf32: torch's default for cuDNN RNNs
            torch.backends.cudnn.allow_tf32 = prec == "tf32"
            mod = torch.nn.LSTM(I, H).cuda().half() if prec == "fp16" else ref
            xt = x_t.half() if prec == "fp16" else x_t
            dt_ = dout_t.half() if prec == "fp16" else dout_t
            xt = xt.clone().requires_grad_(mode == "fwdbwd")

            def t_fwd():
                return mod(xt)

            def t_fb():
                out, _ = mod(xt)
                out.backward(dt_)

            times = _time_torch(torch, t_fwd if mode == "fwd" else t_fb, args.reps, args.warmup)
            results[f"cudnn-{prec}"] = (times, "torch.nn.LSTM")
        torch.backends.cudnn.allow_tf32 = True

        base = float(np.median(results["cudnn-fp32"][0]))
        for impl, (times, note) in results.items():
            med = float(np.median(times))
            row = dict(config=name, mode=mode, T=T, B=B, I=I, H=H, impl=impl,
                       median_ms=round(med, 4), p20_ms=round(_pct(times, 0.2), 4),
                       p80_ms=round(_pct(times, 0.8), 4), us_per_step=round(1000 * med / T, 3),
                       ratio_vs_cudnn_fp32=round(med / base, 3), note=note)
            rows.append(row)
            log(f"{name:13s} {mode:6s} T={T:5d} B={B:3d} H={H:4d} {impl:18s} "
                f"median {med:9.3f} ms  {row['us_per_step']:8.2f} us/step  x{row['ratio_vs_cudnn_fp32']:.2f}"
                f" vs cuDNN fp32  {note}")
            sys.stdout.flush()
        write(rows, args.out)          # after every config: a timeout keeps what was measured
    return rows


def write(rows, out):
    os.makedirs(out, exist_ok=True)
    keys = list(rows[0]) if rows else []
    with open(os.path.join(out, "bench.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, keys)
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(out, "bench.md"), "w") as fh:
        fh.write("| config | mode | T | B | H | impl | median ms | p20 | p80 | us/step | x cuDNN fp32 |\n")
        fh.write("|---|---|---|---|---|---|---|---|---|---|---|\n")
        for r in rows:
            fh.write(f"| {r['config']} | {r['mode']} | {r['T']} | {r['B']} | {r['H']} | {r['impl']} |"
                     f" {r['median_ms']} | {r['p20_ms']} | {r['p80_ms']} | {r['us_per_step']} |"
                     f" {r['ratio_vs_cudnn_fp32']} |\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description="gpurnn LSTM (cuda step/persistent) vs torch cuDNN"
                                             " fp32/fp16 on one GPU; writes bench.csv + bench.md")
    ap.add_argument("--out", default="bench_out", help="output folder")
    ap.add_argument("--reps", type=int, default=7, help="timed runs per row (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first (JIT, cuDNN plans)")
    ap.add_argument("--quick", action="store_true", help="two tiny rows (smoke test)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="start no new config after this many seconds")
    args = ap.parse_args(argv)
    rows = run(args)
    if rows:
        write(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
