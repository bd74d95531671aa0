"""Cells defined once: define_cell's checks, the derived backward, and a user's cell on every
backend against an independent PyTorch autograd implementation of the same recurrence."""
import math
import warnings

import numpy as np
import pytest

import gpurnn
from gpurnn import ops
from gpurnn.backend import NumpyBackend
from helpers import EVERY_CELL, numeric_grad, rel_err


# ----------------------------------------------------------------------------- definition
def _refused(fn, gates=("a",), states=("h",), name="bad"):
    with pytest.raises(gpurnn.CellDefinitionError) as info:
        gpurnn.define_cell(name, gates, states, fn)
    assert repr(name) in str(info.value)           # the message names the cell
    return str(info.value)


def test_branch_on_a_value_is_refused():
    def relu_by_hand(xg, hg, state):
        a = xg[0] + hg[0]
        return (a if a > 0 else 0.0 * a,)
    assert "'>'" in _refused(relu_by_hand) and "ops.maximum" in _refused(relu_by_hand)


@pytest.mark.parametrize("body, names", [
    (lambda xg, hg, s: (math.exp(xg[0]),), "conversion to float"),
    (lambda xg, hg, s: (np.exp(xg[0]),), "numpy.exp"),
    (lambda xg, hg, s: (np.tanh(xg[0] + hg[0]),), "numpy.tanh"),
    (lambda xg, hg, s: (abs(xg[0]),), "abs()"),
    (lambda xg, hg, s: (xg[0].exp(),), "attribute .exp"),
    (lambda xg, hg, s: (xg[0] ** 0.5,), "constant integer exponents"),
    (lambda xg, hg, s: (xg[3],), "xg[3], but gates= names 1 gate"),
    (lambda xg, hg, s: (xg[0] * "2",), "constant of type str"),
    (lambda xg, hg, s: (ops.maximum(xg[0]),), "ops.maximum with 1 arguments"),
    (lambda xg, hg, s: (xg[0], hg[0]), "returned 2 state(s)"),
    (lambda xg, hg, s: xg[0], "must return a tuple"),
    (lambda xg, hg, s: (1 / 0,), "ZeroDivisionError"),
])
def test_anything_but_ops_arithmetic_and_constants_is_refused(body, names):
    assert names in _refused(body)


def test_bad_names_are_refused():
    ok = lambda xg, hg, s: (ops.tanh(xg[0] + hg[0]),)       # noqa: E731
    with pytest.raises(gpurnn.CellDefinitionError, match="gates= must be a non-empty tuple"):
        gpurnn.define_cell("c", "a", ("h",), ok)
    with pytest.raises(gpurnn.CellDefinitionError, match="repeated names"):
        gpurnn.define_cell("c", ("a", "a"), ("h",), ok)
    with pytest.raises(gpurnn.CellDefinitionError, match="name must be an identifier"):
        gpurnn.define_cell("no spaces", ("a",), ("h",), ok)
    with pytest.raises(gpurnn.CellDefinitionError, match="forward= must be a function"):
        gpurnn.define_cell("c", ("a",), ("h",), None)


def test_builtins_save_what_the_hand_written_kernels_saved():
    """The save rule reproduces the hand-written choice (kernels_docs/cells.md)."""
    cells = gpurnn.cells.CELLS
    assert cells["rnn_tanh"].n_saves == cells["rnn_relu"].n_saves == 0     # h alone suffices
    assert cells["lstm"].n_saves == 4 and cells["lstm"].all_tied            # i, f, g, o
    assert cells["gru"].n_saves == 4 and cells["gru"].tied == (True, True, False)   # r, z, n, hg_n
    assert "hg[2]" in cells["gru"].saves
    assert cells["slstm"].n_states == 4 and cells["mgu"].tied == (True, False)


def test_every_builtin_is_registered_through_the_public_path():
    assert set(gpurnn.cells.names()) >= {"rnn_tanh", "rnn_relu", "lstm", "gru", "mgu",
                                         "cifg_lstm", "slstm"}
    for name in gpurnn.cells.names():
        spec = gpurnn.cells.get_cell(name)
        assert isinstance(spec, gpurnn.CellSpec) and spec.name == name


