"""What is particular to backend="cpu" (gpurnn/cpu): its BLAS-step path in both
orientations, no BLAS inside njit, its float32 exp/tanh, torch parity, its contract.

Parity with the oracle for every cell and option (poisoned buffers, lengths, truncation,
layers, directions, dropout, the thread split) is tests/test_conformance.py's, which runs
every backend the same way.
"""
import numpy as np
import pytest

import gpurnn
from gpurnn.backend import get_backend
from gpurnn.cpu import CpuBackend
from helpers import assert_all_close, forward_backward, state_parts

CELLS = {  # cell -> (model class, extra constructor arguments)
    "rnn_tanh": (gpurnn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (gpurnn.RNN, {"nonlinearity": "relu"}),
    "lstm": (gpurnn.LSTM, {}),
    "gru": (gpurnn.GRU, {}),
}
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}
T, B, I, H = 7, 3, 5, 6          # odd, distinct sizes so a transposed index cannot hide


def random_inputs(model, rng, with_state, batch=B):
    dtype, LD, S = model.dtype, model.num_layers * model.num_directions, model.spec.n_states
    out_size = model.num_directions * H

    def states():
        parts = tuple(rng.standard_normal((LD, batch, H)).astype(dtype) for _ in range(S))
        return parts if S == 2 else parts[0]

    return dict(x=rng.standard_normal((T, batch, I)).astype(dtype),
                state=states() if with_state else None,
                dout=rng.standard_normal((T, batch, out_size)).astype(dtype), dstate=states())


