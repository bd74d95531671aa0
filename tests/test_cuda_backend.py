"""backend="cuda" vs the numpy backend: every kernel version x every registered cell (the
kernels are generated from each cell's spec), and every option (state0, lengths,
truncation, no bias, 2 layers, bidirectional, dropout, batch_first, float64) hit at least
once.

The oracle is gpurnn.backend.NumpyBackend: the hand-written gpurnn.reference for the four
torch cells, gpurnn.vectorised (the cell's own function + derived backward, checked
against finite differences in tests/test_cells.py) for the others.

Runs in Numba's CUDA simulator on CI (tests/conftest.py) and on a real GPU with
GPURNN_REAL_GPU=1 (benchmarks/gpu_check.sh). The simulator runs one Python thread per CUDA
thread, so shapes are tiny and odd (T<=6, B<=3, H<=7; H=13 for the multi-tile case).
Every buffer the cuda backend allocates is filled with NaN first (CudaBackend(poison=True)),
so an element a kernel forgets to write fails the comparison. Tolerance: normwise relative
error <= 1e-5 (float32). What ran is read from the plans (tape["plan"], DirectionGrads.plan,
the layer's last_plans), never from the backend object.
"""
import numpy as np
import pytest

import gpurnn
from gpurnn.arrays import to_numpy
from gpurnn.backend import NumpyBackend
from gpurnn.cells import BUILTIN_CELLS, get_cell
from gpurnn.cuda import CudaBackend
from gpurnn.cuda import kernels as K
from helpers import make_model

CELLS = BUILTIN_CELLS           # the shipped cells (other test modules register more)
BUILTIN = ("rnn_tanh", "rnn_relu", "lstm", "gru")
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


def _single(cell):
    """The torch-style classes of RNN / GRU take and return h alone, not a tuple."""
    return get_cell(cell).torch_mode in ("RNN_TANH", "RNN_RELU", "GRU")


def _states(out_state):
    return tuple(out_state) if isinstance(out_state, tuple) else (out_state,)


def _plans(model, which):
    """Every layer-direction's plan of the model's last forward / backward."""
    return [p for layer in model.last_plans[which] for p in layer]


def check_against_numpy(rng, cell, algo, *, T=5, B=2, I=3, H=5, dtype="float32", state=True,
                        lengths=None, truncate=None, dh_n=True, expect=None, backend=None,
                        **model_kw):
    """Forward + backward on both backends with the same weights and inputs; compares
    out, every state_n, dx, every dstate0 and every weight gradient. ``expect``: the
    algorithm every plan must report. Returns the cuda model."""
    be = backend or CudaBackend(algo=algo, poison=True)
    ref, dev = _pair(cell, I, H, be, dtype, **model_kw)
    S = get_cell(cell).n_states
    L = ref.num_layers * ref.num_directions
    bf = model_kw.get("batch_first", False)
    x = rng.standard_normal((B, T, I) if bf else (T, B, I)).astype(dtype)
    hx = None
    if state:   # positive states: some cells (slstm's normaliser) divide by a state
        hx = tuple(rng.uniform(0.1, 1.0, (L, B, H)).astype(dtype) for _ in range(S))
        hx = hx[0] if _single(cell) else hx
    if model_kw.get("dropout"):
        ref._dropout_rng = np.random.default_rng(99)
        dev._dropout_rng = np.random.default_rng(99)
    out_r, st_r = ref(x, hx, lengths=lengths)
    out_d, st_d = dev(x, hx, lengths=lengths)
    tol = TOL[dtype]
    assert isinstance(out_d, np.ndarray), "NumPy in must give NumPy out"
    assert rel_err(out_d, out_r) <= tol
    assert len(_states(st_d)) == S
    for a, b in zip(_states(st_d), _states(st_r)):
        assert isinstance(a, np.ndarray)
        assert rel_err(a, b) <= tol
    dout = rng.standard_normal(out_r.shape).astype(dtype)
    dhn = None
    if dh_n:
        dhn = tuple(rng.standard_normal((L, B, H)).astype(dtype) for _ in range(S))
        dhn = dhn[0] if _single(cell) else dhn
    dx_r, dh0_r = ref.backward(dout, dhn, truncate=truncate)
    dx_d, dh0_d = dev.backward(dout, dhn, truncate=truncate)
    assert rel_err(dx_d, dx_r) <= tol
    assert len(_states(dh0_d)) == S
    # normwise over all S state gradients together: some are zero in exact arithmetic
    # (slstm's stabiliser m does not change the output), so alone they are pure rounding
    assert rel_err(np.stack(_states(dh0_d)), np.stack(_states(dh0_r))) <= tol
    for name, g in ref.grads.items():
        assert rel_err(dev.grads[name], g) <= tol, name
    if expect is not None:
        for p in _plans(dev, "forward") + _plans(dev, "backward"):
            assert p["algorithm"] == expect, p
    return dev


