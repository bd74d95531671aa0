"""gpurnn.torch: torch.nn drop-ins computed by gpurnn, checked against torch.nn and gradcheck.

Tiny shapes throughout (gradcheck differentiates every weight numerically). Everything
runs on backend="numpy"; a subset runs again on backend="cpu" when that backend exists.
"""
import copy
import io
import pickle

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the 184 tests of gpurnn.torch"
                            " in this module are skipped (pip install torch)")

import gpurnn  # noqa: E402
import gpurnn.torch as gt  # noqa: E402
from torch.func import functional_call  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

CELLS = {
    "rnn_tanh": (gt.RNN, torch.nn.RNN, dict(nonlinearity="tanh")),
    "rnn_relu": (gt.RNN, torch.nn.RNN, dict(nonlinearity="relu")),
    "lstm": (gt.LSTM, torch.nn.LSTM, {}),
    "gru": (gt.GRU, torch.nn.GRU, {}),
}
BACKENDS = ["numpy"] + (["cpu"] if "cpu" in gpurnn.available_backends() else [])
I, H, T, B = 3, 4, 5, 3


def make_pair(cell, backend="numpy", dtype=torch.float64, seed=0, **options):
    """A gpurnn.torch module and a torch.nn module holding the same weights."""
    ours_cls, ref_cls, extra = CELLS[cell]
    torch.manual_seed(seed)
    ours = ours_cls(I, H, dtype=dtype, backend=backend, **extra, **options)
    torch.manual_seed(seed)
    ref = ref_cls(I, H, dtype=dtype, **extra, **options)
    return ours, ref


def state_of(cell, L, D, batch, dtype, seed, hidden=H):
    g = torch.Generator().manual_seed(seed)
    h0 = torch.randn(L * D, batch, hidden, generator=g, dtype=dtype)
    if cell == "lstm":
        return h0, torch.randn(L * D, batch, hidden, generator=g, dtype=dtype)
    return h0, None


def as_hx(cell, h0, c0):
    return (h0, c0) if cell == "lstm" else h0


def states(hn):
    return list(hn) if isinstance(hn, tuple) else [hn]


# ----------------------------------------------------------------------------- construction
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_same_parameters_names_shapes_and_init_as_torch(cell):
    ours, ref = make_pair(cell, num_layers=2, bidirectional=True, dtype=torch.float32)
    assert isinstance(ours, torch.nn.Module)
    ours_params, ref_params = dict(ours.named_parameters()), dict(ref.named_parameters())
    assert list(ours_params) == list(ref_params)
    for name, p in ref_params.items():
        assert isinstance(ours_params[name], torch.nn.Parameter)
        assert ours_params[name].shape == p.shape and ours_params[name].dtype == p.dtype
        assert torch.equal(ours_params[name], p), name       # same seed -> same torch init
    # state dicts interchange both ways, strictly
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())


def test_module_survives_copy_and_pickle_after_a_forward():
    ours, _ = make_pair("lstm", num_layers=2)
    x = torch.randn(T, B, I, dtype=torch.float64)
    out, _ = ours(x)
    for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        out2, _ = clone(x)
        torch.testing.assert_close(out2, out, rtol=0, atol=0)
    buf = io.BytesIO()
    torch.save(ours.state_dict(), buf)
    assert "backend='numpy'" in repr(ours)


# ----------------------------------------------------------------------------- gradcheck
GRADCHECK_OPTIONS = {
    "plain": {},
    "two_layers": dict(num_layers=2),
    "bidirectional": dict(bidirectional=True),
    "batch_first": dict(batch_first=True),
    "no_bias": dict(bias=False),
    "lengths": dict(_lengths=True),
    "h0": dict(_h0=True),
    "everything": dict(num_layers=2, bidirectional=True, batch_first=True, _lengths=True, _h0=True),
    "packed": dict(bidirectional=True, _packed=True, _h0=True),
}


