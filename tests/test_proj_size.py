"""LSTM with projections (torch's ``proj_size``) on every backend, against the reference
and against torch.nn.LSTM(proj_size=P).

The oracle is the numpy backend: gpurnn.reference computes h_t = W_hr (o_t tanh c_t) step
by step (checked against finite differences in tests/test_reference_gradcheck.py). The
cpu and cuda backends run gpurnn.projection's fold (W_hh W_hr into the fused kernels),
so these tests compare two independent implementations. Every buffer a backend writes is
NaN first (poison=True); odd, distinct sizes (T=7, B=3, I=5, H=6, P=4) so a transposed
index cannot hide. The cuda backend runs in Numba's CUDA simulator where there is no GPU
(tests/conftest.py); the torch parity tests skip when torch is not installed.
"""
import numpy as np
import pytest

import gpurnn
from gpurnn.backend import NumpyBackend
from helpers import assert_all_close, host, backend_or_skip, poisoned_cpu, rel_err, split_cpu

TOLERANCE = {"float32": 2e-5, "float64": 1e-10}
T, I, H, P = 7, 5, 6, 4
LENGTHS = np.array([7, 2, 5])
LENGTHS_11 = np.array([7, 2, 5, 7, 1, 3, 7, 6, 4, 7, 2])

# option -> (constructor kwargs, run kwargs); "rows" takes B = 11 (the CPU's BLAS-step path)
OPTIONS = {
    "plain": ({}, {}),
    "initial_state": ({}, {"state": True}),
    "lengths_truncate": ({}, {"state": True, "lengths": LENGTHS, "truncate": 3}),
    "truncate_1": ({}, {"state": True, "truncate": 1}),
    "no_bias": ({"bias": False}, {"state": True}),
    "two_layers_bidirectional": ({"num_layers": 2, "bidirectional": True}, {"state": True}),
    "dropout": ({"num_layers": 2, "dropout": 0.4}, {}),
    "rows": ({}, {"batch": 11, "state": True, "truncate": 4}),
    "rows_lengths": ({}, {"batch": 11, "lengths": LENGTHS_11, "truncate": 3}),
    "everything": ({"num_layers": 2, "bidirectional": True, "dropout": 0.3, "batch_first": True},
                   {"state": True, "lengths": LENGTHS, "truncate": 2}),
}


def _cuda(algo):
    def make():
        from gpurnn.cuda.backend import CudaBackend
        return CudaBackend(algo=algo, poison=True)
    return make


# name -> (factory, options it runs: the CUDA simulator is slow, so it runs one that has
# everything, per kernel)
BACKENDS = {
    "cpu": (poisoned_cpu, tuple(OPTIONS)),
    "cpu-split": (split_cpu, ("lengths_truncate", "rows_lengths", "everything")),
    "cpu-openblas": (lambda: poisoned_cpu(gemm="openblas"), ("rows", "rows_lengths")),
    "cuda-step": (_cuda("step"), ("everything",)),
    "cuda-persistent": (_cuda("persistent"), ("everything",)),
}


def _backend(name):
    """A fresh instance of backend ``name`` ("numpy" or a BACKENDS entry), or a skip."""
    factory = {"numpy": NumpyBackend, **{k: f for k, (f, _) in BACKENDS.items()}}[name]
    return backend_or_skip(factory, name)


def _inputs(model, rng, batch, with_state):
    LD, D = model.num_layers * model.num_directions, model.num_directions
    shape = lambda *s: rng.standard_normal(s).astype(model.dtype)   # noqa: E731
    x = shape(batch, T, I) if model.batch_first else shape(T, batch, I)
    dout = shape(batch, T, D * P) if model.batch_first else shape(T, batch, D * P)
    states = lambda: (shape(LD, batch, P), shape(LD, batch, H))     # noqa: E731 (h: P wide)
    return dict(x=x, state=states() if with_state else None, dout=dout, dstate=states())


def forward_backward(model, inputs, lengths=None, truncate=None):
    """helpers.forward_backward for a projected LSTM: dh0 (P wide) and dc0 (H wide) are
    flattened before they are joined into one "dstate0" (normwise over both)."""
    out, (h_n, c_n) = model(inputs["x"], inputs["state"], lengths=lengths)
    dx, (dh0, dc0) = model.backward(inputs["dout"], inputs["dstate"], truncate=truncate)
    results = {"out": out, "dx": dx, "state_n[0]": h_n, "state_n[1]": c_n,
               "dstate0": np.concatenate([host(dh0).ravel(), host(dc0).ravel()])}
    results.update({f"grad {k}": g.copy() for k, g in model.grads.items()})
    return results


