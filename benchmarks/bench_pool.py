"""Which threads should run a split layer's parts 1..: gpurnn's own pool or torch's OpenMP team?

In one process, the same native layer (gpurnn.LSTM/GRU(I, H, backend="cpu"), float32,
forward + backward) with GPURNN_CPU_POOL=own and =openmp (the variable is read at every
call: gpurnn.cpu.parallel.pool_choice) and torch.nn.LSTM/GRU take turns call by call,
every order in turn (timing.interleaved_times), so each gpurnn version meets torch's
spinning OpenMP worker as often as the other. The gpurnn result is checked against the
float64 NumPy reference first (timing.validate). Prints median ms and the ratio to torch.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_pool.py [--repeats 18]
"""
import argparse
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import gpurnn  # noqa: E402
from bench_cpu import INTERLEAVED_CONFIGS  # noqa: E402
from timing import gpurnn_results, interleaved_times, layer_reference, validate  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=18)
    args = parser.parse_args()
    import torch
    for cell, T, B, I, H in INTERLEAVED_CONFIGS:
        rng = np.random.default_rng(0)
        native = {"lstm": gpurnn.LSTM, "gru": gpurnn.GRU}[cell](I, H, backend="cpu", dtype="float32")
        peer = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](I, H)
        peer.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in native.state_dict().items()})
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        dout = rng.standard_normal((T, B, H)).astype(np.float32)
        want = layer_reference(cell, native.state_dict(), x, dout)
        xt, dt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(dout)

        def on(pool):
            def run():
                os.environ["GPURNN_CPU_POOL"] = pool
                native(x)
                native.backward(dout)
            return run

        def torch_run():
            peer(xt)[0].backward(dt)
        for pool in ("own", "openmp"):
            os.environ["GPURNN_CPU_POOL"] = pool
            validate(f"native, pool {pool}", gpurnn_results(native, x, dout), want)
        times = interleaved_times({"own": on("own"), "openmp": on("openmp"), "torch": torch_run},
                                  args.repeats)
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(f"{cell} T={T} B={B} I={I} H={H}: " + "  ".join(
            f"{k} {ms[k]:.2f} ms ({ms[k] / ms['torch']:.3f})" for k in ms), flush=True)
    os.environ.pop("GPURNN_CPU_POOL")


if __name__ == "__main__":
    main()