def gradcheck_case(cell, option):
    """(fn, inputs) for torch.autograd.gradcheck / gradgradcheck: x, h0, c0 and every weight."""
    opts = dict(GRADCHECK_OPTIONS[option])
    use_lengths, use_h0, use_packed = (opts.pop(k, False) for k in ("_lengths", "_h0", "_packed"))
    m = CELLS[cell][0](2, 2, dtype=torch.float64, backend="numpy", **CELLS[cell][2], **opts)
    Tg, Bg = 3, 2
    L, D = m.num_layers, 2 if m.bidirectional else 1
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((Bg, Tg, 2) if m.batch_first else (Tg, Bg, 2), generator=gen, dtype=torch.float64)
    lengths = torch.tensor([3, 2]) if (use_lengths or use_packed) else None
    h0, c0 = state_of(cell, L, D, Bg, torch.float64, 2, hidden=2) if use_h0 else (None, None)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone() for _, p in m.named_parameters()]
    inputs = [t.requires_grad_() for t in [x, h0, c0, *params] if t is not None]

    def fn(*args):
        it = iter(args)
        xx = next(it)
        hh = next(it) if h0 is not None else None
        cc = next(it) if c0 is not None else None
        ps = dict(zip(names, it))
        if use_packed:
            xx = pack_padded_sequence(xx, lengths, batch_first=m.batch_first, enforce_sorted=False)
            out, hn = functional_call(m, ps, (xx, as_hx(cell, hh, cc)))
            out = out.data
        else:
            kwargs = {"lengths": lengths} if use_lengths else {}
            out, hn = functional_call(m, ps, (xx, as_hx(cell, hh, cc)), kwargs)
        return (out, *states(hn))

    return fn, inputs


@pytest.mark.parametrize("option", sorted(GRADCHECK_OPTIONS))
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_gradcheck_float64(cell, option):
    fn, inputs = gradcheck_case(cell, option)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("option", sorted(GRADCHECK_OPTIONS))
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_gradgradcheck_float64(cell, option):
    """Double backward: the create_graph backward differentiates the torch-ops recurrence."""
    fn, inputs = gradcheck_case(cell, option)
    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_gradient_penalty_matches_torch_nn(cell):
    """d/dtheta ||dL/dx||^2 (a gradient penalty), with lengths and two bidirectional layers;
    the first-order gradients under create_graph equal gpurnn's BPTT ones."""
    results = []
    for m in make_pair(cell, num_layers=2, bidirectional=True):
        x = torch.randn(T, B, I, dtype=torch.float64, generator=torch.Generator().manual_seed(4),
                        requires_grad=True)
        lengths = torch.tensor([5, 2, 4])
        if isinstance(m, gt._GpurnnRNNBase):
            out, _ = m(x, lengths=lengths)
        else:
            packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
            out, _ = pad_packed_sequence(m(packed)[0], total_length=T)
        loss = out.sin().sum()
        (gx,) = torch.autograd.grad(loss, x, create_graph=True)
        first = torch.autograd.grad(loss, m.weight_hh_l1_reverse, retain_graph=True)[0]
        gx.pow(2).sum().backward()
        results.append((gx.detach(), first, {n: p.grad for n, p in m.named_parameters()}))
    (gx_o, first_o, grads_o), (gx_r, first_r, grads_r) = results
    torch.testing.assert_close(gx_o, gx_r, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(first_o, first_r, rtol=1e-10, atol=1e-12)
    for n, g in grads_r.items():
        assert grads_o[n] is not None and grads_o[n].abs().sum() > 0, n
        torch.testing.assert_close(grads_o[n], g, rtol=1e-9, atol=1e-11, msg=n)


def test_torch_step_table_matches_torch_nn_cells():
    """The per-cell torch steps (the double-backward path) are torch.nn's cells."""
    g = torch.Generator().manual_seed(5)
    for cell, (_, ref_cls, extra) in CELLS.items():
        torch.manual_seed(0)
        ref = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}.get(cell, torch.nn.RNNCell)(
            I, H, dtype=torch.float64, **extra)
        x = torch.randn(B, I, generator=g, dtype=torch.float64)
        state = tuple(torch.randn(B, H, generator=g, dtype=torch.float64)
                      for _ in range(2 if cell == "lstm" else 1))
        xg = torch.nn.functional.linear(x, ref.weight_ih, ref.bias_ih).split(H, -1)
        hg = torch.nn.functional.linear(state[0], ref.weight_hh, ref.bias_hh).split(H, -1)
        ours = gt.torch_step(cell)(xg, hg, state)
        expected = ref(x, state if cell == "lstm" else state[0])
        for a, b in zip(ours, expected if cell == "lstm" else (expected,)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=cell)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the Numba 'cpu' backend is not available here")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gradcheck_float64_cpu_backend(cell):
    m = CELLS[cell][0](2, 2, num_layers=2, bidirectional=True, batch_first=True,
                       dtype=torch.float64, backend="cpu")
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    h0, c0 = state_of(cell, 2, 2, 2, torch.float64, 4, hidden=2)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    inputs = [t for t in [x, h0.requires_grad_(), None if c0 is None else c0.requires_grad_(), *params]
              if t is not None]

    def fn(xx, hh, *rest):
        cc, ps = (rest[0], rest[1:]) if cell == "lstm" else (None, rest)
        out, hn = functional_call(m, dict(zip(names, ps)), (xx, as_hx(cell, hh, cc)),
                                  {"lengths": torch.tensor([3, 1])})
        return (out, *states(hn))

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


