"""Gradient flow: shapes, agreement with the layers' own BPTT, and the trends it must show."""
import numpy as np
import pytest

import gpurnn
from gpurnn.apps.diagnostics import build_model, decay_rate, gradient_flow, gradient_flow_all, state_jacobians


@pytest.mark.parametrize("cell", gpurnn.cells.BUILTIN_CELLS)
def test_jacobian_product_equals_the_layers_bptt(rng, cell):
    """Stepping back through the per-step Jacobians gives exactly model.backward's dstate0,
    for every registered cell."""
    model = build_model(cell, hidden=6, input_size=3, seed=2)
    x = rng.standard_normal((9, 3))
    J, h = state_jacobians(model, x)
    S = 6 * model.spec.n_states
    assert J.shape == (9, S, S) and h.shape == (9, 6)
    out, hx = model(x[:, None, :])
    np.testing.assert_allclose(out[:, 0], h, rtol=1e-12, atol=1e-14)
    v = rng.standard_normal(6)
    dout = np.zeros_like(out)
    dout[-1, 0] = v
    _, dstate0 = model.backward(dout)
    g = np.r_[v, np.zeros(S - 6)]
    for t in range(8, -1, -1):
        g = g @ J[t]
    np.testing.assert_allclose(g, np.concatenate([d[0, 0] for d in dstate0]), rtol=1e-10, atol=1e-14)


def test_shapes_and_truncation():
    flow = gradient_flow("gru", T=30, hidden=8, truncate=10)
    for a in (flow.distance, flow.grad_norm, flow.grad_norm_truncated, flow.jacobian_norm):
        assert a.shape == (30,)
    assert flow.grad_norm[0] == pytest.approx(1.0) and flow.jacobian_norm[0] == pytest.approx(1.0)
    np.testing.assert_allclose(flow.grad_norm_truncated[:10], flow.grad_norm[:10])   # inside the window
    assert not flow.grad_norm_truncated[10:].any()                                      # nothing beyond it


def test_vanishing_exploding_and_gated_cells_carry_further():
    flows = gradient_flow_all(T=60, hidden=16, truncate=20)
    tanh, relu, lstm, gru = (decay_rate(flows[c]) for c in ("rnn_tanh", "rnn_relu", "lstm", "gru"))
    assert tanh < -0.1 and flows["rnn_tanh"].grad_norm[50] < 1e-6        # vanishing
    assert relu > 0.05 and flows["rnn_relu"].grad_norm[50] > 1e3         # exploding (large weights)
    assert lstm > tanh + 0.1 and gru > tanh + 0.1                     # gated cells carry further
    for c in ("lstm", "gru"):
        assert flows[c].grad_norm[50] > 1e3 * flows["rnn_tanh"].grad_norm[50]
    # the gradient norm is bounded by the Jacobian-product norm (unit gradient at the loss)
    for f in flows.values():
        assert np.all(f.grad_norm <= f.jacobian_norm * (1 + 1e-9))