# --------------------------------------------------------------- every kernel x every cell
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("algo,expect", [("step", "step"), ("persistent", "persistent-1block")])
def test_kernel_cell_state0_lengths_truncation(rng, cell, algo, expect):
    """state0 + dstate_n (all S states), lengths (one row shorter), truncate=2, with bias."""
    dev = check_against_numpy(rng, cell, algo, T=5, B=2, I=3, H=5, lengths=np.array([5, 3]),
                              truncate=2, expect=expect)
    for p in _plans(dev, "forward") + _plans(dev, "backward"):
        assert p["requested"] == algo and "declined" not in p


@pytest.mark.parametrize("cell", ["lstm", "gru", "slstm"])
def test_cooperative_kernel_forced(rng, cell):
    """The grid-sync (cooperative) persistent kernel, forced; one block in the simulator,
    H blocks of one unit on a GPU."""
    be = CudaBackend(algo="persistent", grid_sync=True, poison=True)
    check_against_numpy(rng, cell, "persistent", T=4, B=2, I=3, H=4, lengths=np.array([2, 4]),
                        truncate=3, backend=be, expect="persistent-grid")


@pytest.mark.parametrize("cell,ks,rb,jb,grid", [
    ("lstm", 2, 2, 1, False), ("gru", 3, 2, 1, True), ("rnn_tanh", 4, 1, 4, False),
    ("rnn_relu", 1, 2, 2, False), ("mgu", 2, 3, 2, True), ("cifg_lstm", 3, 2, 1, False),
    ("slstm", 2, 2, 1, True)])
def test_persistent_split_k_and_row_blocking(rng, cell, ks, rb, jb, grid):
    """KS threads per unit's dot product (partial sums reduced in shared memory), RB rows
    and JB units per thread (register blocking; B=3 leaves a ragged last row group, H=5 a
    ragged last unit group): the GPU defaults, which the simulator only runs when asked."""
    be = CudaBackend(algo="persistent", split_k=ks, rows_per_thread=rb, units_per_thread=jb,
                     grid_sync=grid, poison=True)
    dev = check_against_numpy(rng, cell, "persistent", T=3, B=3, I=2, H=5,
                              lengths=np.array([3, 2, 1]), truncate=2, backend=be,
                              expect="persistent-grid" if grid else "persistent-1block")
    (fwd,), (bwd,) = _plans(dev, "forward"), _plans(dev, "backward")
    assert fwd["KS"] == ks and fwd["RB"] == rb and fwd["JB"] == jb and bwd["KS"] == ks


@pytest.mark.parametrize("cell,algo", [("lstm", "step"), ("gru", "persistent"),
                                       ("lstm", "persistent"), ("slstm", "persistent"),
                                       ("mgu", "step")])
def test_several_shared_tiles(rng, monkeypatch, cell, algo):
    """A tiny staging tile (VT=24 elements) so h_{t-1} and dGh_{t+1} are staged in several
    tiles, as at large H on a GPU (the kernels are rebuilt: VT is part of their key)."""
    monkeypatch.setattr(K, "VT", 24)
    monkeypatch.setattr(K, "PERSIST_VT", 24)
    be = CudaBackend(algo=algo, split_k=2 if algo == "persistent" else None,
                     rows_per_thread=2, poison=True)
    check_against_numpy(rng, cell, algo, T=3, B=2, I=2, H=13, lengths=np.array([3, 2]),
                        truncate=2, backend=be,
                        expect="step" if algo == "step" else "persistent-1block")


# --------------------------------------------------------------- options
@pytest.mark.parametrize("cell,algo", [("gru", "step"), ("lstm", "persistent"),
                                       ("rnn_relu", "persistent"), ("cifg_lstm", "step"),
                                       ("slstm", "persistent")])
def test_no_bias_no_state(rng, cell, algo):
    check_against_numpy(rng, cell, algo, T=4, B=3, I=2, H=3, bias=False, state=False,
                        dh_n=False)


@pytest.mark.parametrize("cell,algo", [("lstm", "step"), ("gru", "persistent"),
                                       ("rnn_tanh", "persistent"), ("mgu", "step")])