# ----------------------------------------------------------------------------- vs torch.nn
EQUALITY_OPTIONS = {
    "plain": {},
    "two_layers": dict(num_layers=2),
    "bidirectional_two_layers": dict(num_layers=2, bidirectional=True),
    "batch_first": dict(batch_first=True, num_layers=2),
    "no_bias": dict(bias=False),
}


def run_and_grads(module, x, hx, weights_out, weights_state, lengths=None, packed=False):
    """Forward, a weighted-sum loss over output and final states, backward; all gradients."""
    module.zero_grad()
    xs = x.detach().clone().requires_grad_()
    hx_leaves = [None if s is None else s.detach().clone().requires_grad_() for s in hx]
    hx_arg = None if hx_leaves[0] is None else (tuple(hx_leaves) if len(hx_leaves) == 2 else hx_leaves[0])
    if packed:
        inp = pack_padded_sequence(xs, lengths, batch_first=module.batch_first, enforce_sorted=False)
        out, hn = module(inp, hx_arg)
        out_padded, _ = pad_packed_sequence(out, batch_first=module.batch_first, total_length=x.shape[
            1 if module.batch_first else 0])
    elif lengths is not None and isinstance(module, gt._GpurnnRNNBase):
        out_padded, hn = module(xs, hx_arg, lengths=lengths)
    elif lengths is not None:     # torch.nn has no lengths=: pack, run, pad
        inp = pack_padded_sequence(xs, lengths, batch_first=module.batch_first, enforce_sorted=False)
        out, hn = module(inp, hx_arg)
        out_padded, _ = pad_packed_sequence(out, batch_first=module.batch_first, total_length=x.shape[
            1 if module.batch_first else 0])
    else:
        out_padded, hn = module(xs, hx_arg)
    loss = (out_padded * weights_out).sum()
    for s, w in zip(states(hn), weights_state):
        loss = loss + (s * w).sum()
    loss.backward()
    grads = {"x": xs.grad}
    for i, leaf in enumerate(hx_leaves):
        if leaf is not None:
            grads[f"hx{i}"] = leaf.grad
    grads.update({n: p.grad for n, p in module.named_parameters()})
    return out_padded.detach(), [s.detach() for s in states(hn)], grads


def compare_with_torch(cell, backend, dtype, options, use_h0=False, lengths=None, packed=False,
                       seed=0):
    ours, ref = make_pair(cell, backend=backend, dtype=dtype, seed=seed, **options)
    L, D = ours.num_layers, 2 if ours.bidirectional else 1
    g = torch.Generator().manual_seed(seed + 1)
    shape = (B, T, I) if ours.batch_first else (T, B, I)
    x = torch.randn(shape, generator=g, dtype=dtype)
    out_shape = shape[:2] + (D * H,)
    w_out = torch.randn(out_shape, generator=g, dtype=dtype)
    n_states = 2 if cell == "lstm" else 1
    w_state = [torch.randn(L * D, B, H, generator=g, dtype=dtype) for _ in range(n_states)]
    if use_h0:
        hx = list(state_of(cell, L, D, B, dtype, seed + 2))[:n_states]
    else:
        hx = [None] * n_states
    res_ours = run_and_grads(ours, x, hx, w_out, w_state, lengths, packed)
    res_ref = run_and_grads(ref, x, hx, w_out, w_state, lengths, packed)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(res_ours[0], res_ref[0], **tol, msg="output")
    for a, b in zip(res_ours[1], res_ref[1]):
        torch.testing.assert_close(a, b, **tol, msg="final state")
    assert res_ours[2].keys() == res_ref[2].keys()
    for name in res_ref[2]:
        assert res_ours[2][name] is not None, name
        torch.testing.assert_close(res_ours[2][name], res_ref[2][name], **tol, msg=f"grad of {name}")
    return res_ours


