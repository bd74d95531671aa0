"""gpurnn.torch under torch.compile and torch.export: the layers are the custom ops
gpurnn::layer_forward / gpurnn::layer_backward, so fullgraph=True compiles with no graph
break, and the compiled model's outputs and gradients equal the eager ones.

The compile tests use backend="aot_eager" (dynamo + AOTAutograd, the same graphs inductor
gets, without inductor's C++ build, which costs ~35 s cold on a 2-core machine)."""
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the 9 compile/export tests"
                            " in this module are skipped (pip install torch)")

import gpurnn  # noqa: E402
import gpurnn.torch as gt  # noqa: E402

CELLS = {"rnn_tanh": (gt.RNN, dict(nonlinearity="tanh")), "rnn_relu": (gt.RNN, dict(nonlinearity="relu")),
         "lstm": (gt.LSTM, {}), "gru": (gt.GRU, {})}


def states(hn):
    return list(hn) if isinstance(hn, tuple) else [hn]


def loss_and_grads(fn, module, x, *args):
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    loss = fn(x, *args)
    loss.backward()
    return loss.detach(), [x.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_compile_fullgraph_matches_eager(cell):
    cls, extra = CELLS[cell]
    torch.manual_seed(0)
    m = cls(3, 4, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64,
            backend="numpy", **extra)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    lengths = torch.tensor([5, 3])
    h0 = torch.randn(4, 2, 4, dtype=torch.float64)
    hx = (h0, h0.cos()) if cell == "lstm" else h0

    def f(x, hx):
        out, hn = m(x, hx, lengths=lengths)
        return out.sin().sum() + sum(s.pow(2).sum() for s in states(hn))

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")   # a graph break raises
    eager_loss, eager_grads = loss_and_grads(f, m, x, hx)
    loss, grads = loss_and_grads(compiled, m, x, hx)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-12, atol=1e-12)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif("cpu" not in gpurnn.available_backends(), reason="the Numba 'cpu' backend is not available here")
def test_compiled_model_trains_like_eager_on_the_cpu_backend():
    torch.manual_seed(1)
    lstm, head = gt.LSTM(3, 6, num_layers=2, backend="cpu"), torch.nn.Linear(6, 2)

    def f(x):
        return head(lstm(x)[0]).tanh().sum()

    x = torch.randn(7, 3, 3)
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for fn in (f, compiled):
        for p in (*lstm.parameters(), *head.parameters()):
            p.grad = None
        fn(x).backward()
        if fn is f:
            eager = [p.grad.clone() for p in lstm.parameters()]
    for g, e in zip([p.grad for p in lstm.parameters()], eager):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-7)


def test_torch_export_holds_the_custom_op():
    torch.manual_seed(2)
    m = gt.GRU(3, 4, num_layers=2, backend="numpy").eval()
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        ep = torch.export.export(m, (x,))
        ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
        assert "gpurnn.layer_forward.default" in ops
        x2 = torch.randn(5, 2, 3)
        for a, b in zip(ep.module()(x2), m(x2)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_custom_ops_pass_torch_library_opcheck():
    """Schema, fake (meta) implementation and autograd registration checked by torch itself."""
    torch.manual_seed(3)
    m = gt.LSTM(2, 3, bidirectional=True, dtype=torch.float64, backend="numpy")
    key = m._layer_key(0)
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    s0 = [torch.randn(2, 2, 3, dtype=torch.float64) for _ in range(2)]
    params = [p.detach().clone().requires_grad_() for p in m._layer_params(0)]
    torch.library.opcheck(gt._layer_forward, (key, x, s0, torch.tensor([4, 2]), params, True))


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_compiled_token_ids_and_inputs_without_grad_match_eager(backend):
    """Token ids and inputs that need no gradient (layer_backward's need_dx=False: no dX
    GEMM, an empty dx) compile with fullgraph=True to the eager gradients."""
    if backend not in gpurnn.available_backends():
        pytest.skip(f"the {backend!r} backend is not available here")
    torch.manual_seed(5)
    m = gt.LSTM(4, 3, num_layers=2, dtype=torch.float64, backend=backend)
    ids = torch.randint(0, 4, (6, 2))
    x = torch.nn.functional.one_hot(ids, 4).to(torch.float64)

    def f(inp):
        out, _ = m(inp)
        return out.sin().sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    grads = []
    for fn, inp in ((f, x), (compiled, x), (compiled, ids), (f, ids)):
        m.zero_grad(set_to_none=True)
        fn(inp).backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    for other in grads[1:]:
        for g, e in zip(other, grads[0]):
            torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