def test_redefining_with_a_different_forward_warns_and_replaces():
    f1 = lambda xg, hg, s: (ops.tanh(xg[0] + hg[0]),)        # noqa: E731
    f2 = lambda xg, hg, s: (ops.sigmoid(xg[0] + hg[0]),)     # noqa: E731
    gpurnn.define_cell("redefined_cell", ("a",), ("h",), f1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gpurnn.define_cell("redefined_cell", ("a",), ("h",), f1)   # the same: silent
    with pytest.warns(UserWarning, match="redefined"):
        spec = gpurnn.define_cell("redefined_cell", ("a",), ("h",), f2)
    assert gpurnn.cells.get_cell("redefined_cell") is spec


def test_generated_code_is_straight_line_and_typed_per_dtype():
    src = gpurnn.cells.CELLS["lstm"].source()
    assert "def forward(" in src and "def backward(" in src
    assert "if " not in src and "for " not in src
    assert not any(ch.isdigit() and "." in tok for tok in src.split() for ch in tok[:1])  # no float literals
    fwd32, _ = gpurnn.cells.CELLS["lstm"].numpy_functions("float32")
    args = [np.ones(3, np.float32)] * 10
    assert all(np.asarray(v).dtype == np.float32 for v in fwd32(*args))


# ----------------------------------------------------------------------------- expert backward
def _mgu(xg, hg, state):
    (h,) = state
    f = ops.sigmoid(xg[0] + hg[0])
    n = ops.tanh(xg[1] + f * hg[1])
    return ((1.0 - f) * h + f * n,)


def _mgu_backward(xg, hg, state, dstate, wrong=False):
    (h,), (dh,) = state, dstate
    f = ops.sigmoid(xg[0] + hg[0])
    n = ops.tanh(xg[1] + f * hg[1])
    dn = dh * f * (1.0 - n * n)
    df = dh * (n - h) + dn * hg[1]
    da_f = df * f * (1.0 - f) * (2.0 if wrong else 1.0)
    return (da_f, dn), (da_f, dn * f), (dh * (1.0 - f),)


def test_expert_backward_is_checked_and_used():
    spec = gpurnn.define_cell("mgu_expert", ("f", "n"), ("h",), _mgu, backward=_mgu_backward)
    assert spec.expert_backward is _mgu_backward
    with pytest.raises(gpurnn.CellDefinitionError, match=r"disagrees with the derived backward in dxg\[0\]"):
        gpurnn.define_cell("mgu_expert_wrong", ("f", "n"), ("h",), _mgu,
                           backward=lambda *a: _mgu_backward(*a, wrong=True))
    with pytest.raises(gpurnn.CellDefinitionError, match="backward returned"):
        gpurnn.define_cell("mgu_expert_short", ("f", "n"), ("h",), _mgu,
                           backward=lambda xg, hg, s, d: ((d[0],), (d[0],), (d[0],)))


# ----------------------------------------------------------------------------- oracle checks
def _loss_setup(model, rng, T=5, B=3, lengths=True):
    D, S, H = model.num_directions, model.spec.n_states, model.hidden_size
    LD = model.num_layers * D
    x = rng.standard_normal((T, B, model.input_size))
    state0 = tuple(rng.uniform(0.1, 1.0, (LD, B, H)) for _ in range(S))
    w_out = rng.standard_normal((T, B, D * H))
    w_state = tuple(rng.standard_normal((LD, B, H)) for _ in range(S))
    lens = np.array([T] + list(rng.integers(1, T + 1, B - 1))) if lengths else None
    return x, state0, lens, w_out, w_state


@pytest.mark.parametrize("cell", EVERY_CELL)
def test_vectorised_backward_matches_finite_differences(cell, rng):
    """The numpy backend's generic path (the cell's own forward + the derived backward),
    float64, 2 layers, bidirectional, lengths, initial state: gradients of every input,
    state and weight against central differences."""
    model = gpurnn.Recurrent(cell, 3, 4, num_layers=2, bidirectional=True,
                             backend=NumpyBackend(vectorised=True), dtype="float64", seed=3)
    x, state0, lengths, w_out, w_state = _loss_setup(model, rng)

    def loss():
        out, state_n = model(x, state0, lengths)
        return float((out * w_out).sum() + sum((s * w).sum() for s, w in zip(state_n, w_state)))

    loss()
    model.zero_grad()
    dx, dstate0 = model.backward(w_out, w_state)
    assert rel_err(dx, numeric_grad(loss, x)) <= 1e-6
    for d, s in zip(dstate0, state0):
        assert rel_err(d, numeric_grad(loss, s)) <= 1e-6
    for name, p in model.parameters().items():
        assert rel_err(model.grads[name], numeric_grad(loss, p)) <= 1e-6, name


@pytest.mark.parametrize("truncate", [None, 2])
@pytest.mark.parametrize("cell", gpurnn.cells.TORCH_CELLS)
def test_vectorised_path_equals_the_hand_written_reference(cell, truncate, rng):
    """For torch's four cells the generic path (derived backward) equals the independent
    hand-written reference, truncation included."""
    kw = dict(num_layers=2, bidirectional=True, dtype="float64", seed=5)
    ref = gpurnn.Recurrent(cell, 3, 4, backend=NumpyBackend(), **kw)
    gen = gpurnn.Recurrent(cell, 3, 4, backend=NumpyBackend(vectorised=True), **kw)
    x, state0, lengths, w_out, w_state = _loss_setup(ref, rng, T=6)
    results = []
    for m in (ref, gen):
        out, state_n = m(x, state0, lengths)
        dx, dstate0 = m.backward(w_out, w_state, truncate=truncate)
        results.append([out, *state_n, dx, *dstate0, *m.grads.values()])
    assert ref.last_plans["forward"][0][0]["path"] == "numpy-reference"
    assert gen.last_plans["forward"][0][0]["path"] == "numpy-vectorised"
    for a, b in zip(*results):
        assert rel_err(a, b) <= 1e-12


# ----------------------------------------------------------------------------- a user's cell
# "Written by someone else": a two-state cell using most ops, in the contract's form.
def leaky_gated(xg, hg, state):
    h, m = state
    g = ops.sigmoid(xg[0] + hg[0])
    u = ops.softplus(xg[1] + hg[1])
    cand = ops.tanh(xg[2] + g * hg[2]) + 0.1 * ops.relu(xg[2] - hg[2])
    m_new = ops.maximum(0.5 * m, ops.minimum(u, 3.0)) + ops.log(1.0 + ops.exp(-u))
    h_new = (1.0 - g) * h + g * cand / (1.0 + m_new)
    return (h_new, m_new)


LEAKY = gpurnn.define_cell("leaky_gated_test", gates=("g", "u", "c"), states=("h", "m"),
                           forward=leaky_gated)


def _torch_leaky(torch, xg, hg, state):
    """The same cell written independently with torch ops (torch.autograd differentiates it)."""
    h, m = state
    g = torch.sigmoid(xg[0] + hg[0])
    u = torch.nn.functional.softplus(xg[1] + hg[1])
    cand = torch.tanh(xg[2] + g * hg[2]) + 0.1 * torch.relu(xg[2] - hg[2])
    m_new = torch.maximum(0.5 * m, torch.clamp(u, max=3.0)) + torch.log(1.0 + torch.exp(-u))
    return ((1.0 - g) * h + g * cand / (1.0 + m_new), m_new)


def _torch_mgu(torch, xg, hg, state):
    (h,) = state
    f = torch.sigmoid(xg[0] + hg[0])
    n = torch.tanh(xg[1] + f * hg[1])
    return ((1.0 - f) * h + f * n,)


def _torch_stack(torch, cell_fn, params, G, x, state0, lengths, layers, D):
    """A plain torch implementation of a stacked, bidirectional recurrence with torch's
    packed-sequence semantics (state frozen and output zero past a row's length)."""
    T, B, _ = x.shape
    valid = torch.arange(T)[:, None] < torch.as_tensor(lengths)[None, :]
    t_idx = torch.arange(T)[:, None]
    rev = torch.where(t_idx < torch.as_tensor(lengths)[None, :],
                      torch.as_tensor(lengths)[None, :] - 1 - t_idx, t_idx)   # (T, B)
    b_idx = torch.arange(B)[None, :]
    layer_in, finals = x, [[] for _ in state0]
    for layer in range(layers):
        outs = []
        for d in range(D):
            tag = f"l{layer}{'_reverse' if d else ''}"
            w_ih, w_hh = params[f"weight_ih_{tag}"], params[f"weight_hh_{tag}"]
            b_ih, b_hh = params[f"bias_ih_{tag}"], params[f"bias_hh_{tag}"]
            seq = layer_in if d == 0 else layer_in[rev, b_idx]
            states = tuple(s[layer * D + d] for s in state0)
            out = []
            for t in range(T):
                xg = (seq[t] @ w_ih.T + b_ih).chunk(G, dim=1)
                hg = (states[0] @ w_hh.T + b_hh).chunk(G, dim=1)
                new = cell_fn(torch, xg, hg, states)
                m = valid[t][:, None]
                states = tuple(torch.where(m, n, s) for n, s in zip(new, states))
                out.append(torch.where(m, new[0], torch.zeros_like(new[0])))
            out = torch.stack(out)
            outs.append(out if d == 0 else out[rev, b_idx])
            for k, s in enumerate(states):
                finals[k].append(s)
        layer_in = torch.cat(outs, dim=2)
    return layer_in, tuple(torch.stack(f) for f in finals)


def _backends():
    names = ["numpy", "cpu"]
    if "cuda" in gpurnn.available_backends() or _cuda_simulated():
        names.append("cuda")
    return names


def _cuda_simulated():
    try:
        from numba import config
        return bool(config.ENABLE_CUDASIM)
    except ImportError:
        return False


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-8), ("float32", 2e-5)])
@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("cell, torch_fn", [(LEAKY, _torch_leaky), ("mgu", _torch_mgu)],
                         ids=["leaky_gated", "mgu"])
