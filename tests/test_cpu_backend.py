"""backend="cpu" (gpurnn/cpu) against the NumPy reference and against torch.nn.

Every buffer the CPU kernels must write is NaN before they run (CpuBackend(poison=True)),
so an element a kernel forgets to write fails the comparison instead of passing by luck.
"""
import numpy as np
import pytest

import gpurnn
from gpurnn.backend import get_backend
from gpurnn.cpu import CpuBackend

CELLS = {  # cell -> (model class, extra constructor arguments)
    "rnn_tanh": (gpurnn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (gpurnn.RNN, {"nonlinearity": "relu"}),
    "lstm": (gpurnn.LSTM, {}),
    "gru": (gpurnn.GRU, {}),
}
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}
T, B, I, H = 7, 3, 5, 6          # odd, distinct sizes so a transposed index cannot hide
LENGTHS = np.array([7, 2, 5])    # full, short and middle rows

# option name -> (constructor kwargs, run kwargs)
OPTIONS = {
    "plain": ({}, {}),
    "initial_state": ({}, {"state": True}),
    "lengths": ({}, {"lengths": LENGTHS}),
    "truncate": ({}, {"truncate": 3}),
    "no_bias": ({"bias": False}, {}),
    "two_layers": ({"num_layers": 2}, {}),
    "bidirectional": ({"bidirectional": True}, {}),
    "dropout": ({"num_layers": 2, "dropout": 0.4}, {}),
    "everything": ({"num_layers": 2, "bidirectional": True, "dropout": 0.3, "batch_first": True},
                   {"state": True, "lengths": LENGTHS, "truncate": 2}),
}


def state_parts(state):
    return state if isinstance(state, tuple) else (state,)


def rel_err(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    norm = np.linalg.norm(expected)
    return np.linalg.norm(actual - expected) / (norm if norm > 0 else 1.0)


def make_pair(cell, dtype, seed=7, **kwargs):
    """(reference model, cpu model) with identical weights and dropout streams."""
    cls, extra = CELLS[cell]
    ref = cls(I, H, **extra, **kwargs, backend="numpy", dtype=dtype, seed=seed)
    cpu = cls(I, H, **extra, **kwargs, backend=CpuBackend(poison=True), dtype=dtype, seed=seed)
    cpu.load_state_dict(ref.state_dict())
    return ref, cpu


def random_inputs(model, rng, with_state):
    dtype, LD = model.dtype, model.num_layers * model.num_directions
    x_shape = (B, T, I) if model.batch_first else (T, B, I)
    out_shape = (B, T, model.num_directions * H) if model.batch_first else (T, B, model.num_directions * H)
    n_states = model.spec.n_states

    def states():
        parts = tuple(rng.standard_normal((LD, B, H)).astype(dtype) for _ in range(n_states))
        return parts if n_states == 2 else parts[0]

    return dict(x=rng.standard_normal(x_shape).astype(dtype),
                state=states() if with_state else None,
                dout=rng.standard_normal(out_shape).astype(dtype),
                dstate=states())


def run(model, inputs, lengths=None, truncate=None):
    """Forward and backward; every array the user can see, by name."""
    out, state = model(inputs["x"], inputs["state"], lengths=lengths)
    dx, dstate0 = model.backward(inputs["dout"], inputs["dstate"], truncate=truncate)
    results = {"out": out, "dx": dx}
    for name, value in (("state_n", state), ("dstate0", dstate0)):
        for k, part in enumerate(state_parts(value)):
            results[f"{name}[{k}]"] = part
    results.update({f"grad {k}": g.copy() for k, g in model.grads.items()})   # grads accumulate in place
    return results


def assert_close(actual, expected, dtype):
    assert actual.keys() == expected.keys()
    for name in expected:
        a = np.asarray(actual[name])
        assert a.dtype == np.dtype(dtype), f"{name}: dtype {a.dtype}, expected {dtype}"
        assert a.shape == np.shape(expected[name]), name
        assert np.all(np.isfinite(a)), f"{name}: non-finite values (a buffer left unwritten?)"
        err = rel_err(a, expected[name])
        assert err <= TOLERANCE[dtype], f"{name}: normwise relative error {err:.3g}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("cell", list(CELLS))
def test_matches_reference(cell, option, dtype, rng):
    ctor, run_kw = OPTIONS[option]
    ref, cpu = make_pair(cell, dtype, **ctor)
    inputs = random_inputs(ref, rng, run_kw.get("state", False))
    kw = dict(lengths=run_kw.get("lengths"), truncate=run_kw.get("truncate"))
    assert_close(run(cpu, inputs, **kw), run(ref, inputs, **kw), dtype)


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
    x = rng.standard_normal((T, batch, I)).astype(dtype)
    dout = rng.standard_normal((T, batch, H)).astype(dtype)
    results = []
    for model in (cpu, ref):
        out, _ = model(x, lengths=lengths)
        dx, _ = model.backward(dout, truncate=3)
        results.append({"out": out, "dx": dx, **{k: g.copy() for k, g in model.grads.items()}})
    assert_close(*results, dtype)


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


@pytest.mark.parametrize("cell", list(CELLS))
def test_repeated_backward_accumulates_and_keeps_tape(cell, rng):
    """backward must not consume its tape: two calls give exactly twice the gradients."""
    _, cpu = make_pair(cell, "float64")
    inputs = random_inputs(cpu, rng, with_state=True)
    first = run(cpu, inputs, lengths=LENGTHS)
    dx_again, _ = cpu.backward(inputs["dout"], inputs["dstate"])
    np.testing.assert_array_equal(dx_again, first["dx"])
    for name, g in cpu.grads.items():
        np.testing.assert_allclose(g, 2 * first[f"grad {name}"], rtol=1e-14, atol=0)


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
    mine = run(ours, inputs)

    def tensors(value):   # a state (array or tuple of arrays) as leaf tensors
        parts = value if isinstance(value, tuple) else (value,)
        return tuple(torch.from_numpy(a).requires_grad_() for a in parts)

    x = torch.from_numpy(inputs["x"]).requires_grad_()
    state0 = tensors(inputs["state"])
    out, state_n = theirs(x, state0 if len(state0) == 2 else state0[0])
    state_n = state_n if isinstance(state_n, tuple) else (state_n,)
    loss = (out * torch.from_numpy(inputs["dout"])).sum()
    loss = loss + sum((s * torch.from_numpy(d)).sum() for s, d in zip(state_n, state_parts(inputs["dstate"])))
    loss.backward()

    expected = {"out": out.detach().numpy(), "dx": x.grad.numpy()}
    for k, (s, s0) in enumerate(zip(state_n, state0)):
        expected[f"state_n[{k}]"] = s.detach().numpy()
        expected[f"dstate0[{k}]"] = s0.grad.numpy()
    expected.update({f"grad {k}": p.grad.numpy() for k, p in theirs.named_parameters()})
    assert_close(mine, expected, "float64")
