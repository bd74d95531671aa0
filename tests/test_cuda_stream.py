"""CudaBackend.use_stream(ptr): every kernel launch and device copy of the cuda backend on
one CUDA stream (the torch bridge passes torch's current stream; kernels_docs/cuda.md).

In Numba's CUDA simulator raw stream handles cannot be wrapped (it has no external
streams): there ``use_stream(int)`` raises a clear RuntimeError, and the rest is checked
with simulated ``cuda.stream()`` objects, which the backend accepts as well. On a real GPU
(GPURNN_REAL_GPU=1) the raw-handle path runs too.
"""
import threading

import numpy as np
import pytest
from numba import cuda

import gpurnn
from gpurnn.cuda import CudaBackend
from gpurnn.cuda import kernels as K


def _spy_launches(monkeypatch):
    """Record the launch configuration (grid, block, stream, smem) of every kernel."""
    seen = []
    cls = type(K.gemm_kernel("float32"))
    orig = cls.__getitem__

    def getitem(self, config):
        seen.append(tuple(config))
        return orig(self, config)

    monkeypatch.setattr(cls, "__getitem__", getitem)
    return seen


def _run(be, cell, rng, T=3, B=2, I=2, H=3):
    """Forward + backward on ``be`` and on the numpy reference; max abs difference."""
    ref = gpurnn.layers.make_layer(cell, I, H, backend="numpy", seed=3)
    dev = gpurnn.layers.make_layer(cell, I, H, backend=be, seed=3)
    dev.load_state_dict(ref.state_dict())
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    out_r, _ = ref(x)
    out_d, _ = dev(x)
    dout = rng.standard_normal(out_r.shape).astype(np.float32)
    dx_r, _ = ref.backward(dout)
    dx_d, _ = dev.backward(dout)
    return max(float(np.abs(out_d - out_r).max()), float(np.abs(dx_d - dx_r).max()))


def test_use_stream_nests_and_restores():
    be = CudaBackend()
    assert be.stream == 0                      # default: Numba's default stream
    s1, s2 = cuda.stream(), cuda.stream()
    with be.use_stream(s1) as got1:
        assert got1 is s1 and be.stream is s1
        with be.use_stream(s2) as got2:
            assert got2 is s2 and be.stream is s2
        assert be.stream is s1
        with pytest.raises(KeyError):
            with be.use_stream(s2):
                raise KeyError("inside")
        assert be.stream is s1                 # restored after an exception too
    assert be.stream == 0


def test_use_stream_is_per_thread():
    be = CudaBackend()
    seen = {}
    with be.use_stream(cuda.stream()):
        t = threading.Thread(target=lambda: seen.setdefault("other", be.stream))
        t.start()
        t.join()
    assert seen["other"] == 0


def test_use_stream_bad_arguments():
    be = CudaBackend()
    with pytest.raises(TypeError, match="use_stream"):
        with be.use_stream("stream"):
            pass
    with pytest.raises(TypeError, match="use_stream"):
        with be.use_stream(True):
            pass
    with pytest.raises(ValueError, match="use_stream"):
        with be.use_stream(-1):
            pass
    assert be.stream == 0


@pytest.mark.skipif(not K.SIMULATOR, reason="simulator behaviour")
def test_raw_handle_in_simulator_raises_clearly():
    be = CudaBackend()
    with pytest.raises(RuntimeError, match="simulator"):
        with be.use_stream(0):
            pass
    assert be.stream == 0


@pytest.mark.parametrize("cell,algo", [("lstm", "step"), ("gru", "persistent"),
                                       ("slstm", "persistent")])
def test_every_launch_goes_to_the_stream(rng, monkeypatch, cell, algo):
    """Inside use_stream: results unchanged, and every launch (recurrence + GEMM fallback
    kernels) carries the stream; outside it, the default stream 0 as before."""
    be = CudaBackend(algo=algo, poison=True)
    seen = _spy_launches(monkeypatch)
    s = cuda.stream()
    with be.use_stream(s):
        err = _run(be, cell, rng)
    assert err <= 1e-5
    assert seen and all(len(c) == 4 and c[2] is s for c in seen), seen[:3]
    seen.clear()
    assert _run(be, cell, rng) <= 1e-5
    assert seen and all(len(c) == 4 and isinstance(c[2], int) and c[2] == 0 for c in seen)


@pytest.mark.gpu
@pytest.mark.skipif(K.SIMULATOR, reason="raw stream handles need a real GPU")
def test_raw_handle_on_gpu(rng, monkeypatch):
    be = CudaBackend(algo="auto", poison=True)
    s = cuda.stream()
    seen = _spy_launches(monkeypatch)
    with be.use_stream(int(s)) as ext:
        assert int(ext) == int(s)
        err = _run(be, "lstm", rng)
    assert err <= 1e-5
    assert seen and all(int(c[2]) == int(s) for c in seen)