def _cases():
    for backend, (_, options) in BACKENDS.items():
        for option in options:
            for dtype in ("float32", "float64"):
                if backend.startswith("cuda") and dtype == "float64":
                    continue        # the simulator is slow; float32 is the kernels' dtype
                yield pytest.param(backend, option, dtype, id=f"{backend}-{option}-{dtype}")


@pytest.mark.parametrize("backend, option, dtype", list(_cases()))
def test_backend_matches_the_reference(backend, option, dtype, rng):
    ctor, run = OPTIONS[option]
    impl = _backend(backend)
    ref = gpurnn.LSTM(I, H, proj_size=P, backend="numpy", dtype=dtype, seed=11, **ctor)
    model = gpurnn.LSTM(I, H, proj_size=P, backend=impl, dtype=dtype, seed=12, **ctor)
    model.load_state_dict(ref.state_dict())
    inputs = _inputs(ref, rng, run.get("batch", 3), run.get("state", False))
    kw = dict(lengths=run.get("lengths"), truncate=run.get("truncate"))
    ref._dropout_rng = np.random.default_rng(5)
    expected = forward_backward(ref, inputs, **kw)
    model._dropout_rng = np.random.default_rng(5)
    actual = forward_backward(model, inputs, **kw)
    assert any(k.startswith("grad weight_hr") for k in actual)
    assert_all_close(actual, expected, dtype, TOLERANCE[dtype])
    # what ran is visible: every layer-direction's forward and backward plan says it folded
    for which in ("forward", "backward"):
        for plan in (p for layer in model.last_plans[which] for p in layer):
            assert plan["projection"].startswith("fold"), plan
    for plan in (p for layer in ref.last_plans["forward"] for p in layer):
        assert plan["projection"].startswith("per step"), plan


def test_backward_twice_through_one_tape_accumulates(rng):
    """The fold keeps its tape intact: two backward calls give twice the gradients."""
    impl = _backend("cpu")
    model = gpurnn.LSTM(I, H, proj_size=P, backend=impl, dtype="float64", seed=3,
                        bidirectional=True)
    inputs = _inputs(model, rng, 3, True)
    model(inputs["x"], inputs["state"], lengths=LENGTHS)
    model.zero_grad()
    once = model.backward(inputs["dout"], inputs["dstate"], truncate=2)
    g1 = {k: v.copy() for k, v in model.grads.items()}
    twice = model.backward(inputs["dout"], inputs["dstate"], truncate=2)
    assert rel_err(twice[0], once[0]) == 0
    for k, v in model.grads.items():
        assert rel_err(v, 2 * g1[k]) < 1e-14, k


# ----------------------------------------------------------------------------- API and errors
def test_shapes_names_and_state_dict_order():
    m = gpurnn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P, backend="numpy")
    shapes = [(k, v.shape) for k, v in m.state_dict().items()]
    tags = ["l0", "l0_reverse", "l1", "l1_reverse"]
    want = []
    for tag in tags:
        in_size = I if tag.startswith("l0") else 2 * P
        want += [(f"weight_ih_{tag}", (4 * H, in_size)), (f"weight_hh_{tag}", (4 * H, P)),
                 (f"bias_ih_{tag}", (4 * H,)), (f"bias_hh_{tag}", (4 * H,)),
                 (f"weight_hr_{tag}", (P, H))]
    assert shapes == want
    out, (h_n, c_n) = m(np.zeros((T, 3, I), np.float32))
    assert out.shape == (T, 3, 2 * P) and h_n.shape == (4, 3, P) and c_n.shape == (4, 3, H)
    assert list(m.grads) == list(m.state_dict())
    assert "proj_size=4" in repr(m)
    assert m.output_size == P and gpurnn.LSTM(I, H).output_size == H


@pytest.mark.parametrize("value, error, match", [
    (H, ValueError, r"proj_size: expected an int smaller than hidden_size \(6\), got 6"),
    (H + 3, ValueError, r"smaller than hidden_size \(6\), got 9"),
    (-1, ValueError, r"proj_size: expected 0 .*positive int.*got -1"),
    (2.0, TypeError, r"proj_size: expected an int.*got float 2.0"),
    (True, TypeError, r"proj_size: expected an int.*got bool True"),
])
def test_bad_proj_size_names_the_argument_expected_and_actual(value, error, match):
    with pytest.raises(error, match=match):
        gpurnn.LSTM(I, H, proj_size=value)


