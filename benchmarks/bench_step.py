"""The training step's non-recurrent parts, fused vs plain, at the char LM's shape.

Times, per `gpurnn train` step (Trainer.train_step's calls, backend "cpu", float32):

  head   OutputLayer zero_grad + loss_and_backward: logits GEMM, softmax cross-entropy and
         its gradient, dW and dH GEMMs (inside compute_scope, as the step runs it)
  optim  global_norm + optimizer.step(params, grads, clip_scale(norm, clip)) (Adam)

with the compiled passes (fused=True, the default) and with the plain NumPy expressions
(fused=False), on random hidden states and gradients of the model's shapes (window 64,
batch 32, LSTM 256, vocabulary 165 by default). The two versions' results are compared
first (benchmarks/timing.validate): a wrong one is not timed.

    python benchmarks/bench_step.py
    python benchmarks/bench_step.py --repeats 50 --hidden 512
"""
import argparse
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gpurnn.apps.charlm import CharLM  # noqa: E402
from gpurnn.contract import compute_scope  # noqa: E402
from gpurnn.train.optim import clip_scale, global_norm, make_optimizer  # noqa: E402
from timing import interleaved_times, validate  # noqa: E402


def head_case(lm, out, y):
    def run():
        with compute_scope(lm._backend):
            lm.head.zero_grad()
            loss, dh = lm.head.loss_and_backward(out, y)
        return {"loss": np.asarray(loss), "dh": dh, **{f"d{k}": g for k, g in lm.head.grads.items()}}
    return run


def optim_case(lm, grads, clip, fused):
    opt = make_optimizer("adam", 1e-2, fused=fused)
    params = {k: p.copy() for k, p in lm.parameters().items()}

    def run():
        norm = global_norm(grads)
        opt.step(params, grads, clip_scale(norm, clip))
        return {"norm": np.asarray(norm), **params}
    return run, opt


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=165)
    p.add_argument("--clip", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    k, B, H, V = args.window, args.batch, args.hidden, args.vocab
    lm = CharLM(V, "lstm", H, backend="cpu", dtype="float32", seed=0)
    out = np.tanh(rng.standard_normal((k, B, H))).astype(np.float32)
    y = rng.integers(0, V, (B, k + 1))[:, 1:].T            # a transposed view, as the Trainer's
    grads = {name: (0.1 * rng.standard_normal(g.shape)).astype(np.float32)
             for name, g in lm.grads().items()}            # norm ~70: the step clips

    results = {}
    for fused in (False, True):
        lm.head.fused = fused
        head = head_case(lm, out, y)
        optim, opt = optim_case(lm, grads, args.clip, fused)
        results[fused] = {**{f"head.{n}": a.copy() for n, a in head().items()},
                          **{f"optim.{n}": a.copy() for n, a in optim().items()}}
        print(f"fused={fused}: head {lm.head.path}; optimizer {sorted(set(opt.paths.values()))}")
    worst = validate("fused", results[True], results[False], tolerance=1e-5)
    print(f"fused vs plain: worst normwise relative difference {worst:.2g}")

    print(f"window {k}, batch {B}, hidden {H}, vocabulary {V}: median of {args.repeats} calls "
          f"after {args.warmup} warm-up rounds, ms (plain and fused calls take turns in "
          f"every order, so that drifting load hits both)")
    def with_head_path(fused, call):            # the head reads its path at call time
        def run():
            lm.head.fused = fused
            return call()
        return run

    cases = {}
    for fused in (False, True):
        cases[fused, "head"] = with_head_path(fused, head_case(lm, out, y))
        cases[fused, "clip+adam"] = optim_case(lm, grads, args.clip, fused)[0]
    times = interleaved_times(cases, args.repeats, args.warmup)
    for fused in (False, True):
        print(f"  fused={fused!s:5}  " + "  ".join(
            f"{name} {statistics.median(t) * 1e3:.2f} (p20 {np.percentile(t, 20) * 1e3:.2f}, "
            f"p80 {np.percentile(t, 80) * 1e3:.2f})"
            for (f, name), t in times.items() if f == fused))


if __name__ == "__main__":
    main()