def test_two_layers_bidirectional_dropout_lengths(rng, cell, algo):
    check_against_numpy(rng, cell, algo, T=4, B=2, I=3, H=3, num_layers=2, bidirectional=True,
                        dropout=0.3, lengths=np.array([3, 4]), truncate=2)


def test_batch_first_two_layers(rng):
    check_against_numpy(rng, "rnn_relu", "step", T=3, B=2, I=2, H=3, num_layers=2,
                        batch_first=True)


@pytest.mark.parametrize("cell,algo,expect", [("lstm", "persistent", "persistent-1block"),
                                              ("gru", "step", "step"),
                                              ("slstm", "step", "step"),
                                              ("cifg_lstm", "persistent", "persistent-1block")])
def test_float64(rng, cell, algo, expect):
    check_against_numpy(rng, cell, algo, T=3, B=2, I=2, H=3, dtype="float64",
                        lengths=np.array([3, 2]), truncate=2, expect=expect)


# --------------------------------------------------------------- plans and fallbacks
def _direct(rng, be, cell, T, B, I, H, dtype="float32"):
    """One forward + backward straight through the backend contract, against NumpyBackend."""
    spec = get_cell(cell)
    G, S = spec.n_gates, spec.n_states
    x = rng.standard_normal((T, B, I)).astype(dtype)
    w_ih = rng.standard_normal((G * H, I)).astype(dtype)
    w_hh = (rng.standard_normal((G * H, H)) / H).astype(dtype)
    args = (spec, x, w_ih, w_hh, None, None, (None,) * S, None)
    got, want = be.forward(*args), NumpyBackend().forward(*args)
    for a, b in zip((got[0],) + got[1], (want[0],) + want[1]):
        assert rel_err(a, b) <= 1e-5
    dout = rng.standard_normal(got[0].shape).astype(dtype)
    g = be.backward(got[2], dout, None, None)
    r = NumpyBackend().backward(want[2], dout, (None,) * S, None)
    for a, b in ((g.dx, r.dx), (g.dw_hh, r.dw_hh), (g.dw_ih, r.dw_ih),
                 (np.stack(g.dstate0), np.stack(r.dstate0))):   # stacked: see check_against_numpy
        assert rel_err(a, b) <= 1e-5
    return got[2]["plan"], g.plan


def test_auto_picks_persistent_when_it_fits_else_step(rng):
    be = CudaBackend(algo="auto", poison=True)
    check_against_numpy(rng, "gru", "auto", T=3, B=2, I=2, H=3, backend=be,
                        expect="persistent-1block")
    assert be._plan(4, 2, 5, 4)[0] == "persistent"
    if K.SIMULATOR:   # 48 KiB budget; the simulator's cooperative grid holds one block
        # LSTM H=64 float32: 4*64*64*4 B = 64 KiB > 48 KiB -> needs 2 blocks of 32 units
        algo, plan = be._plan(4, 2, 64, 4)
        assert algo == "persistent" and plan["blocks"] == 2 and plan["grid"]
        # H=56: 4*56*57*4 B = 50 KiB > 48 KiB -> 2 blocks, which cannot be co-resident
        # here: the step kernel runs and the plan says why
        fwd, bwd = _direct(rng, be, "lstm", T=1, B=2, I=2, H=56)
        for p in (fwd, bwd):
            assert p["algorithm"] == "step" and p["requested"] == "auto"
            assert "co-resident" in p["declined"], p


def test_persistent_declines_with_a_reason_when_it_cannot_fit(rng):
    be = CudaBackend(algo="persistent")
    algo, why = be._plan(4, 2, 16384, 4)          # one unit's W_hh column: 256 KiB
    assert algo == "step" and "budget" in why
    be1 = CudaBackend(algo="persistent", grid_sync=False)
    algo, why = be1._plan(4, 2, 200, 4)           # needs a grid, grid sync forbidden
    assert algo == "step" and "grid_sync=False" in why
    assert CudaBackend(algo="step")._plan(4, 2, 5, 4) == ("step", None)
    # end to end: the declined reason reaches the plans; a custom cell with 4 states
    fwd, bwd = _direct(rng, CudaBackend(algo="persistent", grid_sync=False,
                                        units_per_block=2, poison=True), "slstm", 2, 1, 2, 3)
    for p in (fwd, bwd):
        assert p["algorithm"] == "step" and "grid_sync=False" in p["declined"]


