"""backend="cuda" vs the numpy reference backend: every kernel version x every cell, and
every option (h0/c0, lengths, truncation, no bias, 2 layers, bidirectional, dropout,
batch_first, float64) hit at least once.

Runs in Numba's CUDA simulator on CI (tests/conftest.py) and on a real GPU with
GPURNN_REAL_GPU=1 (benchmarks/gpu_check.sh). The simulator runs one Python thread per CUDA
thread, so shapes are tiny and odd (T<=6, B<=3, H<=7). Every buffer the cuda backend
allocates is filled with NaN first (CudaBackend(poison=True)), so an element a kernel
forgets to write fails the comparison. Tolerance: normwise relative error <= 1e-5 (float32).
"""
import numpy as np
import pytest

import gpurnn
from gpurnn.arrays import to_numpy
from gpurnn.cuda import CudaBackend
from gpurnn.cuda import kernels as K
from helpers import ALL_CELLS, make_model

CELLS = ALL_CELLS
TOL = {"float32": 1e-5, "float64": 1e-11}
gpu = pytest.mark.gpu
skip_sim = pytest.mark.skipif(K.SIMULATOR, reason="multi-block cooperative grid: the simulator"
                              " runs one block per cooperative grid (no inter-block sync)")


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.all(np.isfinite(a)), "NaN/Inf in the cuda result (unwritten poisoned element?)"
    d = np.linalg.norm(b)
    return np.linalg.norm(a - b) / (d if d > 0 else 1.0)


def _pair(cell, I, H, backend, dtype="float32", **kw):
    ref = make_model(cell, I, H, backend="numpy", dtype=dtype, seed=7, **kw)
    dev = make_model(cell, I, H, backend=backend, dtype=dtype, seed=7, **kw)
    dev.load_state_dict(ref.state_dict())
    return ref, dev


def _states(out_state):
    return tuple(out_state) if isinstance(out_state, tuple) else (out_state,)


def check_against_numpy(rng, cell, algo, *, T=5, B=2, I=3, H=5, dtype="float32", state=True,
                        lengths=None, truncate=None, dh_n=True, expect=None, backend=None,
                        **model_kw):
    """Forward + backward on both backends with the same weights and inputs; compares
    out, h_n (c_n), dx, dh0 (dc0) and every weight gradient. Returns the cuda backend."""
    be = backend or CudaBackend(algo=algo, poison=True)
    ref, dev = _pair(cell, I, H, be, dtype, **model_kw)
    L = ref.num_layers * ref.num_directions
    bf = model_kw.get("batch_first", False)
    x = rng.standard_normal((B, T, I) if bf else (T, B, I)).astype(dtype)
    hx = None
    if state:
        h0 = rng.standard_normal((L, B, H)).astype(dtype)
        hx = (h0, rng.standard_normal((L, B, H)).astype(dtype)) if cell == "lstm" else h0
    if model_kw.get("dropout"):
        ref._dropout_rng = np.random.default_rng(99)
        dev._dropout_rng = np.random.default_rng(99)
    out_r, st_r = ref(x, hx, lengths=lengths)
    out_d, st_d = dev(x, hx, lengths=lengths)
    tol = TOL[dtype]
    assert isinstance(out_d, np.ndarray), "NumPy in must give NumPy out"
    assert rel_err(out_d, out_r) <= tol
    for a, b in zip(_states(st_d), _states(st_r)):
        assert isinstance(a, np.ndarray)
        assert rel_err(a, b) <= tol
    dout = rng.standard_normal(out_r.shape).astype(dtype)
    dhn = None
    if dh_n:
        dhn = tuple(rng.standard_normal((L, B, H)).astype(dtype) for _ in _states(st_r))
        dhn = dhn if cell == "lstm" else dhn[0]
    dx_r, dh0_r = ref.backward(dout, dhn, truncate=truncate)
    dx_d, dh0_d = dev.backward(dout, dhn, truncate=truncate)
    assert rel_err(dx_d, dx_r) <= tol
    for a, b in zip(_states(dh0_d), _states(dh0_r)):
        assert rel_err(a, b) <= tol
    for name, g in ref.grads.items():
        assert rel_err(dev.grads[name], g) <= tol, name
    if expect is not None:
        assert be.last_algo == expect
    return be