@pytest.mark.parametrize("transposed_fwd", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_large_batch_uses_blas_step_path(cell, dtype, transposed_fwd, rng):
    """B > 8 takes the BLAS per-step matmul instead of the small-product loop, in both
    orientations of the forward product (CpuBackend(transposed_forward=...)): the Python
    time loop with NumPy's BLAS per step and one njit call of the fused pass per step."""
    batch = 11   # the small-product loop takes at most 8 rows (gpurnn.cpu.kernels._is_small)
    cls, extra = CELLS[cell]
    ref = cls(I, H, **extra, backend="numpy", dtype=dtype, seed=5)
    cpu = cls(I, H, **extra, backend=CpuBackend(poison=True, transposed_forward=transposed_fwd),
              dtype=dtype, seed=5)
    cpu.load_state_dict(ref.state_dict())
    lengths = rng.integers(1, T + 1, batch)
    inputs = random_inputs(ref, rng, with_state=True, batch=batch)
    results = [forward_backward(model, inputs, lengths, truncate=3) for model in (cpu, ref)]
    assert_all_close(*results, dtype, TOLERANCE[dtype])


@pytest.mark.parametrize("gemm", ["mkl", "openblas"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_per_step_products_by_each_library(cell, gemm, rng):
    """Both per-step product libraries of the "rows" path give the reference's results, and
    the plan says which ran (float32; MKL's packed GEMM is float32 only)."""
    from gpurnn.cpu import mkl
    if gemm == "mkl" and not mkl.status()[0]:
        pytest.skip(f"no MKL here: {mkl.status()[1]}")
    batch = 11
    cls, extra = CELLS[cell]
    ref = cls(I, H, **extra, backend="numpy", dtype="float32", seed=5)
    cpu = cls(I, H, **extra, backend=CpuBackend(poison=True, gemm=gemm), dtype="float32", seed=5)
    cpu.load_state_dict(ref.state_dict())
    lengths = rng.integers(1, T + 1, batch)
    inputs = random_inputs(ref, rng, with_state=True, batch=batch)
    results = [forward_backward(model, inputs, lengths, truncate=3) for model in (cpu, ref)]
    assert_all_close(*results, "float32", TOLERANCE["float32"])
    plan = cpu.last_plans["forward"][0][0]
    assert plan["products"] == gemm and "declined" not in plan
    assert plan.get("loop", "njit") == "njit"


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("batch", [11, 40])
def test_products_in_small_kernel_blocks(cell, batch, rng, monkeypatch):
    """The "rows" products in column blocks (OpenBLAS's small-matrix kernels, chosen where
    its AVX-512 cores run: forced here) give the reference's results, with the blocks in
    the plan; batch 40 at 2 threads makes 20-row parts (a smaller block, or none)."""
    from gpurnn.cpu import openblas
    monkeypatch.setattr(openblas, "small_kernels", lambda: True)
    hidden = 256                   # blocks narrower than G*H, the last one ragged
    cls, extra = CELLS[cell]
    ref = cls(I, hidden, **extra, backend="numpy", dtype="float32", seed=5)
    from gpurnn.cpu.kernels import SplitRules
    cpu = cls(I, hidden, **extra, dtype="float32", seed=5,
              backend=CpuBackend(poison=True, gemm="openblas", threads=2,
                                 split=SplitRules(split_macs=0)))
    cpu.load_state_dict(ref.state_dict())
    lengths = rng.integers(1, T + 1, batch)
    states = lambda: tuple(rng.standard_normal((1, batch, hidden)).astype(np.float32)  # noqa: E731
                           for _ in range(ref.spec.n_states))
    state, dstate = states(), states()
    inputs = dict(x=rng.standard_normal((T, batch, I)).astype(np.float32),
                  state=state if len(state) == 2 else state[0],
                  dout=rng.standard_normal((T, batch, hidden)).astype(np.float32),
                  dstate=dstate if len(dstate) == 2 else dstate[0])
    results = [forward_backward(model, inputs, lengths, truncate=3) for model in (cpu, ref)]
    assert_all_close(*results, "float32", TOLERANCE["float32"])
    plan = cpu.last_plans["forward"][0][0]
    assert plan["split"][:2] == ("rows", 2)
    rows = batch // 2                           # part 0's (kernels.Plan.rows)
    G = cpu.spec.n_gates
    expected = {"forward": openblas.small_block(rows, hidden),
                "backward": openblas.small_block(rows, G * hidden)}
    assert 0 < expected["forward"] < G * hidden and plan["blocks"] == expected


def test_units_gemms_by_rows_where_njit_cannot_call_openblas_is_a_reported_fallback(rng, monkeypatch):
    """A "units" split (B <= 8) whose parts cannot call NumPy's OpenBLAS from njit runs the
    GEMMs around the loop by rows instead, with the reference's results, and says so:
    plan["gemms"] "rows (openblas from njit: ...)", a warning once, FallbackError under
    GPURNN_STRICT=1. A plan that takes the rows path for its inputs (token ids) is no
    fallback: no warning."""
    import warnings
    from gpurnn import contract
    from gpurnn.cpu import openblas
    # the kernels' symbols registered first (a real run without OpenBLAS gets stand-ins from
    # openblas._library); a patched status() alone would leave them unresolved: a segfault
    openblas.status()
    monkeypatch.setattr(openblas, "status", lambda: (False, "no OpenBLAS (test)"))
    monkeypatch.setattr(contract, "_warned", set())
    monkeypatch.delenv("GPURNN_STRICT", raising=False)
    ref = gpurnn.LSTM(I, H, backend="numpy", dtype="float32", seed=5)
    cpu = gpurnn.LSTM(I, H, backend=CpuBackend(poison=True), dtype="float32", seed=5)
    cpu.load_state_dict(ref.state_dict())
    inputs = random_inputs(ref, rng, with_state=True, batch=3)
    with pytest.warns(RuntimeWarning, match="GEMMs around the loop split by rows"):
        results = [forward_backward(model, inputs, None, truncate=None) for model in (cpu, ref)]
    assert_all_close(*results, "float32", TOLERANCE["float32"])
    plan = cpu.last_plans["forward"][0][0]
    assert plan["split"][0] == "units"
    assert plan["gemms"] == "rows (openblas from njit: no OpenBLAS (test))"
    monkeypatch.setattr(contract, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cpu(rng.integers(0, I, (T, 3)))          # token ids: the rows path by design
    assert cpu.last_plans["forward"][0][0]["gemms"].startswith("rows (token ids")
    monkeypatch.setenv("GPURNN_STRICT", "1")
    with pytest.raises(contract.FallbackError, match="GEMMs around the loop"):
        cpu(inputs["x"])


def test_a_numpy_without_openblas_runs_every_split_in_a_fresh_process(tmp_path):
    """Where NumPy's BLAS is not an ILP64 OpenBLAS (conda's MKL, Debian's 32-bit BLAS), the
    kernels still link (openblas registers stand-in symbols; an unresolved one crashed the
    process with a segfault at the first B <= 8 call) and both splits run, saying why."""
    import subprocess
    import sys
    script = tmp_path / "no_openblas.py"
    script.write_text(
        "import warnings, numpy as np\n"
        "from gpurnn.cpu import openblas\n"
        "openblas._find_library = lambda: (None, 'no OpenBLAS (test)', '')\n"
        "import gpurnn\n"
        "warnings.simplefilter('ignore')\n"
        "for B in (3, 11):\n"
        "    m = gpurnn.LSTM(5, 6, backend='cpu', dtype='float32')\n"
        "    out, _ = m(np.random.randn(7, B, 5).astype(np.float32))\n"
        "    m.backward(np.ones_like(out))\n"
        "    p = m.last_plans['forward'][0][0]\n"
        "    print(B, p.get('gemms') or p.get('declined'))\n")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines() == ["3 rows (openblas from njit: no OpenBLAS (test))",
                                       "11 openblas from njit: no OpenBLAS (test)"]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_openblas_loop_in_python_where_njit_cannot_call_it(cell, rng, monkeypatch):
    """Where NumPy's OpenBLAS cannot be called from njit, the "rows" loop runs in Python
    (np.matmul per step) with the reference's results, and says so: plan["loop"] "python",
    the reason in plan["declined"], a warning once, FallbackError under GPURNN_STRICT=1."""
    from gpurnn import contract
    from gpurnn.cpu import openblas
    monkeypatch.setattr(openblas, "status", lambda: (False, "no OpenBLAS (test)"))
    monkeypatch.setattr(contract, "_warned", set())
    monkeypatch.delenv("GPURNN_STRICT", raising=False)
    batch = 11
    cls, extra = CELLS[cell]
    ref = cls(I, H, **extra, backend="numpy", dtype="float32", seed=5)
    cpu = cls(I, H, **extra, backend=CpuBackend(poison=True, gemm="openblas"), dtype="float32",
              seed=5)
    cpu.load_state_dict(ref.state_dict())
    lengths = rng.integers(1, T + 1, batch)
    inputs = random_inputs(ref, rng, with_state=True, batch=batch)
    with pytest.warns(RuntimeWarning, match="Python loop"):
        results = [forward_backward(model, inputs, lengths, truncate=3) for model in (cpu, ref)]
    assert_all_close(*results, "float32", TOLERANCE["float32"])
    plan = cpu.last_plans["forward"][0][0]
    assert plan["loop"] == "python" and plan["declined"] == "openblas from njit: no OpenBLAS (test)"
    monkeypatch.setenv("GPURNN_STRICT", "1")
    with pytest.raises(contract.FallbackError, match="Python loop"):
        cpu(inputs["x"])


def test_mkl_gemm_matches_numpy(rng):
    """mkl.gemm on C-ordered blocks and transposed views (as the backend passes them), and
    the packed product with beta 0 and 1, against NumPy in float64."""
    from gpurnn.cpu import mkl
    if not mkl.status()[0]:
        pytest.skip(f"no MKL here: {mkl.status()[1]}")
    f32 = np.float32
    a, b = rng.standard_normal((13, 7)).astype(f32), rng.standard_normal((7, 5)).astype(f32)
    for x, y in ((a, b), (np.ascontiguousarray(a.T).T, b), (a, np.ascontiguousarray(b.T).T),
                 (a[3:11], b)):
        out = np.full((x.shape[0], 5), np.nan, f32)
        mkl.gemm(x, y, out)
        np.testing.assert_allclose(out, x.astype(float) @ y.astype(float), rtol=1e-5, atol=1e-5)
    w = rng.standard_normal((5, 7)).astype(f32)          # B = w.T (7, 5)
    c = rng.standard_normal((13, 5)).astype(f32)
    for beta in (0.0, 1.0):
        got = c.copy()
        mkl.gemm_packed(a, mkl.pack_weights(w, True, 13), got, beta)
        np.testing.assert_allclose(got, a.astype(float) @ w.T.astype(float) + beta * c,
                                   rtol=1e-5, atol=1e-5)


def test_mkl_declined_is_recorded_and_strict_raises(rng, monkeypatch):
    """No silent fallback: where MKL cannot run, "auto" says why in the plan (and warns
    once); GPURNN_STRICT=1 raises; asking for gemm="mkl" outright is an error; choosing
    OpenBLAS (GPURNN_CPU_GEMM=openblas) is no fallback and warns of nothing."""
    import warnings
    from gpurnn import contract
    from gpurnn.cpu import mkl
    monkeypatch.setattr(mkl, "_library", lambda: (None, "no MKL (test)"))
    monkeypatch.setattr(contract, "_warned", set())
    monkeypatch.delenv("GPURNN_STRICT", raising=False)
    x = rng.standard_normal((T, 11, I)).astype(np.float32)
    model = gpurnn.LSTM(I, H, backend=CpuBackend(), dtype="float32")
    with pytest.warns(RuntimeWarning, match="no MKL"):
        model(x)
    plan = model.last_plans["forward"][0][0]
    assert plan["products"] == "openblas" and plan["declined"] == "mkl: no MKL (test)"
    monkeypatch.setenv("GPURNN_STRICT", "1")
    with pytest.raises(contract.FallbackError, match="no MKL"):
        model(x)
    with pytest.raises(RuntimeError, match="gemm='mkl'"):
        gpurnn.LSTM(I, H, backend=CpuBackend(gemm="mkl"), dtype="float32")(x)
    with pytest.raises(ValueError, match="gemm: expected one of"):
        CpuBackend(gemm="blis")
    monkeypatch.delenv("GPURNN_STRICT")
    monkeypatch.setenv("GPURNN_CPU_GEMM", "openblas")     # the user's choice: no warning
    monkeypatch.setattr(contract, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x)
    plan = model.last_plans["forward"][0][0]
    assert plan == {"split": plan["split"], "pool": plan["pool"], "products": "openblas", "loop": "njit"}


def test_auto_products_follow_the_cpu_vendor(rng, monkeypatch):
    """"auto" runs MKL on Intel CPUs only (elsewhere MKL takes its generic, slower path):
    on another vendor the plan says OpenBLAS was chosen and why, which is no fallback (no
    warning, strict mode runs); gemm="mkl" still runs MKL there."""
    import warnings
    from gpurnn import contract
    from gpurnn.cpu import mkl
    if not mkl.status()[0]:
        pytest.skip(f"no MKL here: {mkl.status()[1]}")
    monkeypatch.setattr(contract, "_warned", set())
    monkeypatch.setenv("GPURNN_STRICT", "1")
    x = rng.standard_normal((T, 11, I)).astype(np.float32)
    plans = {}
    for vendor in ("GenuineIntel", "AuthenticAMD", ""):
        monkeypatch.setattr(mkl, "cpu_vendor", lambda: vendor)
        for gemm in ("auto", "mkl"):
            model = gpurnn.LSTM(I, H, backend=CpuBackend(gemm=gemm), dtype="float32")
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                model(x)
            plans[vendor, gemm] = model.last_plans["forward"][0][0]
    assert plans["GenuineIntel", "auto"]["products"] == "mkl"
    for vendor in ("AuthenticAMD", ""):
        plan = plans[vendor, "auto"]
        assert plan["products"] == "openblas" and "declined" not in plan
        assert plan["chosen"].startswith(f"openblas: CPU vendor {vendor or 'unknown'}")
        assert plans[vendor, "mkl"]["products"] == "mkl"


def test_results_are_bitwise_reproducible(rng):
    """Same inputs, same thread count: the same bits, run after run (the MKL and OpenBLAS
    paths alike; fastmath is limited to FMA contraction)."""
    x = rng.standard_normal((T, 11, I)).astype(np.float32)
    dout = rng.standard_normal((T, 11, H)).astype(np.float32)
    for threads in (1, 2):
        model = gpurnn.LSTM(I, H, backend=CpuBackend(threads=threads), dtype="float32", seed=3)
        runs = []
        for _ in range(3):
            out, _ = model(x)
            dx, _ = model.backward(dout)
            runs.append((out.copy(), dx.copy(), {k: g.copy() for k, g in model.grads.items()}))
            model.zero_grad()
        for out, dx, grads in runs[1:]:
            np.testing.assert_array_equal(out, runs[0][0])
            np.testing.assert_array_equal(dx, runs[0][1])
            for k in grads:
                np.testing.assert_array_equal(grads[k], runs[0][2][k])


def test_no_blas_call_inside_njit():
    """The backend uses one BLAS thread pool, NumPy's: np.dot/np.matmul inside njit would
    call SciPy's bundled OpenBLAS, a second pool that spins against NumPy's (kernels_docs/
    cpu.md, Threading). Every np.dot/matmul in gpurnn/cpu must be in plain Python code."""
    import ast
    import inspect
    import gpurnn.cpu.kernels as kernels
    import gpurnn.cpu.backend as backend
    for module in (kernels, backend):
        tree = ast.parse(inspect.getsource(module))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef):
                continue
            jitted = any("jit" in ast.unparse(d) for d in node.decorator_list)
            for call in ast.walk(node):
                if jitted and isinstance(call, ast.Attribute) and call.attr in ("dot", "matmul", "vdot", "inner"):
                    raise AssertionError(f"{module.__name__}.{node.name} calls np.{call.attr} under njit")


def test_backend_contract():
    be = get_backend("cpu")
    assert isinstance(be, CpuBackend) and be.name == "cpu" and be.xp is np
    assert be.dtypes == ("float32", "float64") and be.is_available()
    assert "cpu" in gpurnn.available_backends()
    x = np.ones((2, 2), np.float32)
    assert be.to_user(be.asarray(x), x) is x


def test_fastmath_accuracy():
    """The float32 exp/tanh that replace libm in the float32 kernels, over their range."""
    import numba
    from gpurnn.cpu.fastmath import exp_f32, tanh_f32

    @numba.njit
    def evaluate(x, exp_out, tanh_out):
        for k in range(x.size):
            exp_out[k] = exp_f32(x[k])
            tanh_out[k] = tanh_f32(x[k])

    x = np.concatenate([np.linspace(-87, 88, 200_001), np.linspace(-1e-3, 1e-3, 2001),
                        [-1e4, -90.0, 0.0, 90.0, 1e4]]).astype(np.float32)
    exp_out, tanh_out = np.empty_like(x), np.empty_like(x)
    evaluate(x, exp_out, tanh_out)
    assert exp_out.dtype == tanh_out.dtype == np.float32
    xd = x.astype(np.float64)
    in_range = (xd > -87.3) & (xd < 88)
    exp_rel = np.abs(exp_out[in_range] - np.exp(xd[in_range])) / np.exp(xd[in_range])
    assert exp_rel.max() < 5e-7                        # a few float32 ulps
    assert np.all(np.isfinite(exp_out)) and np.all(exp_out > 0)   # clamped, never inf or 0
    tanh_err = np.abs(tanh_out - np.tanh(xd)) / np.maximum(np.abs(np.tanh(xd)), 1e-30)
    assert tanh_err.max() < 5e-7
    assert np.all(np.abs(tanh_out) <= 1)


# ---------------------------------------------------------------------------- torch parity
TORCH_CELLS = {"rnn_tanh": "RNN", "rnn_relu": "RNN", "lstm": "LSTM", "gru": "GRU"}


@pytest.mark.parametrize("cell", list(TORCH_CELLS))
def test_matches_torch(cell, rng):
    """The same weights in torch.nn and gpurnn(backend="cpu"): outputs, final state and
    every gradient (torch's autograd of sum(out*dout) + sum(h_n*dh_n) [+ sum(c_n*dc_n)])."""
    torch = pytest.importorskip("torch", reason="torch is not installed: no torch parity check")
    cls, extra = CELLS[cell]
    kw = dict(num_layers=2, bidirectional=True)
    ours = cls(I, H, **extra, **kw, backend="cpu", dtype="float64", seed=3)
    torch_kw = {"nonlinearity": extra["nonlinearity"]} if "nonlinearity" in extra else {}
    theirs = getattr(torch.nn, TORCH_CELLS[cell])(I, H, **torch_kw, **kw).double()
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})

    inputs = random_inputs(ours, rng, with_state=True)
    mine = forward_backward(ours, inputs)

    def tensors(value):   # a state (array or tuple of arrays) as leaf tensors
        return tuple(torch.from_numpy(a).requires_grad_() for a in state_parts(value))

    x = torch.from_numpy(inputs["x"]).requires_grad_()
    state0 = tensors(inputs["state"])
    out, state_n = theirs(x, state0 if len(state0) == 2 else state0[0])
    state_n = state_parts(state_n)
    loss = (out * torch.from_numpy(inputs["dout"])).sum()
    loss = loss + sum((s * torch.from_numpy(d)).sum() for s, d in zip(state_n, state_parts(inputs["dstate"])))
    loss.backward()

    expected = {"out": out.detach().numpy(), "dx": x.grad.numpy()}
    expected.update({f"state_n[{k}]": s.detach().numpy() for k, s in enumerate(state_n)})
    expected["dstate0"] = np.concatenate([s0.grad.numpy() for s0 in state0])
    expected.update({f"grad {k}": p.grad.numpy() for k, p in theirs.named_parameters()})
    assert_all_close(mine, expected, "float64", TOLERANCE["float64"])


def test_need_dx_false_and_token_ids_run_no_dx_gemm(monkeypatch, rng):
    """The dX GEMM (dG_x W_ih) is not run at all for need_dx=False or token ids; token ids
    run no GEMM with X either (the gather and the scatter-add replace them). The GEMMs are
    held to the caller's (plan.gemms "rows"), which the spy on kernels.gemm sees; the
    "parts" ones run inside njit (test_gemms_in_parts_match_the_rows_path)."""
    from gpurnn.cpu import kernels
    calls = []
    real = kernels.gemm
    monkeypatch.setattr(CpuBackend, "_njit_gemms_why", staticmethod(lambda plan: ("test", False)))
    monkeypatch.setattr(kernels, "gemm", lambda a, b, out, *args: (calls.append(out.shape),
                                                                   real(a, b, out, *args)))
    be, spec = CpuBackend(poison=True), gpurnn.cells.get_cell("lstm")
    w_ih, w_hh = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, H))
    dout = rng.standard_normal((T, B, H))
    x, ids = rng.standard_normal((T, B, I)), rng.integers(0, I, (T, B))

    def backward_gemms(x, need_dx):
        tape = be.forward(spec, x, w_ih, w_hh, None, None, (None, None), None)[2]
        calls.clear()
        g = be.backward(tape, dout, (None, None), None, need_dx=need_dx)
        return g, sorted(calls)

    dense, gemms = backward_gemms(x, True)
    assert dense.dx.shape == (T, B, I) and gemms == sorted([(T * B, I), (4 * H, I), (4 * H, H)])
    g, gemms = backward_gemms(x, False)
    assert g.dx is None and gemms == sorted([(4 * H, I), (4 * H, H)])
    g, gemms = backward_gemms(ids, True)
    assert g.dx is None and gemms == [(4 * H, H)]


def test_token_scatter_is_bitwise_the_same_for_any_thread_split(rng):
    """The scatter-add splits by dW_ih rows and sums each element's tokens in row order,
    so 1 and 2 threads (and the gather split by rows) give identical bits. B=7: the "units"
    recurrence, whose njit products are the same bits for any split (OpenBLAS's per-step
    products of a "rows" split are not: they depend on the rows per call)."""
    from gpurnn.cpu.kernels import SplitRules
    ids = rng.integers(0, 4, (9, 7))               # many repeats of 4 ids
    dout = rng.standard_normal((9, 7, H)).astype(np.float32)
    results = []
    for threads in (1, 2):
        split = SplitRules(units_per_part=1, rows_per_part=1, split_macs=0, fit_free_cores=False)
        model = gpurnn.GRU(4, H, backend=CpuBackend(threads=threads, split=split, poison=True),
                           seed=1)
        out, _ = model(ids)
        model.backward(dout)
        assert model.last_plans["backward"][0][0]["split"][1] == threads
        results.append((out, model.grads["weight_ih_l0"].copy()))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