def test_real_errors_raise_instead_of_falling_back(rng, monkeypatch):
    """No silent fallback: an error inside the persistent path propagates."""
    def broken(*args, **kw):
        raise RuntimeError("kernel factory exploded")
    monkeypatch.setattr(K, "fwd_persist_kernel", broken)
    be = CudaBackend(algo="persistent", poison=True)
    with pytest.raises(RuntimeError, match="exploded"):
        _direct(rng, be, "gru", 2, 1, 2, 3)


def test_no_per_call_state_on_the_backend(rng):
    be = CudaBackend(algo="step", poison=True)
    fwd, bwd = _direct(rng, be, "mgu", 2, 2, 2, 3)
    assert fwd["algorithm"] == bwd["algorithm"] == "step"
    for attr in ("last_algo", "last_plan", "last_forward_plan"):
        assert not hasattr(be, attr)


def test_wrong_number_of_states():
    be = CudaBackend(algo="step")
    spec = get_cell("lstm")
    x = np.zeros((2, 1, 2), np.float32)
    w_ih, w_hh = np.zeros((8, 2), np.float32), np.zeros((8, 2), np.float32)
    with pytest.raises(ValueError, match="state0"):
        be.forward(spec, x, w_ih, w_hh, None, None, (None,), None)


def test_bad_algo():
    with pytest.raises(ValueError, match="algo"):
        CudaBackend(algo="fast")


def test_unit_source_is_generated_per_cell():
    """One line per gate / state / save of the cell: the fixed 4-slot layout is gone."""
    for name in CELLS:
        spec = get_cell(name)
        src = K.unit_source(spec)
        assert src.count("= gx[gb +") == spec.n_gates
        assert src.count("    act[sa +") == spec.n_saves
        assert src.count("= dreg[rd + ") == 2 * spec.n_states - 1   # ds0 copies, d1..d{S-1}
    assert "dgx[" not in K.unit_source(get_cell("lstm"))       # all tied: dgx is dgh


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
@pytest.mark.parametrize("cell", ["lstm", "slstm"])
def test_step_larger_shapes_real_gpu(rng, cell):
    """Several blocks in both grid dimensions and several shared tiles (H > VT / BY)."""
    check_against_numpy(rng, cell, "step", T=7, B=9, I=17, H=300, lengths=np.arange(9) % 7 + 1,
                        truncate=3, expect="step")


@gpu
@pytest.mark.skipif(K.SIMULATOR, reason="real GPU only")
@pytest.mark.parametrize("cell", CELLS)
def test_auto_default_real_gpu(rng, cell):
    """The GPU defaults (KS up to 32, RB=4, the opt-in shared memory) for every cell."""
    check_against_numpy(rng, cell, "auto", T=6, B=5, I=7, H=64, lengths=np.array([6, 5, 3, 2, 1]),
                        truncate=4)


