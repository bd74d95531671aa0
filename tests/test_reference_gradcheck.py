"""The NumPy reference vs central finite differences, float64, every cell and option.

The loss probes every output: L = <out, G> + <h_n, Gh> (+ <c_n, Gc>) with random G.
Each parameter, input element and initial-state element is perturbed by +-eps and the
analytic gradient from model.backward must match to normwise relative error <= 1e-6.

Truncated BPTT is not the gradient of L; it is the exact gradient of a surrogate in
which the state entering each window of k steps is frozen at its forward value. The
truncation tests difference that surrogate, so they check what truncation computes.
"""
import numpy as np
import pytest

from helpers import (ALL_CELLS, is_lstm, make_model, numeric_grad, random_state, rel_err, reseed_dropout,
                     state_parts)

TOL = 1e-6


def _probe(model, rng, T, B):
    F = model.num_directions * model.output_size          # proj_size wide with a projection
    out_shape = (B, T, F) if model.batch_first else (T, B, F)
    g_out = rng.standard_normal(out_shape)
    g_state = tuple(rng.standard_normal(model._state_shape(B, k))
                    for k in range(2 if is_lstm(model) else 1))
    return g_out, g_state


def _loss(model, x, state, lengths, g_out, g_state):
    reseed_dropout(model)
    out, st = model(x, state, lengths=lengths)
    return float(np.sum(out * g_out) + sum(np.sum(s * g) for s, g in zip(state_parts(st), g_state)))


def _check_all_gradients(model, x, state, lengths, rng):
    T, B = (x.shape[1], x.shape[0]) if model.batch_first else x.shape[:2]
    g_out, g_state = _probe(model, rng, T, B)
    f = lambda: _loss(model, x, state, lengths, g_out, g_state)  # noqa: E731
    f()
    model.zero_grad()
    dh_n = g_state if is_lstm(model) else g_state[0]
    dx, dstate = model.backward(g_out, dh_n)
    for name, p in model.parameters().items():
        assert rel_err(model.grads[name], numeric_grad(f, p)) <= TOL, name
    assert rel_err(dx, numeric_grad(f, x)) <= TOL, "dx"
    for i, (s, ds) in enumerate(zip(state_parts(state), state_parts(dstate))):
        assert rel_err(ds, numeric_grad(f, s)) <= TOL, f"dstate[{i}]"


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("options", [
    dict(),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, dropout=0.4, batch_first=True),
    dict(bias=False),
], ids=["plain", "2layer-bidir", "2layer-dropout-batchfirst", "nobias"])
def test_reference_gradients_match_finite_differences(cell, options, rng):
    T, B, I, H = 5, 3, 3, 4
    model = make_model(cell, I, H, backend="numpy", dtype="float64", seed=3, **options)
    x = rng.standard_normal((B, T, I) if model.batch_first else (T, B, I))
    _check_all_gradients(model, x, random_state(model, rng, B), None, rng)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_reference_gradients_with_lengths(cell, rng):
    T, B, I, H = 6, 3, 2, 3
    model = make_model(cell, I, H, backend="numpy", dtype="float64", seed=4, bidirectional=True)
    x = rng.standard_normal((T, B, I))
    _check_all_gradients(model, x, random_state(model, rng, B), np.array([6, 2, 4]), rng)


def _frozen_window_surrogate(model, x, k, g_out, g_state):
    """L as a function of (params, x) with each window's incoming state frozen."""
    T = x.shape[0]
    carried = [None]
    state = None
    for start in range(0, T, k):                      # record the carried states once
        _, state = model(x[start:start + k], state)
        carried.append(state)

    def f():
        total, last = 0.0, None
        for w, start in enumerate(range(0, T, k)):
            out, last = model(x[start:start + k], carried[w])
            total += np.sum(out * g_out[start:start + k])
        return float(total + sum(np.sum(s * g) for s, g in zip(state_parts(last), g_state)))
    return f


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("k", [2, 3])
def test_truncated_gradient_is_the_frozen_window_gradient(cell, k, rng):
    T, B, I, H = 7, 2, 3, 4
    model = make_model(cell, I, H, backend="numpy", dtype="float64", seed=5, num_layers=2)
    x = rng.standard_normal((T, B, I))
    g_out, g_state = _probe(model, rng, T, B)
    f = _frozen_window_surrogate(model, x, k, g_out, g_state)
    model(x)
    model.zero_grad()
    dx, _ = model.backward(g_out, g_state if is_lstm(model) else g_state[0], truncate=k)
    for name, p in model.parameters().items():
        assert rel_err(model.grads[name], numeric_grad(f, p)) <= TOL, name
    assert rel_err(dx, numeric_grad(f, x)) <= TOL, "dx"


# ----------------------------------------------------------------------------- LSTM proj_size
# torch's projections (h_t = W_hr (o_t tanh c_t), gpurnn.reference): every parameter
# (weight_hr included), x, h0 (P wide) and c0 (H wide), odd shapes.
@pytest.mark.parametrize("options, lengths", [
    (dict(), None),
    (dict(num_layers=2, bidirectional=True), None),
    (dict(num_layers=2, bidirectional=True, batch_first=True), np.array([5, 2, 4])),
    (dict(bias=False, num_layers=2, dropout=0.3), np.array([3, 5, 1])),
], ids=["plain", "2layer-bidir", "2layer-bidir-batchfirst-lengths", "nobias-dropout-lengths"])
def test_projected_lstm_gradients_match_finite_differences(options, lengths, rng):
    T, B, I, H, P = 5, 3, 3, 5, 2
    model = make_model("lstm", I, H, backend="numpy", dtype="float64", seed=6, proj_size=P,
                       **options)
    assert any(name.startswith("weight_hr") for name in model.parameters())
    x = rng.standard_normal((B, T, I) if model.batch_first else (T, B, I))
    state = random_state(model, rng, B)
    assert state[0].shape[-1] == P and state[1].shape[-1] == H
    _check_all_gradients(model, x, state, lengths, rng)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_projected_truncated_gradient_is_the_frozen_window_gradient(k, rng):
    """With a projection the carried state is (h, c), h = W_hr r: frozen at each window's
    start, so W_hr gets no gradient through it there (what gpurnn.projection's cut
    correction reproduces on the fused backends)."""
    T, B, I, H, P = 7, 2, 3, 5, 3
    model = make_model("lstm", I, H, backend="numpy", dtype="float64", seed=8, num_layers=2,
                       proj_size=P)     # unidirectional: windows of a reverse pass differ
    x = rng.standard_normal((T, B, I))
    g_out, g_state = _probe(model, rng, T, B)
    f = _frozen_window_surrogate(model, x, k, g_out, g_state)
    model(x)
    model.zero_grad()
    dx, _ = model.backward(g_out, g_state, truncate=k)
    for name, p in model.parameters().items():
        assert rel_err(model.grads[name], numeric_grad(f, p)) <= TOL, name
    assert rel_err(dx, numeric_grad(f, x)) <= TOL, "dx"