def test_bad_state_and_dout_shapes_name_proj_size_widths(rng):
    m = gpurnn.LSTM(I, H, proj_size=P, backend="numpy")
    x = rng.standard_normal((T, 3, I)).astype(np.float32)
    with pytest.raises(ValueError, match=r"h0.*\(1, 3, 4\).*\(1, 3, 6\)"):
        m(x, (np.zeros((1, 3, H), np.float32), None))
    with pytest.raises(ValueError, match=r"c0.*\(1, 3, 6\).*\(1, 3, 4\)"):
        m(x, (None, np.zeros((1, 3, P), np.float32)))
    m(x)
    with pytest.raises(ValueError, match=r"dout.*\(7, 3, 4\).*\(7, 3, 6\)"):
        m.backward(np.zeros((T, 3, H), np.float32))


def test_a_backend_without_the_fold_hooks_is_refused_clearly(rng):
    class Plain:          # a user's backend object with only the contract's two calls
        name, xp, dtypes = "plain", np, ("float32",)

        def asarray(self, a, dtype=None):
            return np.asarray(a, dtype)

        def to_user(self, a, like):
            return a

        forward = NumpyBackend.forward
        backward = NumpyBackend.backward

    m = gpurnn.LSTM(I, H, proj_size=P, backend=Plain())
    with pytest.raises(TypeError, match="proj_size: backend 'plain'.*fold hooks"):
        m(rng.standard_normal((T, 2, I)).astype(np.float32))


# ----------------------------------------------------------------------------- torch parity
def _torch():
    return pytest.importorskip("torch", reason="PyTorch is not installed: the parity tests with"
                               " torch.nn.LSTM(proj_size=P) are skipped")


PARITY = {
    "uni": ({}, False),
    "uni_lengths": ({}, True),
    "bidir_2layers": ({"num_layers": 2, "bidirectional": True}, False),
    "bidir_2layers_batchfirst_lengths": ({"num_layers": 2, "bidirectional": True,
                                          "batch_first": True}, True),
    "nobias_2layers_lengths": ({"num_layers": 2, "bias": False}, True),
}


def _torch_run(torch, module, x, h0, c0, lengths, g_out, g_h, g_c):
    """torch.nn's forward + backward; padded outputs, states and every gradient (NumPy)."""
    xt = torch.tensor(x, requires_grad=True)
    h0t, c0t = torch.tensor(h0, requires_grad=True), torch.tensor(c0, requires_grad=True)
    inp = xt
    bf = module.batch_first
    if lengths is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths), batch_first=bf,
                                                      enforce_sorted=False)
    out, (h_n, c_n) = module(inp, (h0t, c0t))
    if lengths is not None:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=bf,
                                                        total_length=x.shape[1 if bf else 0])
    loss = ((out * torch.tensor(g_out)).sum() + (h_n * torch.tensor(g_h)).sum()
            + (c_n * torch.tensor(g_c)).sum())
    module.zero_grad()
    loss.backward()
    res = {"out": out, "h_n": h_n, "c_n": c_n, "dx": xt.grad, "dh0": h0t.grad, "dc0": c0t.grad}
    res.update({f"grad {k}": p.grad for k, p in module.named_parameters()})
    return {k: v.detach().numpy() for k, v in res.items()}


def _parity_inputs(rng, module, dtype, B=3):
    L = module.num_layers * (2 if module.bidirectional else 1)
    D = 2 if module.bidirectional else 1
    s = lambda *shape: rng.standard_normal(shape).astype(dtype)   # noqa: E731
    x = s(B, T, I) if module.batch_first else s(T, B, I)
    g_out = s(B, T, D * P) if module.batch_first else s(T, B, D * P)
    return x, s(L, B, P), s(L, B, H), g_out, s(L, B, P), s(L, B, H)


# the CUDA simulator is slow: cuda runs the one case that has everything, in float32
PARITY_CASES = [(b, c, d) for b in ("numpy", "cpu") for c in sorted(PARITY)
                for d in ("float64", "float32")] + [
    ("cuda", "bidir_2layers_batchfirst_lengths", "float32")]


@pytest.mark.parametrize("backend, case, dtype", PARITY_CASES)
def test_gpurnn_lstm_matches_torch_nn_lstm(backend, case, dtype, rng):
    torch = _torch()
    impl = _backend({"cuda": "cuda-step"}.get(backend, backend))
    opts, with_lengths = PARITY[case]
    torch.manual_seed(4)
    module = torch.nn.LSTM(I, H, proj_size=P, **opts).to(getattr(torch, dtype))
    ours = gpurnn.LSTM(I, H, proj_size=P, backend=impl, dtype=dtype, **opts)
    ours.load_state_dict(module.state_dict())        # torch tensors: anything np.asarray takes
    x, h0, c0, g_out, g_h, g_c = _parity_inputs(rng, module, dtype)
    lengths = np.array([7, 2, 5]) if with_lengths else None
    want = _torch_run(torch, module, x, h0, c0, lengths, g_out, g_h, g_c)
    out, (h_n, c_n) = ours(x, (h0, c0), lengths=lengths)
    dx, (dh0, dc0) = ours.backward(g_out, (g_h, g_c))
    got = {"out": out, "h_n": h_n, "c_n": c_n, "dx": dx, "dh0": dh0, "dc0": dc0}
    got.update({f"grad {k}": v for k, v in ours.grads.items()})
    assert list(got) == list(want)
    tol = 1e-12 if dtype == "float64" else 2e-5
    for k in want:
        assert rel_err(got[k], want[k]) <= tol, k