# --------------------------------------------------------------- no silent fallback
def test_fallback_warns_once_and_records_the_reason(rng, monkeypatch):
    import warnings
    from gpurnn import contract
    monkeypatch.delenv("GPURNN_STRICT", raising=False)
    monkeypatch.setattr(contract, "_warned", set())
    be = CudaBackend(algo="persistent", grid_sync=False, units_per_block=2, poison=True)
    with pytest.warns(RuntimeWarning, match="grid_sync=False"):
        fwd, bwd = _direct(rng, be, "gru", 2, 1, 2, 3)
    for p in (fwd, bwd):
        assert p["algorithm"] == "step" and "grid_sync=False" in p["declined"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # the same reason again: no second warning
        _direct(rng, be, "gru", 2, 1, 2, 3)


def test_strict_mode_raises_instead_of_falling_back(rng, monkeypatch):
    from gpurnn.cuda import backend as cb
    monkeypatch.setenv("GPURNN_STRICT", "1")
    be = CudaBackend(algo="persistent", grid_sync=False, units_per_block=2, poison=True)
    with pytest.raises(cb.FallbackError, match="GPURNN_STRICT"):
        _direct(rng, be, "gru", 2, 1, 2, 3)
    # nothing to fall back from: strict mode changes nothing
    fwd, bwd = _direct(rng, CudaBackend(algo="step", poison=True), "gru", 2, 1, 2, 3)
    assert fwd["algorithm"] == bwd["algorithm"] == "step"


def test_bank_strides_are_conflict_free_where_padding_allows():
    from gpurnn.cuda.backend import _bank_stride
    # W rows of 2 units x 16 split-K lanes per warp: stride = 16 (mod 32)
    s = _bank_stride(4 * 768, 16, 6, 4, 1, 1)
    assert s >= 4 * 768 and s % 32 == 16
    assert _bank_stride(100, 1, 1, 1, 1, 0) == 100


@gpu
@pytest.mark.skipif(K.SIMULATOR, reason="real GPU only: > 48 KB of dynamic shared memory")
def test_lstm_h768_persistent_grid_over_48k_shared(rng, monkeypatch):
    """LSTM B=16 H=768 T=8: the cooperative persistent plan with > 48 KB of dynamic shared
    memory (the opt-in), gradients equal to the reference; strict: no fallback allowed."""
    monkeypatch.setenv("GPURNN_STRICT", "1")
    be = CudaBackend(algo="persistent", poison=True)
    dev = check_against_numpy(rng, "lstm", "persistent", T=8, B=16, I=32, H=768, backend=be,
                              expect="persistent-grid")
    for p in _plans(dev, "forward") + _plans(dev, "backward"):
        assert p["smem"] > 48 * 1024, p


@pytest.mark.parametrize("cell,uf,jb", [("lstm", 2, 2), ("gru", 3, 2), ("rnn_tanh", 3, 4)])
def test_unrolled_dot_loops(rng, monkeypatch, cell, uf, jb):
    """The GPU build unrolls the persistent dot-product loops UF = 8 times with a guarded
    tail (kernels.dot_source) and stages SU = 8 rows per pass (kernels.stage_source);
    here UF = SU = 2 / 3 with split-K 2 and a tile cut, so the unrolled steps, the tail,
    the ragged staging passes and several tiles all run against the reference; JB units
    per thread in both directions (rnn_tanh: the GPU's forward blocking, JB = 4, H = 7 a
    ragged unit group)."""
    monkeypatch.setattr(K, "UF", uf)
    monkeypatch.setattr(K, "SU", uf)          # stage(): rows per pass, ragged last pass
    monkeypatch.setattr(K, "VT", 24)
    monkeypatch.setattr(K, "PERSIST_VT", 24)
    be = CudaBackend(algo="persistent", split_k=2, rows_per_thread=2, units_per_thread=jb,
                     poison=True)
    dev = check_against_numpy(rng, cell, "persistent", T=3, B=3, I=2, H=7,
                              lengths=np.array([3, 2, 1]), truncate=2, backend=be,
                              expect="persistent-1block")
    for p in _plans(dev, "forward") + _plans(dev, "backward"):
        assert p["JB"] == jb and p["RB"] == 2


def test_dot_source_is_unrolled_straight_line():
    src = K.dot_source(4, 4, 4, 8, lambda g, r: r * 4 + g)
    assert src.count("+=") == 64 and "for " not in src and "while" not in src


# --------------------------------------------------------------- auto by measurement
def test_autotune_cache_with_a_fake_timer(tmp_path):
    from gpurnn.cuda.autotune import AutoTuner, shape_class
    calls = []
    cost = {"step": 3.0, "persistent": 1.0}

    def timer(fn):
        calls.append(fn())
        return cost[calls[-1]]

    path = str(tmp_path / "auto.json")
    key = shape_class("lstm", 16, 768, "float32", "H200")
    assert key == shape_class("lstm", 9, 513, "float32", "H200")      # one shape class
    cands = {"step": lambda: "step", "persistent": lambda: "persistent"}
    tu = AutoTuner(path, timer)
    assert tu.choose(key, cands) == "persistent" and len(calls) == 2
    assert tu.choose(key, cands) == "persistent" and len(calls) == 2     # cached
    # a new process (new tuner) reads the winner from disk: no timing
    assert AutoTuner(path, timer).choose(key, cands) == "persistent" and len(calls) == 2
    # another class is timed once; the step kernel can win
    cost.update(step=0.5)
    key2 = shape_class("gru", 2, 64, "float32", "H200")
    assert tu.choose(key2, cands) == "step" and len(calls) == 4
    # no timer (simulator): unknown keys -> None (static rule), known ones still answered
    assert AutoTuner(path).choose(shape_class("mgu", 1, 8, "float64"), cands) is None
    assert AutoTuner(path).choose(key2, cands) == "step"
    # a corrupt cache file is ignored and rewritten
    open(path, "w").write("{not json")
    cost.update(step=3.0)
    assert AutoTuner(path, timer).choose(key, cands) == "persistent"
    assert AutoTuner(path).cached(key) == "persistent"


def test_auto_uses_the_static_rule_in_the_simulator(rng):
    be = CudaBackend(algo="auto", poison=True)
    if K.SIMULATOR:
        assert be._tuner is None
    fwd, bwd = _direct(rng, be, "gru", 2, 1, 2, 3)
    assert fwd["algorithm"].startswith("persistent") or "auto" in fwd