@pytest.mark.parametrize("option", sorted(EQUALITY_OPTIONS))
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_matches_torch_nn_float64(cell, option):
    compare_with_torch(cell, "numpy", torch.float64, EQUALITY_OPTIONS[option], use_h0=True)


@pytest.mark.parametrize("packed", [False, True], ids=["lengths", "packed"])
@pytest.mark.parametrize("options", [{}, dict(num_layers=2, bidirectional=True, batch_first=True)],
                         ids=["one_layer", "two_layers_bidir_batch_first"])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_matches_torch_nn_with_lengths(cell, options, packed):
    lengths = torch.tensor([2, 5, 3])          # unsorted on purpose
    _, states_, _ = compare_with_torch(cell, "numpy", torch.float64, options, use_h0=True,
                                       lengths=lengths, packed=packed)
    assert all(torch.isfinite(s).all() for s in states_)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_matches_torch_nn_float32(cell, backend):
    compare_with_torch(cell, backend, torch.float32, dict(num_layers=2, bidirectional=True),
                       use_h0=True, lengths=torch.tensor([5, 1, 4]))


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the Numba 'cpu' backend is not available here")
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_cpu_backend_matches_torch_nn_float64(cell):
    compare_with_torch(cell, "cpu", torch.float64, dict(num_layers=2, bidirectional=True,
                                                        batch_first=True), use_h0=True)