# ----------------------------------------------------------------------------- the torch bridge
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("case", sorted(PARITY))
def test_bridge_matches_torch_nn_lstm(backend, case, rng):
    """gpurnn.torch.LSTM(proj_size=P): torch's initialisation and parameters, outputs,
    states and every gradient equal torch.nn.LSTM's; lengths as a PackedSequence."""
    torch = _torch()
    import gpurnn.torch as gt
    _backend(backend)
    opts, with_lengths = PARITY[case]
    torch.manual_seed(9)
    module = torch.nn.LSTM(I, H, proj_size=P, **opts).double()
    torch.manual_seed(9)
    ours = gt.LSTM(I, H, proj_size=P, backend=backend, **opts).double()
    assert [(n, p.shape) for n, p in ours.named_parameters()] == \
        [(n, p.shape) for n, p in module.named_parameters()]
    for (n, a), b in zip(ours.named_parameters(), module.parameters()):
        assert torch.equal(a, b), n        # the same seed draws the same weights
    x, h0, c0, g_out, g_h, g_c = _parity_inputs(rng, module, "float64")
    lengths = np.array([7, 2, 5]) if with_lengths else None
    want = _torch_run(torch, module, x, h0, c0, lengths, g_out, g_h, g_c)
    got = _torch_run(torch, ours, x, h0, c0, lengths, g_out, g_h, g_c)
    assert list(got) == list(want)
    for k in want:
        assert rel_err(got[k], want[k]) <= 1e-12, k


def test_bridge_loads_a_torch_state_dict_and_double_backward_works(rng):
    torch = _torch()
    import gpurnn.torch as gt
    module = torch.nn.LSTM(3, 5, proj_size=2, num_layers=2, bidirectional=True).double()
    ours = gt.LSTM(3, 5, proj_size=2, num_layers=2, bidirectional=True,
                   backend="numpy").double()
    ours.load_state_dict(module.state_dict())
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(ours(x)[0], module(x)[0], rtol=1e-12, atol=1e-13)
    # create_graph=True takes the torch-ops recurrence, which applies W_hr too
    assert torch.autograd.gradgradcheck(lambda x: ours(x)[0], (x,))


def test_bridge_under_torch_compile():
    torch = _torch()
    import gpurnn.torch as gt
    _backend("cpu")
    torch.manual_seed(2)
    m = gt.LSTM(3, 5, num_layers=2, proj_size=2, bidirectional=True, backend="cpu")
    x = torch.randn(4, 2, 3, requires_grad=True)
    out, (h, c) = m(x)
    (out.sum() + h.sum() + c.sum()).backward()
    eager = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    out2, (h2, c2) = torch.compile(m, backend="aot_eager", fullgraph=True)(x)
    (out2.sum() + h2.sum() + c2.sum()).backward()
    torch.testing.assert_close(out2, out)
    for a, p in zip(eager, m.parameters()):
        torch.testing.assert_close(p.grad, a)


@pytest.mark.parametrize("backend", ["numpy", "cpu", "cuda-step"])
def test_token_ids_equal_their_one_hot_rows(backend, rng):
    """Token ids through a projected LSTM (the fold's gx0 is added after the gather)."""
    impl = _backend(backend)
    ids = rng.integers(0, I, (T, 3))
    onehot = np.eye(I)[ids]
    results = []
    for x in (ids, onehot):
        m = gpurnn.LSTM(I, H, proj_size=P, backend=impl, dtype="float64", seed=4,
                        bidirectional=True)
        r = np.random.default_rng(1)          # the same state and dout for both inputs
        state = (r.standard_normal((2, 3, P)), r.standard_normal((2, 3, H)))
        out, (h_n, c_n) = m(x, state, lengths=LENGTHS)
        dout = r.standard_normal(out.shape)
        _, (dh0, dc0) = m.backward(dout, truncate=3)
        results.append([out, h_n, c_n, dh0, dc0] + list(m.grads.values()))
    for a, b in zip(*results):
        assert rel_err(a, b) <= 1e-13