# --------------------------------------------------------------- every kernel x every cell
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("algo,expect", [("step", "step"), ("persistent", "persistent-1block")])
def test_kernel_cell_h0_lengths_truncation(rng, cell, algo, expect):
    """h0/c0 + dh_n/dc_n, lengths (one row shorter), truncate=2, with bias."""
    check_against_numpy(rng, cell, algo, T=5, B=2, I=3, H=5, lengths=np.array([5, 3]),
                        truncate=2, expect=expect)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cooperative_kernel_forced(rng, cell):
    """The grid-sync (cooperative) persistent kernel, forced; one block in the simulator,
    H blocks of one unit on a GPU."""
    be = CudaBackend(algo="persistent", grid_sync=True, poison=True)
    check_against_numpy(rng, cell, "persistent", T=4, B=2, I=3, H=4, lengths=np.array([2, 4]),
                        truncate=3, backend=be, expect="persistent-grid")


@pytest.mark.parametrize("cell,ks,rb,grid", [("lstm", 2, 2, False), ("gru", 3, 2, True),
                                             ("rnn_tanh", 4, 1, False), ("rnn_relu", 1, 2, False)])
def test_persistent_split_k_and_row_blocking(rng, cell, ks, rb, grid):
    """KS threads per unit's dot product (partial sums reduced in shared memory) and RB
    rows per forward thread (register blocking; B=3 leaves a ragged last group): the GPU
    defaults, which the simulator only runs when asked."""
    be = CudaBackend(algo="persistent", split_k=ks, rows_per_thread=rb, grid_sync=grid,
                     poison=True)
    check_against_numpy(rng, cell, "persistent", T=3, B=3, I=2, H=5,
                        lengths=np.array([3, 2, 1]), truncate=2, backend=be,
                        expect="persistent-grid" if grid else "persistent-1block")
    assert be.last_plan["KS"] == ks                      # the backward's plan
    assert be.last_forward_plan["KS"] == ks and be.last_forward_plan["RB"] == rb


@pytest.mark.parametrize("cell,algo", [("lstm", "step"), ("gru", "persistent"),
                                       ("lstm", "persistent")])
def test_several_shared_tiles(rng, monkeypatch, cell, algo):
    """A tiny staging tile (VT=24 elements) so h_{t-1} and dGh_{t+1} are staged in several
    tiles, as at large H on a GPU (the kernels are rebuilt: VT is part of their key)."""
    monkeypatch.setattr(K, "VT", 24)
    be = CudaBackend(algo=algo, split_k=2 if algo == "persistent" else None,
                     rows_per_thread=2, poison=True)
    check_against_numpy(rng, cell, algo, T=3, B=2, I=2, H=13, lengths=np.array([3, 2]),
                        truncate=2, backend=be,
                        expect="step" if algo == "step" else "persistent-1block")


# --------------------------------------------------------------- options
@pytest.mark.parametrize("cell,algo", [("gru", "step"), ("lstm", "persistent"),
                                       ("rnn_relu", "persistent")])
def test_no_bias_no_state(rng, cell, algo):
    check_against_numpy(rng, cell, algo, T=4, B=3, I=2, H=3, bias=False, state=False,
                        dh_n=False)


@pytest.mark.parametrize("cell,algo", [("lstm", "step"), ("gru", "persistent"),
                                       ("rnn_tanh", "persistent")])
def test_two_layers_bidirectional_dropout_lengths(rng, cell, algo):
    check_against_numpy(rng, cell, algo, T=4, B=2, I=3, H=3, num_layers=2, bidirectional=True,
                        dropout=0.3, lengths=np.array([3, 4]), truncate=2)


def test_batch_first_two_layers(rng):
    check_against_numpy(rng, "rnn_relu", "step", T=3, B=2, I=2, H=3, num_layers=2,
                        batch_first=True)


def test_float64_lstm(rng):
    check_against_numpy(rng, "lstm", "persistent", T=3, B=2, I=2, H=3, dtype="float64",
                        lengths=np.array([3, 2]), truncate=2, expect="persistent-1block")


