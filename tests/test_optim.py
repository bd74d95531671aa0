"""Optimizers (against torch.optim), clipping, and the gradients they step on (FD, float64)."""
import numpy as np
import pytest

from helpers import numeric_grad

from gpurnn.apps.charlm import CharLM
from gpurnn.train.optim import SGD, Adam, clip_grad_norm, global_norm


def run_ours(opt, params, grads_seq):
    for grads in grads_seq:
        opt.step(params, grads)
    return params


def run_torch(make_opt, params, grads_seq):
    import torch
    tensors = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt = make_opt(list(tensors.values()))
    for grads in grads_seq:
        for k, t in tensors.items():
            t.grad = torch.tensor(grads[k])
        opt.step()
    return {k: t.detach().numpy() for k, t in tensors.items()}


@pytest.mark.parametrize("name", ["sgd", "sgd_momentum", "adam"])
def test_optimizers_match_torch(rng, name):
    torch = pytest.importorskip("torch")
    params = {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}
    grads_seq = [{k: rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(6)]
    if name == "adam":
        ours, theirs = Adam(0.01, betas=(0.8, 0.99)), lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99))
    else:
        mu = 0.9 if name == "sgd_momentum" else 0.0
        ours, theirs = SGD(0.1, momentum=mu), lambda p: torch.optim.SGD(p, lr=0.1, momentum=mu)
    expected = run_torch(theirs, params, grads_seq)
    got = run_ours(ours, {k: v.copy() for k, v in params.items()}, grads_seq)
    for k in params:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-10, atol=1e-12)


def test_first_steps_follow_the_formulas(rng):
    """Without torch: Adam's bias-corrected first step is lr * g / (|g| + eps) ~ lr * sign(g);
    SGD with momentum mu moves by lr * g, then lr * (mu g + g)."""
    g = rng.standard_normal(4)
    p = {"w": np.zeros(4)}
    Adam(0.1, eps=1e-8).step(p, {"w": g})
    np.testing.assert_allclose(p["w"], -0.1 * g / (np.abs(g) + 1e-8), rtol=1e-12)
    p = {"w": np.zeros(4)}
    sgd = SGD(0.1, momentum=0.5)
    sgd.step(p, {"w": g})
    sgd.step(p, {"w": g})
    np.testing.assert_allclose(p["w"], -0.1 * g - 0.1 * 1.5 * g, rtol=1e-12)


def test_optimizer_updates_in_place_and_minimises_a_quadratic(rng):
    target = rng.standard_normal(5)
    x = np.zeros(5)
    params = {"x": x}
    opt = Adam(0.1)
    for _ in range(500):
        opt.step(params, {"x": 2 * (params["x"] - target)})
    assert params["x"] is x
    np.testing.assert_allclose(x, target, atol=1e-3)


def test_clip_grad_norm_returns_the_pre_clip_norm(rng):
    grads = [{"a": rng.standard_normal((3, 3))}, {"b": rng.standard_normal(4)}]
    before = np.sqrt(sum((g ** 2).sum() for d in grads for g in d.values()))
    norm = clip_grad_norm(grads, 0.5)
    assert norm == pytest.approx(before)
    assert global_norm(grads) == pytest.approx(0.5)
    untouched = {"c": np.array([0.3, 0.4])}
    assert clip_grad_norm(untouched, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(untouched["c"], [0.3, 0.4])
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(untouched, 0)
    with pytest.raises(TypeError, match="scalar_grad"):
        clip_grad_norm({"scalar_grad": np.float64(2.0)}, 1.0)     # could not be scaled in place


def test_optimizer_state_round_trip(rng):
    params = {"w": rng.standard_normal(3)}
    g = {"w": rng.standard_normal(3)}
    a = Adam(0.01)
    a.step(params, g)
    arrays, meta = a.state_dict()
    b = Adam(0.01)
    b.load_state_dict(arrays, meta)
    pa, pb = {"w": params["w"].copy()}, {"w": params["w"].copy()}
    a.step(pa, g)
    b.step(pb, g)
    np.testing.assert_array_equal(pa["w"], pb["w"])
    with pytest.raises(ValueError, match="optimizer state"):
        SGD(0.1).load_state_dict(arrays, meta)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_language_model_gradients_by_finite_differences(rng, cell):
    """The gradients the optimizer steps on (RNN + output layer, truncated window) are the
    derivatives of the window's loss, the carried-in state held fixed."""
    vocab = 5
    lm = CharLM(vocab, cell=cell, hidden=4, backend="numpy", dtype="float64", seed=3)
    x, y = rng.integers(0, vocab, (4, 2)), rng.integers(0, vocab, (4, 2))
    state0 = tuple(rng.standard_normal((1, 2, 4)) for _ in range(2)) if cell == "lstm" \
        else rng.standard_normal((1, 2, 4))

    def loss():
        out, _ = lm.rnn(lm.inputs(x), state0)
        return lm.head.nll(out, y) / y.size

    lm.zero_grad()
    lm.train_window(x, y, state0)
    grads = {k: v.copy() for k, v in lm.grads().items()}
    for name, p in lm.parameters().items():
        picked = rng.choice(p.size, min(6, p.size), replace=False)
        fd = numeric_grad(loss, p, indices=picked)
        analytic = grads[name].reshape(-1)[picked]
        assert np.all(np.abs(fd - analytic) <= 1e-6 * np.maximum(1.0, np.abs(fd))), name
