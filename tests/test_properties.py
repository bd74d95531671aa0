"""Property tests (hypothesis) over random small shapes and options, reference backend.

Properties that must hold for any cell and shape: rows of a batch are independent,
padding never changes anything, and backward is linear in
its incoming gradient. With torch installed, the outputs and gradients also match
torch.nn for the drawn configuration."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import ALL_CELLS, is_lstm, make_model, rel_err, state_parts

configs = st.fixed_dictionaries({
    "cell": st.sampled_from(ALL_CELLS),
    "T": st.integers(1, 6), "B": st.integers(1, 4), "I": st.integers(1, 5), "H": st.integers(1, 5),
    "num_layers": st.integers(1, 2), "bidirectional": st.booleans(), "bias": st.booleans(),
    "seed": st.integers(0, 2**31 - 1),
})
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _build(cfg):
    rng = np.random.default_rng(cfg["seed"])
    model = make_model(cfg["cell"], cfg["I"], cfg["H"], num_layers=cfg["num_layers"],
                       bidirectional=cfg["bidirectional"], bias=cfg["bias"], backend="numpy",
                       dtype="float64", seed=cfg["seed"])
    x = rng.standard_normal((cfg["T"], cfg["B"], cfg["I"]))
    lengths = rng.integers(1, cfg["T"] + 1, cfg["B"])
    return model, x, lengths, rng


@SETTINGS
@given(configs)
def test_rows_are_independent_and_padding_is_inert(cfg):
    model, x, lengths, rng = _build(cfg)
    out, st_n = model(x, lengths=lengths)
    garbage = x.copy()
    for b, L in enumerate(lengths):
        garbage[L:, b] = rng.standard_normal(garbage[L:, b].shape) * 100
    out_g, _ = model(garbage, lengths=lengths)
    np.testing.assert_array_equal(out, out_g)
    for b, L in enumerate(lengths):
        row_out, row_st = model(x[:L, b:b + 1])
        np.testing.assert_allclose(out[:L, b:b + 1], row_out, atol=1e-12)
        for s, r in zip(state_parts(st_n), state_parts(row_st)):
            np.testing.assert_allclose(s[:, b:b + 1], r, atol=1e-12)


@SETTINGS
@given(configs)
def test_backward_is_linear_in_the_incoming_gradient(cfg):
    model, x, lengths, rng = _build(cfg)
    out, _ = model(x, lengths=lengths)
    g1, g2 = rng.standard_normal(out.shape), rng.standard_normal(out.shape)
    dx1, _ = model.backward(g1)
    dx2, _ = model.backward(g2)
    both = {k: v.copy() for k, v in model.grads.items()}
    model.zero_grad()
    dx12, _ = model.backward(g1 + g2)
    np.testing.assert_allclose(dx12, dx1 + dx2, atol=1e-10)
    for k in both:
        np.testing.assert_allclose(model.grads[k], both[k], atol=1e-10)


try:
    import torch
    from test_torch_parity import run_torch
except ImportError:          # parity property needs torch; the others above do not
    torch = None

if torch is not None:
    @SETTINGS
    @given(configs)
    def test_matches_torch_on_random_configs(cfg):
        model, x, lengths, rng = _build(cfg)
        out, st_n = model(x, lengths=lengths)
        g_out = rng.standard_normal(out.shape)
        g_state = [rng.standard_normal(s.shape) for s in state_parts(st_n)]
        dx, _ = model.backward(g_out, tuple(g_state) if is_lstm(model) else g_state[0])
        zero_state = tuple(np.zeros_like(s) for s in state_parts(st_n))
        t_out, t_st, t_dx, _, t_grads = run_torch(
            cfg["cell"], model.state_dict(), x, zero_state if is_lstm(model) else zero_state[0],
            lengths, g_out, g_state, "float64", num_layers=cfg["num_layers"],
            bidirectional=cfg["bidirectional"], bias=cfg["bias"])
        assert rel_err(out, t_out) <= 1e-10
        assert rel_err(dx, t_dx) <= 1e-10
        for name, g in t_grads.items():
            assert rel_err(model.grads[name], g) <= 1e-10, name
