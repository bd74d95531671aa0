"""Token-id inputs on backend="cpu": the gather / scatter-add against the dense GEMMs with
a one-hot X that they replace, and the whole layer fed ids vs one-hot floats.

    python benchmarks/bench_tokens.py [--repeats 30] [--T 64] [--B 32] [--vocab 165] [--H 256]
                                      [--threads 1]

Defaults: the char LM's shapes (T=64 window, B=32 streams, vocab 165 of the default
corpus, LSTM H=256: G*H = 1024), float32. The kernel rows run one thread (BLAS held at
one, as inside a layer call); the layer rows --threads (default 1) threads. Each
kernel's result is checked before it is timed: the gather must equal the one-hot GEMM
bitwise, the scatter-add the GEMM dG^T X to float32 rounding. Prints median and min (ms)
over --repeats calls after warm-up (JIT compilation excluded).
"""
import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from timing import interleaved_times, rel_err, time_calls  # noqa: E402  (benchmarks/ is on sys.path as a script)

import gpurnn  # noqa: E402
from gpurnn.cpu import CpuBackend  # noqa: E402
from gpurnn.cpu.kernels import aligned_empty, gemm, transpose  # noqa: E402
from gpurnn.cpu.parallel import single_threaded_blas  # noqa: E402
from gpurnn.cpu.tokens import gather_rows, scatter_add_columns  # noqa: E402


def kernels(T, B, V, GH, repeats, rng):
    """{name: seconds per call} of the token kernels and the dense GEMMs they replace."""
    TB = T * B
    ids = rng.integers(0, V, TB)
    w = rng.standard_normal((GH, V)).astype(np.float32)
    x = np.zeros((TB, V), np.float32)
    x[np.arange(TB), ids] = 1
    dg = rng.standard_normal((TB, GH)).astype(np.float32)
    gx, gx_dense = aligned_empty((TB, GH), np.float32), aligned_empty((TB, GH), np.float32)
    w_t = aligned_empty((V, GH), np.float32)
    dw, dw_dense = aligned_empty((GH, V), np.float32), aligned_empty((GH, V), np.float32)
    dx = aligned_empty((TB, V), np.float32)

    def gather():
        transpose(w, w_t)                     # part of the cost: once per forward
        gather_rows(w_t, ids, gx, 0, TB)

    cases = {
        "forward  gx = X W_ih^T, dense GEMM": lambda: gemm(x, w.T, gx_dense),
        "forward  gather (transpose W_ih + row copies)": gather,
        "backward dW_ih = dG^T X, dense GEMM": lambda: gemm(dg.T, x, dw_dense),
        "backward dW_ih scatter-add": lambda: scatter_add_columns(dg, ids, dw, 0, GH),
        "backward dX = dG W_ih, dense GEMM (not run for ids)": lambda: gemm(dg, w, dx),
    }
    with single_threaded_blas():
        for fn in cases.values():
            fn()
        if not np.array_equal(gx, gx_dense):
            raise SystemExit("the gather differs from the one-hot GEMM: no time reported")
        err = rel_err(dw, dw_dense)
        if err > 1e-6:
            raise SystemExit(f"the scatter-add differs from dG^T X by {err:.2g}: no time reported")
        return {name: time_calls(fn, repeats) for name, fn in cases.items()}


def layers(T, B, V, H, repeats, rng, threads):
    """{name: seconds} of one LSTM layer forward + backward fed one-hot floats vs ids, the
    variants taking turns call by call (timing.interleaved_times) so that load hits them alike."""
    model = gpurnn.LSTM(V, H, backend=CpuBackend(threads=threads), seed=0)
    ids = rng.integers(0, V, (T, B))
    one_hot = np.eye(V, dtype=np.float32)[ids]
    dout = rng.standard_normal((T, B, H)).astype(np.float32)

    def step(x, need_dx=True):
        with gpurnn.contract.compute_scope(model.backend_impl):
            model(x)
            model.backward(dout, need_dx=need_dx)

    cases = {"layer fwd+bwd, one-hot floats": lambda: step(one_hot),
             "layer fwd+bwd, one-hot floats, need_dx=False": lambda: step(one_hot, False),
             "layer fwd+bwd, token ids": lambda: step(ids)}
    return interleaved_times(cases, repeats, warmup=2)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--T", type=int, default=64)
    p.add_argument("--B", type=int, default=32)
    p.add_argument("--vocab", type=int, default=165)
    p.add_argument("--H", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="threads of the layer rows")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    print(f"T={a.T} B={a.B} vocab={a.vocab} G*H={4 * a.H} (LSTM H={a.H}), float32")
    results = {**kernels(a.T, a.B, a.vocab, 4 * a.H, a.repeats, rng),
               **layers(a.T, a.B, a.vocab, a.H, a.repeats, rng, a.threads)}
    for name, times in results.items():
        median, least = np.median(times) * 1e3, min(times) * 1e3
        print(f"  {name:52s} median {median:8.2f} ms   min {least:8.2f} ms")


if __name__ == "__main__":
    main()
