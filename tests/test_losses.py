"""Softmax cross-entropy and the output layer: values, stability, gradients (float64 FD)."""
import math

import numpy as np
import pytest

from helpers import numeric_grad

from gpurnn.train.losses import OutputLayer, cross_entropy, log_softmax, nats_to_bits, unigram_entropy_bits


def naive_nll(logits, targets):
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return -np.log(p[np.arange(len(targets)), targets])


def test_cross_entropy_matches_the_definition(rng):
    logits = rng.standard_normal((7, 5))
    targets = rng.integers(0, 5, 7)
    loss_sum, _ = cross_entropy(logits, targets, reduction="sum")
    loss_mean, _ = cross_entropy(logits, targets)
    assert loss_sum == pytest.approx(naive_nll(logits, targets).sum(), rel=1e-12)
    assert loss_mean == pytest.approx(loss_sum / 7, rel=1e-12)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, 1e4 + 3.0, 1e4]])
    loss, grad = cross_entropy(logits, np.array([0, 2]), reduction="sum")
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    # row 1: log-sum-exp = 1e4 + 3 + log(1 + e^-3), target logit 1e4
    assert loss == pytest.approx(3.0 + math.log1p(math.exp(-3.0)), rel=1e-12)
    assert np.allclose(np.exp(log_softmax(logits)).sum(axis=1), 1.0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_gradient_by_finite_differences(rng, reduction):
    logits = rng.standard_normal((4, 6))
    targets = rng.integers(0, 6, 4)
    _, grad = cross_entropy(logits, targets, reduction)
    fd = numeric_grad(lambda: cross_entropy(logits, targets, reduction)[0], logits)
    assert np.max(np.abs(fd - grad)) / np.max(np.abs(grad)) < 1e-7


def test_output_layer_backward_by_finite_differences(rng):
    head = OutputLayer(5, 7, dtype="float64", seed=1)
    head.parameters()["bias"][:] = rng.standard_normal(7)
    h = rng.standard_normal((3, 2, 5))          # (T, B, H)
    y = rng.integers(0, 7, (3, 2))
    loss, dh = head.loss_and_backward(h, y)
    assert loss == pytest.approx(head.nll(h, y) / 6, rel=1e-12)

    def loss_at():
        return cross_entropy(head.logits(h.reshape(-1, 5)), y.reshape(-1))[0]

    for name, analytic in (("weight", head.grads["weight"]), ("bias", head.grads["bias"])):
        fd = numeric_grad(loss_at, head.parameters()[name])
        assert np.max(np.abs(fd - analytic)) / np.max(np.abs(analytic)) < 1e-7, name
    fd_h = numeric_grad(loss_at, h)
    assert np.max(np.abs(fd_h - dh)) / np.max(np.abs(dh)) < 1e-7


def test_output_layer_grads_accumulate_until_zero_grad(rng):
    head = OutputLayer(4, 3, dtype="float64", seed=0)
    h, y = rng.standard_normal((5, 4)), rng.integers(0, 3, 5)
    head.loss_and_backward(h, y)
    once = head.grads["weight"].copy()
    head.loss_and_backward(h, y)
    assert np.allclose(head.grads["weight"], 2 * once)
    head.zero_grad()
    assert not head.grads["weight"].any()


def test_bits_and_unigram_entropy():
    assert nats_to_bits(math.log(2.0)) == pytest.approx(1.0)
    assert unigram_entropy_bits(np.arange(8).repeat(3)) == pytest.approx(3.0)
    assert unigram_entropy_bits(np.zeros(10, int)) == pytest.approx(0.0)


def test_cross_entropy_rejects_bad_shapes():
    with pytest.raises(ValueError, match="targets"):
        cross_entropy(np.zeros((3, 4)), np.zeros(2, int))
    with pytest.raises(ValueError, match="logits"):
        cross_entropy(np.zeros(4), np.zeros(4, int))