def test_user_cell_equals_torch_autograd(cell, torch_fn, backend, dtype, tol, rng):
    """A cell written by someone else runs forward and backward on every backend and equals
    torch autograd of the same recurrence with the same weights: outputs, final states and
    all gradients, with lengths, 2 layers and bidirectional."""
    torch = pytest.importorskip("torch")
    small = backend == "cuda"                      # the CUDA simulator is slow: tiny shapes
    T, B, I, H = (4, 2, 3, 5) if small else (6, 3, 4, 7)
    model = gpurnn.Recurrent(cell, I, H, num_layers=2, bidirectional=True, backend=backend,
                             dtype=dtype, seed=11)
    x, state0, lengths, w_out, w_state = _loss_setup(model, rng, T=T, B=B)
    x, w_out = x.astype(dtype), w_out.astype(dtype)
    state0, w_state = (tuple(s.astype(dtype) for s in group) for group in (state0, w_state))
    out, state_n = model(x, state0, lengths)
    dx, dstate0 = model.backward(w_out, w_state)

    tdt = getattr(torch, dtype)
    params = {k: torch.tensor(v, dtype=tdt, requires_grad=True) for k, v in model.state_dict().items()}
    tx = torch.tensor(x, dtype=tdt, requires_grad=True)
    ts0 = tuple(torch.tensor(s, dtype=tdt, requires_grad=True) for s in state0)
    t_out, t_state = _torch_stack(torch, torch_fn, params, model.spec.n_gates, tx, ts0,
                                  torch.tensor(lengths), 2, 2)
    loss = (t_out * torch.tensor(w_out)).sum() + sum((s * torch.tensor(w)).sum()
                                                      for s, w in zip(t_state, w_state))
    loss.backward()
    assert rel_err(out, t_out.detach().numpy()) <= tol
    for a, b in zip(state_n, t_state):
        assert rel_err(a, b.detach().numpy()) <= tol
    assert rel_err(dx, tx.grad.numpy()) <= tol
    for a, b in zip(dstate0, ts0):
        assert rel_err(a, b.grad.numpy()) <= tol
    for name, p in params.items():
        assert rel_err(model.grads[name], p.grad.numpy()) <= tol, name