def test_packed_enforce_sorted_and_output_layout():
    ours, ref = make_pair("gru", num_layers=2)
    x = torch.randn(T, B, I, dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor([5, 4, 2]), enforce_sorted=True)
    out_o, h_o = ours(packed)
    out_r, h_r = ref(packed)
    assert torch.equal(out_o.batch_sizes, out_r.batch_sizes)
    assert out_o.sorted_indices is None and out_r.sorted_indices is None
    torch.testing.assert_close(out_o.data, out_r.data, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h_o, h_r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_unbatched_input(cell):
    ours, ref = make_pair(cell, num_layers=2, bidirectional=True)
    x = torch.randn(T, I, dtype=torch.float64)
    h0, c0 = state_of(cell, 2, 2, 1, torch.float64, 3)
    hx = as_hx(cell, h0[:, 0], None if c0 is None else c0[:, 0])
    out_o, hn_o = ours(x, hx)
    out_r, hn_r = ref(x, hx)
    assert out_o.shape == out_r.shape == (T, 2 * H)
    torch.testing.assert_close(out_o, out_r, rtol=1e-10, atol=1e-12)
    for a, b in zip(states(hn_o), states(hn_r)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_module_called_twice_before_backward():
    """Each call keeps its own tape, so a shared module (weight tying, two inputs) works."""
    ours, ref = make_pair("lstm", num_layers=2)
    x1, x2 = torch.randn(T, B, I, dtype=torch.float64), torch.randn(3, B, I, dtype=torch.float64)
    for m in (ours, ref):
        o1, (h1, c1) = m(x1)
        o2, _ = m(x2, (h1, c1))
        (o1.pow(2).sum() + o2.sin().sum()).backward()
    for (n, po), pr in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(po.grad, pr.grad, rtol=1e-10, atol=1e-12, msg=n)


def test_retain_graph_backward_twice_accumulates():
    ours, _ = make_pair("gru")
    x = torch.randn(T, B, I, dtype=torch.float64)
    out, _ = ours(x)
    out.sum().backward(retain_graph=True)
    once = ours.weight_hh_l0.grad.clone()
    out.sum().backward()
    torch.testing.assert_close(ours.weight_hh_l0.grad, 2 * once)


def test_inplace_weight_change_between_forward_and_backward_is_caught():
    ours, _ = make_pair("lstm")
    out, _ = ours(torch.randn(T, B, I, dtype=torch.float64))
    with torch.no_grad():
        ours.weight_hh_l0.add_(1.0)     # the tape views this memory: torch must refuse
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_no_grad_and_frozen_parameters():
    ours, ref = make_pair("lstm", num_layers=2)
    x = torch.randn(T, B, I, dtype=torch.float64)
    with torch.no_grad():
        out, _ = ours(x)
    assert out.grad_fn is None
    for m in (ours, ref):
        m.weight_ih_l0.requires_grad_(False)
        xs = x.clone().requires_grad_()
        m(xs)[0].sum().backward()
        assert m.weight_ih_l0.grad is None
    torch.testing.assert_close(ours.weight_hh_l1.grad, ref.weight_hh_l1.grad, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- dropout
def test_dropout_train_eval_and_reproducibility():
    ours, ref = make_pair("lstm", num_layers=3, dropout=0.5)
    x = torch.randn(T, B, I, dtype=torch.float64)
    ours.eval()
    ref.eval()
    torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-10, atol=1e-12)   # no dropout
    ours.train()
    torch.manual_seed(5)
    a, _ = ours(x)
    torch.manual_seed(5)
    b, _ = ours(x)
    c, _ = ours(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)      # torch's RNG drives the masks
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, ours.eval()(x)[0])


def test_dropout_gradients_are_consistent():
    """With the RNG reset, train-mode forward/backward passes gradcheck (same masks)."""
    m = gt.GRU(2, 2, num_layers=2, dropout=0.4, dtype=torch.float64, backend="numpy")
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)

    def fn(xx):
        torch.manual_seed(11)
        return m(xx)[0]

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- drop-in
def _training_run(lstm_cls, dtype, steps=3, **lstm_kwargs):
    """A small torch training script; only the LSTM class differs between runs."""
    torch.manual_seed(1234)
    vocab, emb, hidden = 11, 5, 6
    model = torch.nn.ModuleDict(dict(
        embed=torch.nn.Embedding(vocab, emb),
        lstm=lstm_cls(emb, hidden, num_layers=2, batch_first=True, **lstm_kwargs),
        head=torch.nn.Linear(hidden, vocab),
    )).to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    g = torch.Generator().manual_seed(99)
    history = []
    for _ in range(steps):
        tokens = torch.randint(0, vocab, (4, 7), generator=g)
        h, _ = model["lstm"](model["embed"](tokens[:, :-1]))
        logits = model["head"](h)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        history.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        opt.step()
    return history, {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("backend", ["auto", "numpy"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_training_script_swap_gives_same_gradients(dtype, backend):
    hist_ref, final_ref = _training_run(torch.nn.LSTM, dtype)
    # "auto" passes no backend at all: the script is literally unchanged but for the class
    hist_ours, final_ours = _training_run(gt.LSTM, dtype,
                                          **({} if backend == "auto" else dict(backend=backend)))
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for (loss_r, grads_r), (loss_o, grads_o) in zip(hist_ref, hist_ours):
        assert loss_o == pytest.approx(loss_r, rel=tol["rtol"] * 10)
        assert grads_o.keys() == grads_r.keys()
        for n in grads_r:
            torch.testing.assert_close(grads_o[n], grads_r[n], **tol, msg=n)
    for n in final_ref:
        torch.testing.assert_close(final_ours[n], final_ref[n], **tol, msg=n)


# ----------------------------------------------------------------------------- errors
def test_lstm_proj_size_is_supported_with_torchs_parameters():
    """proj_size > 0 runs (tests/test_proj_size.py checks the numbers); bad values raise
    what torch raises (TORCH_ERROR_CASES below)."""
    ours, ref = gt.LSTM(3, 4, proj_size=2, backend="numpy"), torch.nn.LSTM(3, 4, proj_size=2)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == \
        [(n, p.shape) for n, p in ref.named_parameters()]
    out, (h, c) = ours(torch.randn(5, 2, 3))
    assert out.shape == (5, 2, 2) and h.shape == (1, 2, 2) and c.shape == (1, 2, 4)


def _raised(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the point is to compare what is raised
        return exc
    raise AssertionError("no exception raised")


# (case, build(nn) -> a callable that raises, gpurnn's own type for the situation or None)
TORCH_ERROR_CASES = {
    "input_size": (lambda nn: lambda: nn.LSTM(3, 4, 2)(torch.randn(T, B, 5)), ValueError),
    "input_rank": (lambda nn: lambda: nn.GRU(3, 4)(torch.randn(1, T, B, 3)), ValueError),
    "input_dtype": (lambda nn: lambda: nn.GRU(3, 4)(torch.randn(T, B, 3, dtype=torch.float64)), TypeError),
    "h0_shape": (lambda nn: lambda: nn.GRU(3, 4, 2)(torch.randn(T, B, 3), torch.zeros(1, B, 4)), ValueError),
    "c0_shape": (lambda nn: lambda: nn.LSTM(3, 4)(torch.randn(T, B, 3), (torch.zeros(1, B, 4),
                                                                         torch.zeros(1, B, 5))), ValueError),
    "h0_shape_proj": (lambda nn: lambda: nn.LSTM(3, 4, proj_size=2)(
        torch.randn(T, B, 3), (torch.zeros(1, B, 4), torch.zeros(1, B, 4))), ValueError),
    "h0_dtype": (lambda nn: lambda: nn.GRU(3, 4)(torch.randn(T, B, 3),
                                                torch.zeros(1, B, 4, dtype=torch.float64)), TypeError),
    "hx_rank_unbatched": (lambda nn: lambda: nn.GRU(3, 4)(torch.randn(T, 3), torch.zeros(1, 1, 4)), ValueError),
    "empty_sequence": (lambda nn: lambda: nn.RNN(3, 4)(torch.randn(0, B, 3)), ValueError),
    "empty_sequence_unbatched": (lambda nn: lambda: nn.LSTM(3, 4)(torch.randn(0, 3)), ValueError),
    "rnn_proj_size": (lambda nn: lambda: nn.RNN(3, 4, proj_size=1), None),
    "gru_proj_size": (lambda nn: lambda: nn.GRU(3, 4, proj_size=1), None),
    "lstm_proj_size_too_big": (lambda nn: lambda: nn.LSTM(3, 4, proj_size=4), None),
    "lstm_proj_size_bigger": (lambda nn: lambda: nn.LSTM(3, 4, proj_size=5), None),
    "lstm_proj_size_negative": (lambda nn: lambda: nn.LSTM(3, 4, proj_size=-1), None),
    "nonlinearity": (lambda nn: lambda: nn.RNN(3, 4, nonlinearity="sigmoid"), None),
    "dropout_range": (lambda nn: lambda: nn.LSTM(3, 4, dropout=1.5), None),
    "hidden_size_zero": (lambda nn: lambda: nn.GRU(3, 0), None),
    "hidden_size_type": (lambda nn: lambda: nn.GRU(3, 4.0), None),
    "bias_type": (lambda nn: lambda: nn.RNN(3, 4, bias=1), None),
}


class _Ours:
    """gpurnn.torch spelled like torch.nn, on the numpy backend."""
    RNN, LSTM, GRU = (lambda *a, _c=c, **k: _c(*a, backend="numpy", **k) for c in (gt.RNN, gt.LSTM, gt.GRU))


@pytest.mark.parametrize("case", sorted(TORCH_ERROR_CASES))
def test_errors_are_raised_as_torch_raises_them(case):
    """Every exception is an instance of torch.nn's type for the same mistake (so code written
    for torch catches it) and of gpurnn's own; constructor messages are torch's."""
    build, gpurnn_type = TORCH_ERROR_CASES[case]
    theirs, ours = _raised(build(torch.nn)), _raised(build(_Ours))
    assert isinstance(ours, type(theirs)), (case, type(ours).__mro__, type(theirs))
    if gpurnn_type is not None:
        assert isinstance(ours, gpurnn_type), case
    else:
        assert str(ours) == str(theirs), case


def test_constructor_takes_torch_arguments_positionally_and_by_keyword():
    for args, kwargs in [((3, 4, 2, "relu", False, True, 0.0, True), {}),
                         ((3, 4), dict(num_layers=2, nonlinearity="relu", bias=False, batch_first=True,
                                       bidirectional=True, device="cpu", dtype=torch.float64))]:
        ours, ref = gt.RNN(*args, **kwargs), torch.nn.RNN(*args, **kwargs)
        for attr in ("nonlinearity", "num_layers", "bias", "batch_first", "bidirectional", "mode"):
            assert getattr(ours, attr) == getattr(ref, attr), attr
        assert [p.dtype for p in ours.parameters()] == [p.dtype for p in ref.parameters()]
    ours, ref = gt.GRU(3, 4, 1, False, True, 0.0, True), torch.nn.GRU(3, 4, 1, False, True, 0.0, True)
    assert list(dict(ours.named_parameters())) == list(dict(ref.named_parameters()))
    assert ours.batch_first and ours.bidirectional and not ours.bias
    assert gt.LSTM(3, 4, proj_size=0, device="cpu").proj_size == 0
    with pytest.warns(UserWarning, match="dropout"):       # torch's own warning
        gt.LSTM(3, 4, dropout=0.5)


def test_half_precision_is_unsupported():
    with pytest.raises(gt.UnsupportedError, match="float16.*float32"):
        gt.GRU(3, 4, dtype=torch.float16)
    m = gt.GRU(3, 4, backend="numpy").to(torch.bfloat16)
    with pytest.raises(gt.UnsupportedError, match="bfloat16.*float"):
        m(torch.randn(T, B, 3, dtype=torch.bfloat16))


def test_backend_device_mismatch_and_unknown_backend():
    with pytest.raises(ValueError, match="backend.*'tpu'"):
        gt.LSTM(3, 4, backend="tpu")
    # a host backend object and a CPU tensor work; 'cuda' on CPU tensors is refused clearly
    gt.LSTM(3, 4, backend=gpurnn.get_backend("numpy"))(torch.randn(2, 1, 3))
    with pytest.raises(gt.UnsupportedError, match="backend='cuda' needs CUDA tensors"):
        gt._resolve_backend("cuda", torch.device("cpu"), torch.float32)
    with pytest.raises(gt.UnsupportedError, match="runs on host memory.*backend='cuda'"):
        gt._resolve_backend("numpy", torch.device("cuda", 0), torch.float32)
    with pytest.raises(gt.UnsupportedError, match="device type 'meta'"):
        gt._resolve_backend("auto", torch.device("meta"), torch.float32)


def test_bad_inputs_name_the_argument():
    m = gt.LSTM(3, 4, num_layers=2, backend="numpy")
    x = torch.randn(T, B, 3)
    with pytest.raises(ValueError, match="input_size 3"):
        m(torch.randn(T, B, 5))
    with pytest.raises(ValueError, match="2 \\(unbatched\\) or 3 dimensions"):
        m(torch.randn(1, T, B, 3))
    with pytest.raises(TypeError, match="dtype torch.float32.*float64"):
        m(x.double())
    with pytest.raises(ValueError, match="h0: expected shape \\(2, 3, 4\\)"):
        m(x, (torch.zeros(1, B, 4), torch.zeros(2, B, 4)))
    with pytest.raises(TypeError, match="tuple \\(h0, c0\\)"):
        m(x, torch.zeros(2, B, 4))
    with pytest.raises(TypeError, match="one tensor h0"):
        gt.GRU(3, 4, backend="numpy")(x, (torch.zeros(1, B, 4),))
    with pytest.raises(ValueError, match="lengths"):
        m(x, lengths=[1, 2, T + 1])
    with pytest.raises(ValueError, match="lengths"):
        m(pack_padded_sequence(x, [5, 4, 2]), lengths=[5, 4, 2])
    with pytest.raises(TypeError, match="PackedSequence"):
        m(x.numpy())


# ----------------------------------------------------------------------------- token ids, need_dx
class _NeedDxSpy(gpurnn.backend.NumpyBackend):
    """The numpy backend, recording the need_dx of every backward call (layer 0 first
    backward-called last: the layers run top down)."""

    def __init__(self):
        super().__init__()
        self.need_dx = []

    def backward(self, tape, dout, dstate_n, truncate, need_dx=True):
        self.need_dx.append(need_dx)
        return super().backward(tape, dout, dstate_n, truncate, need_dx)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_input_without_grad_skips_the_dx_gemm(cell):
    """ctx.needs_input_grad: with x.requires_grad=False the first layer's backward gets
    need_dx=False (no dX GEMM) and the weights' gradients are exactly the same."""
    spy = _NeedDxSpy()
    ours, _ = make_pair(cell, backend=spy, num_layers=2)
    x = torch.randn(T, B, I, dtype=torch.float64)

    def weight_grads(x):
        ours.zero_grad(set_to_none=True)
        spy.need_dx.clear()
        out, hn = ours(x)
        (out.sin().sum() + sum(s.sum() for s in states(hn))).backward()
        return [p.grad.clone() for p in ours.parameters()], list(spy.need_dx)

    leaf = x.clone().requires_grad_()
    with_grad, calls_with = weight_grads(leaf)
    without, calls_without = weight_grads(x)
    assert leaf.grad is not None and x.grad is None
    assert calls_with == [True, True] and calls_without == [True, False]   # layer 1, layer 0
    for a, b in zip(with_grad, without):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_token_ids_equal_their_one_hot_rows(cell, backend):
    """An integer tensor of ids is the one-hot float input (the extension documented in
    gpurnn.torch): same outputs, same gradients, batch_first, unbatched and packed."""
    ours, _ = make_pair(cell, backend=backend, num_layers=2, bidirectional=True,
                        batch_first=True)
    ids = torch.randint(0, I, (B, T), generator=torch.Generator().manual_seed(1))
    one_hot = torch.nn.functional.one_hot(ids, I).to(torch.float64)

    def run(x):
        ours.zero_grad(set_to_none=True)
        out, hn = ours(x)
        (out.sin().sum() + sum(s.sum() for s in states(hn))).backward()
        return out.detach(), [p.grad.clone() for p in ours.parameters()]

    (out, grads), (want, want_grads) = run(ids), run(one_hot)
    assert torch.equal(out, want)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours(ids[0])[0], ours(one_hot[0])[0], rtol=0, atol=0)  # (T,)
    packed = pack_padded_sequence(ids, [5, 4, 2], batch_first=True)
    packed_one_hot = pack_padded_sequence(one_hot, [5, 4, 2], batch_first=True)
    torch.testing.assert_close(ours(packed)[0].data, ours(packed_one_hot)[0].data, rtol=0, atol=0)


def test_bad_token_ids_name_the_argument():
    m = gt.GRU(I, H, backend="numpy", batch_first=True)
    ids = torch.zeros(B, T, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"input: expected token ids in 0\.\.2 \(input_size 3\), "
                                         r"got 3 at index \(1, 4\)"):
        m(ids.index_put((torch.tensor(1), torch.tensor(4)), torch.tensor(3)))
    with pytest.raises(ValueError, match=r"input: expected token ids in 0\.\.2.*got -1"):
        m(ids - 1)
    with pytest.raises(TypeError, match=r"input: expected floats .* or integer token ids .*"
                                        r"got dtype torch.bool"):
        m(ids.bool())
    with pytest.raises(ValueError, match=r"input: expected 1 \(unbatched\) or 2 dimensions of "
                                         r"token ids, got shape \(3, 5, 1\)"):
        m(ids[..., None])


def test_double_backward_through_token_ids():
    """create_graph=True differentiates the torch-ops recurrence, whose projection of ids is
    F.embedding of W_ih^T: the same gradients as for the one-hot input."""
    torch.manual_seed(4)
    m = gt.LSTM(I, H, dtype=torch.float64, backend="numpy")
    ids = torch.tensor([[0, 2, 1], [2, 2, 0]])
    one_hot = torch.nn.functional.one_hot(ids, I).to(torch.float64)
    w = m.weight_ih_l0
    penalties = []
    for x in (ids, one_hot):
        (g,) = torch.autograd.grad(m(x)[0].pow(2).sum(), w, create_graph=True)
        penalties.append(torch.autograd.grad(g.pow(2).sum(), w)[0])
    torch.testing.assert_close(penalties[0], penalties[1], rtol=1e-12, atol=1e-12)
