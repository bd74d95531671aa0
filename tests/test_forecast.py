"""Forecasting: AR(tau) by least squares, the window MLP's backward, and the ranking the
lecture note predicts on the two synthetic series."""
import numpy as np
import pytest

from helpers import numeric_grad

from gpurnn.apps.forecast import (DEFAULT_AR_COEFFS, ARModel, LatentAR, WindowMLP, ar_series, evaluate_models,
                             lagged, quasi_periodic_series, results_table)


def test_ar_least_squares_recovers_the_coefficients():
    x = ar_series(20_000, seed=1)
    model = ARModel(len(DEFAULT_AR_COEFFS)).fit(x)
    np.testing.assert_allclose(model.coef[:-1], DEFAULT_AR_COEFFS, atol=0.03)
    pred = model.predict(x, 100)
    assert pred.shape == (len(x) - 100,)
    X, _ = lagged(x, 5)
    assert np.allclose(X[0], x[4::-1])     # row t holds x_{t-1}, ..., x_{t-tau}


def test_non_stationary_ar_is_refused():
    with pytest.raises(ValueError, match="stationary"):
        ar_series(100, coeffs=(1.2,))


def test_window_mlp_gradients_by_finite_differences(rng):
    mlp = WindowMLP(3, hidden=4)
    mlp.params = {"w1": rng.standard_normal((3, 4)), "b1": rng.standard_normal(4),
                  "w2": rng.standard_normal(4), "b2": np.array(0.3)}
    X, y = rng.standard_normal((6, 3)), rng.standard_normal(6)
    _, grads = mlp.loss_and_grads(X, y)
    for name, p in mlp.params.items():
        fd = numeric_grad(lambda: mlp.loss_and_grads(X, y)[0], p)
        assert fd == pytest.approx(grads[name], rel=1e-6, abs=1e-9), name


def models(tau):
    return [ARModel(tau), WindowMLP(tau, hidden=16, steps=800),
            LatentAR("gru", hidden=16, steps=400, backend="numpy"),
            LatentAR("rnn_tanh", hidden=16, steps=400, backend="numpy")]


def test_latent_models_win_when_the_far_past_matters():
    """Noisy long-period signal: a window of 5 noisy values cannot pin the phase down, a
    hidden state that integrates the whole past can."""
    mse, preds, z, split = evaluate_models(quasi_periodic_series(2500, seed=3), models(5))
    window_best = min(mse["AR(5)"], mse["MLP(window 5)"])
    latent_best = min(mse["GRU (latent AR)"], mse["RNN (latent AR)"])
    assert latent_best < 0.85 * window_best, mse
    assert all(len(p) == len(z) - split for p in preds.values())
    assert "GRU (latent AR)" in results_table({"s": (mse, preds, z, split)})


def test_ar_is_hard_to_beat_on_an_ar_process():
    x = ar_series(2500, seed=4)
    mse, _, _, split = evaluate_models(x, models(5))
    assert mse["AR(5)"] <= 1.05 * min(mse.values()), mse
    # the innovation variance (1, divided by the variance used to standardise) is the
    # floor no predictor can beat on average, and AR(5) reaches it
    floor = 1.0 / x[:split].var()
    assert mse["AR(5)"] < 1.1 * floor, (mse, floor)