def test_auto_picks_persistent_when_it_fits_else_step(rng):
    be = CudaBackend(algo="auto", poison=True)
    check_against_numpy(rng, "gru", "auto", T=3, B=2, I=2, H=3, backend=be,
                        expect="persistent-1block")
    assert be._plan(4, 2, 5, 4)[0] == "persistent"
    if K.SIMULATOR:   # 48 KiB budget; the simulator's cooperative grid holds one block
        # LSTM H=64 float32: 4*64*64*4 B = 64 KiB > 48 KiB -> needs 2 blocks of 32 units
        algo, plan = be._plan(4, 2, 64, 4)
        assert algo == "persistent" and plan[1] == 2 and plan[4]
        from gpurnn import reference  # so auto runs the step kernel: check it
        H = 56            # 4*56*56*4 B = 49 KiB > 48 KiB
        x = rng.standard_normal((2, 1, 2)).astype(np.float32)
        w_ih = rng.standard_normal((4 * H, 2)).astype(np.float32)
        w_hh = (rng.standard_normal((4 * H, H)) / H).astype(np.float32)
        got = be.forward("lstm", x, w_ih, w_hh, None, None, None, None, None)
        assert be.last_algo == "step"
        want = reference.forward("lstm", x, w_ih, w_hh)
        for a, b in zip(got[:3], want[:3]):
            assert rel_err(a, b) <= 1e-5


def test_persistent_falls_back_to_step_when_it_cannot_fit():
    be = CudaBackend(algo="persistent")
    assert be._plan(4, 2, 16384, 4) == ("step", None)     # one unit's W_hh column: 256 KiB
    be1 = CudaBackend(algo="persistent", grid_sync=False)
    assert be1._plan(4, 2, 200, 4) == ("step", None)      # needs a grid, grid sync forbidden


def test_bad_algo():
    with pytest.raises(ValueError, match="algo"):
        CudaBackend(algo="fast")


# --------------------------------------------------------------- arrays in, arrays out
def test_device_arrays_stay_on_device(rng):
    from numba import cuda
    be = CudaBackend(algo="step", poison=True)
    ref, dev = _pair("gru", 3, 4, be)
    x = rng.standard_normal((3, 2, 3)).astype(np.float32)
    xd = cuda.to_device(x)
    out_d, h_d = dev(xd)
    out_r, h_r = ref(x)
    for a, b in ((out_d, out_r), (h_d, h_r)):
        assert not isinstance(a, np.ndarray) and hasattr(a, "copy_to_host")
        assert rel_err(to_numpy(a), b) <= 1e-5
    dout = rng.standard_normal(out_r.shape).astype(np.float32)
    dx_d, dh0_d = dev.backward(cuda.to_device(dout))
    dx_r, dh0_r = ref.backward(dout)
    assert hasattr(dx_d, "copy_to_host") and rel_err(to_numpy(dx_d), dx_r) <= 1e-5
    assert rel_err(to_numpy(dh0_d), dh0_r) <= 1e-5


def test_backend_contract_flags():
    be = gpurnn.backend.get_backend("cuda")
    assert be.name == "cuda" and "float32" in be.dtypes
    assert be.is_available()
    assert be.is_auto_candidate() == (not K.SIMULATOR)
    x = np.ones((2, 2), np.float32)
    assert be.to_user(be.asarray(x), x).__class__ is np.ndarray


# --------------------------------------------------------------- real GPU only
@gpu
@skip_sim
@pytest.mark.parametrize("cell", CELLS)
def test_multiblock_persistent_grid(rng, cell):
    """Cooperative grid of 5 blocks (8 units each), grid.sync() between steps."""
    be = CudaBackend(algo="persistent", units_per_block=8, poison=True)
    check_against_numpy(rng, cell, "persistent", T=6, B=3, I=5, H=40, backend=be,
                        lengths=np.array([6, 4, 1]), truncate=4, expect="persistent-grid")


@gpu
@pytest.mark.skipif(K.SIMULATOR, reason="real GPU only: H=300 x B=9 is too slow in the simulator")
def test_step_larger_shapes_real_gpu(rng):
    """Several blocks in both grid dimensions and several shared tiles (H > VT / BY)."""
    check_against_numpy(rng, "lstm", "step", T=7, B=9, I=17, H=300, lengths=np.arange(9) % 7 + 1,
                        truncate=3, expect="step")
