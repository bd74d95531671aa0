"""A/B of the "units" split's GEMMs (B <= 8): each part doing its own units' GEMMs with X
and W_ih inside its loop call (plan.gemms "parts", the default) against the GEMMs split by
rows around the loop (the parts meeting before and after it, "rows"), with torch.nn.LSTM
taking turns in the same process.

Each round runs the three in a rotated order (each follows each of the others equally
often: whoever runs right after one of our calls finds the pool thread still awake),
forward + backward, float32. Prints median and best forward / backward times (ms) and the
median of the per-round ratios.

Run:  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/ab_units_gemms.py \
          [--T 100 --B 1 --I 128 --H 256 --rounds 150]
"""
import argparse
import time

import numpy as np
import torch

import gpurnn
from gpurnn.cpu import CpuBackend


class RowsGemms(CpuBackend):
    """The GEMMs split by rows around the loop, as before plan.gemms "parts"."""
    @staticmethod
    def _njit_gemms_why(plan):
        return "A/B: rows", False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, default in (("T", 100), ("B", 1), ("I", 128), ("H", 256), ("rounds", 150)):
        ap.add_argument(f"--{name}", type=int, default=default)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.T, a.B, a.I)).astype(np.float32)
    dout = rng.standard_normal((a.T, a.B, a.H)).astype(np.float32)
    parts = gpurnn.LSTM(a.I, a.H, backend=CpuBackend(), seed=0)
    rows = gpurnn.LSTM(a.I, a.H, backend=RowsGemms(), seed=0)
    ref = torch.nn.LSTM(a.I, a.H)
    xt, dt = torch.tensor(x, requires_grad=True), torch.tensor(dout)

    def native(model):
        def call():
            t0 = time.perf_counter()
            model(x)
            t1 = time.perf_counter()
            model.backward(dout)
            return t1 - t0, time.perf_counter() - t1
        return call

    def torch_nn():
        t0 = time.perf_counter()
        out, _ = ref(xt)
        t1 = time.perf_counter()
        out.backward(dt)
        return t1 - t0, time.perf_counter() - t1

    results = []                           # checked before timed: the same numbers
    for model in (parts, rows):
        out, _ = model(x)
        dx, _ = model.backward(dout)
        results.append([out, dx, *(g.copy() for g in model.grads.values())])
    for got, want in zip(*results):
        assert np.allclose(got, want, rtol=1e-4, atol=1e-5), "parts and rows disagree"
    calls = {"parts": native(parts), "rows": native(rows), "torch.nn": torch_nn}
    for call in calls.values():            # compile, warm up
        call(), call()
    times = {k: [] for k in calls}
    names = list(calls)
    for r in range(a.rounds):
        for k in names[r % 3:] + names[:r % 3]:
            times[k].append(calls[k]())
    plans = {k: m.last_plans for k, m in (("parts", parts), ("rows", rows))}
    print(f"LSTM T={a.T} B={a.B} I={a.I} H={a.H}, {a.rounds} rounds; plans: "
          + "; ".join(f"{k} {p['forward'][0][0].get('gemms')}" for k, p in plans.items()))
    t = {k: np.array(v) * 1e3 for k, v in times.items()}
    for k, v in t.items():
        print(f"{k:9s} median fwd {np.median(v[:, 0]):.2f} bwd {np.median(v[:, 1]):.2f} "
              f"total {np.median(v.sum(1)):.2f} | best fwd {v[:, 0].min():.2f} "
              f"bwd {v[:, 1].min():.2f} ms")
    ratio = lambda p, q, i=slice(None): np.median(  # noqa: E731
        (t[p][:, i].sum(1) if isinstance(i, slice) else t[p][:, i])
        / (t[q][:, i].sum(1) if isinstance(i, slice) else t[q][:, i]))
    print(f"parts/rows per round: fwd {ratio('parts', 'rows', 0):.3f} bwd "
          f"{ratio('parts', 'rows', 1):.3f} total {ratio('parts', 'rows'):.3f}; "
          f"parts/torch.nn {ratio('parts', 'torch.nn'):.3f}, rows/torch.nn "
          f"{ratio('rows', 'torch.nn'):.3f}")


if __name__ == "__main__":
    main()