def test_recurrent_by_name_and_state_errors(rng):
    m = gpurnn.Recurrent("mgu", 3, 4, backend="numpy", dtype="float64")
    assert m.spec is gpurnn.cells.get_cell("mgu")
    x = rng.standard_normal((2, 1, 3))
    out, (h_n,) = m(x)
    assert out.shape == (2, 1, 4) and h_n.shape == (1, 1, 4)
    m2 = gpurnn.Recurrent("slstm", 3, 4, backend="numpy", dtype="float64")
    with pytest.raises(TypeError, match=r"state0: expected a tuple of 4 states \('h', 'c', 'n', 'm'\)"):
        m2(x, (np.zeros((1, 1, 4)),))
    with pytest.raises(ValueError, match=r"state0\[2\] \(n\): expected shape \(1, 1, 4\), got \(1, 1, 5\)"):
        m2(x, (None, None, np.zeros((1, 1, 5)), None))
    with pytest.raises(ValueError, match=r"cell: expected a CellSpec or one of \["):
        gpurnn.Recurrent("no_such_cell", 3, 4)


# ----------------------------------------------------------------------------- gpurnn.torch
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_torch_recurrent_user_cell_equals_torch_autograd(backend, rng):
    """gpurnn.torch.Recurrent: the same parameter names, the same kernels inside autograd;
    equal to a plain torch implementation of the cell (float64, lengths, 2 layers, bidir)."""
    torch = pytest.importorskip("torch")
    import gpurnn.torch as gt
    torch.manual_seed(0)
    m = gt.Recurrent(LEAKY, 4, 5, num_layers=2, bidirectional=True, dtype=torch.float64,
                     backend=backend)
    names = [n for n, _ in m.named_parameters()]
    assert names == list(gpurnn.Recurrent(LEAKY, 4, 5, num_layers=2, bidirectional=True).state_dict())
    x = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
    s0 = tuple(torch.rand(4, 3, 5, dtype=torch.float64, requires_grad=True) for _ in range(2))
    lengths = torch.tensor([6, 2, 4])
    out, state_n = m(x, s0, lengths=lengths)
    (out.square().sum() + sum(s.sum() for s in state_n)).backward()
    params = {k: p.detach().clone().requires_grad_() for k, p in m.named_parameters()}
    x2 = x.detach().clone().requires_grad_()
    s2 = tuple(s.detach().clone().requires_grad_() for s in s0)
    ref_out, ref_state = _torch_stack(torch, _torch_leaky, params, 3, x2, s2, lengths, 2, 2)
    (ref_out.square().sum() + sum(s.sum() for s in ref_state)).backward()
    assert rel_err(out.detach(), ref_out.detach()) <= 1e-10
    assert rel_err(x.grad, x2.grad) <= 1e-10
    for a, b in zip(s0, s2):
        assert rel_err(a.grad, b.grad) <= 1e-10
    for k, p in m.named_parameters():
        assert rel_err(p.grad, params[k].grad) <= 1e-10, k


def test_torch_recurrent_double_backward_and_compile(rng):
    """A user cell's double backward runs its own forward in torch ops (gradgradcheck), and
    torch.compile(fullgraph=True) traces the module with no graph break."""
    torch = pytest.importorskip("torch")
    import gpurnn.torch as gt
    m = gt.Recurrent("mgu", 2, 3, dtype=torch.float64, backend="numpy")
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: m(x)[0], (x,))
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    out_c, (h_c,) = compiled(x)
    out_e, (h_e,) = m(x)
    assert torch.allclose(out_c, out_e) and torch.allclose(h_c, h_e)
    with pytest.raises(TypeError, match=r"state0: expected a tuple of 1 states \('h',\)"):
        m(x, (None, None))
