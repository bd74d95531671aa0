"""Layer semantics on the host backends: batch_first, lengths, truncation, the window
driver, gradient accumulation, state_dict, and clear errors for bad input."""
import numpy as np
import pytest

import gpurnn
from helpers import ALL_CELLS, is_lstm, make_model, random_state, rel_err, state_parts

HOST_BACKENDS = [b for b in ("numpy", "cpu") if b in gpurnn.available_backends()]


@pytest.fixture(params=HOST_BACKENDS)
def backend(request):
    return request.param


def _model(cell, backend, **kw):
    kw.setdefault("dtype", "float64")
    return make_model(cell, 5, 6, backend=backend, seed=11, **kw)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_batch_first_is_a_transpose(cell, backend, rng):
    a = _model(cell, backend, num_layers=2, bidirectional=True)
    b = _model(cell, backend, num_layers=2, bidirectional=True, batch_first=True)
    x = rng.standard_normal((7, 3, 5))
    lengths = np.array([7, 2, 5])
    out_a, st_a = a(x, lengths=lengths)
    out_b, st_b = b(x.transpose(1, 0, 2).copy(), lengths=lengths)
    np.testing.assert_allclose(out_b.transpose(1, 0, 2), out_a, atol=1e-12)
    for sa, sb in zip(state_parts(st_a), state_parts(st_b)):
        np.testing.assert_allclose(sb, sa, atol=1e-12)
    g = rng.standard_normal(out_a.shape)
    dx_a, _ = a.backward(g)
    dx_b, _ = b.backward(g.transpose(1, 0, 2).copy())
    np.testing.assert_allclose(dx_b.transpose(1, 0, 2), dx_a, atol=1e-12)
    for name in a.grads:
        np.testing.assert_allclose(b.grads[name], a.grads[name], atol=1e-12)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_lengths_match_running_each_row_alone(cell, backend, rng):
    """Padded outputs are zero, h_n is the last valid state, padding gets no gradient."""
    model = _model(cell, backend, num_layers=2, bidirectional=True)
    T, B = 6, 3
    lengths = np.array([6, 1, 4])
    x = rng.standard_normal((T, B, 5))
    state = random_state(model, rng, B)
    out, st = model(x, state, lengths=lengths)
    g = rng.standard_normal(out.shape)
    dx, dst = model.backward(g)
    batched_grads = {k: v.copy() for k, v in model.grads.items()}
    summed = {k: np.zeros_like(v) for k, v in batched_grads.items()}
    for b, L in enumerate(lengths):
        row_state = tuple(s[:, b:b + 1] for s in state_parts(state))
        row_out, row_st = model(x[:L, b:b + 1], row_state if is_lstm(model) else row_state[0])
        np.testing.assert_allclose(out[:L, b:b + 1], row_out, atol=1e-12)
        assert np.all(out[L:, b] == 0)
        for s, rs in zip(state_parts(st), state_parts(row_st)):
            np.testing.assert_allclose(s[:, b:b + 1], rs, atol=1e-12)
        model.zero_grad()
        row_dx, row_dst = model.backward(g[:L, b:b + 1])
        np.testing.assert_allclose(dx[:L, b:b + 1], row_dx, atol=1e-12)
        assert np.all(dx[L:, b] == 0)
        for s, rs in zip(state_parts(dst), state_parts(row_dst)):
            np.testing.assert_allclose(s[:, b:b + 1], rs, atol=1e-12)
        for k in summed:
            summed[k] += model.grads[k]
    for k in summed:
        np.testing.assert_allclose(batched_grads[k], summed[k], atol=1e-10)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_padding_values_do_not_matter(cell, backend, rng):
    model = _model(cell, backend, bidirectional=True)
    lengths = np.array([3, 5])
    x = rng.standard_normal((5, 2, 5))
    y = x.copy()
    y[3:, 0] = 1e3                                    # garbage in the padding
    out_x, _ = model(x, lengths=lengths)
    out_y, _ = model(y, lengths=lengths)
    np.testing.assert_array_equal(out_x, out_y)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_truncate_at_least_T_is_full_bptt(cell, backend, rng):
    model = _model(cell, backend, num_layers=2)
    x = rng.standard_normal((5, 2, 5))
    out, _ = model(x)
    g = rng.standard_normal(out.shape)
    dx_full, _ = model.backward(g)
    full = {k: v.copy() for k, v in model.grads.items()}
    for k in (5, 9):
        model.zero_grad()
        dx_t, _ = model.backward(g, truncate=k)
        np.testing.assert_allclose(dx_t, dx_full, atol=1e-12)
        for name in full:
            np.testing.assert_allclose(model.grads[name], full[name], atol=1e-12)
    model.zero_grad()
    model.backward(g, truncate=2)
    assert rel_err(model.grads["weight_hh_l0"], full["weight_hh_l0"]) > 1e-6, "truncation changed nothing"


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_window_driver_equals_manual_chunking_and_truncate(cell, batch_first, backend, rng):
    k, T, B = 3, 8, 2
    model = _model(cell, backend, num_layers=2, batch_first=batch_first)
    x = rng.standard_normal((B, T, 5) if batch_first else (T, B, 5))
    g = rng.standard_normal((B, T, 6) if batch_first else (T, B, 6))
    tax = 1 if batch_first else 0

    def window(a, start):
        return a[:, start:start + k] if batch_first else a[start:start + k]

    def loss_fn(out, start):
        gw = window(g, start)
        return float(np.sum(out * gw)), gw

    losses, state = gpurnn.tbptt_windows(model, x, k, loss_fn)
    driver = {n: v.copy() for n, v in model.grads.items()}

    model.zero_grad()                                  # the same loop written by hand
    manual_state, manual_losses = None, []
    for start in range(0, T, k):
        out, manual_state = model(window(x, start), manual_state)
        manual_losses.append(float(np.sum(out * window(g, start))))
        model.backward(window(g, start))
    assert losses == pytest.approx(manual_losses, rel=1e-12)
    for s, m in zip(state_parts(state), state_parts(manual_state)):
        np.testing.assert_allclose(s, m, atol=1e-12)

    model.zero_grad()                                  # one forward, truncated backward
    out, full_state = model(x)
    model.backward(g, truncate=k)
    for s, m in zip(state_parts(full_state), state_parts(state)):
        np.testing.assert_allclose(s, m, atol=1e-12)
    assert np.sum(out * g) == pytest.approx(sum(losses), rel=1e-10)
    for n in driver:
        np.testing.assert_allclose(model.grads[n], driver[n], atol=1e-10, err_msg=n)
    assert out.shape[tax] == T


def test_window_driver_calls_after_window_and_rejects_bidirectional(rng):
    model = _model("gru", "numpy")
    seen = []
    x = rng.standard_normal((7, 1, 5))
    gpurnn.tbptt_windows(model, x, 3, lambda out, s: (0.0, np.zeros_like(out)),
                         after_window=lambda start, loss: seen.append(start))
    assert seen == [0, 3, 6]
    with pytest.raises(ValueError, match="unidirectional"):
        gpurnn.tbptt_windows(_model("gru", "numpy", bidirectional=True), x, 3, None)
    with pytest.raises(ValueError, match="k: expected an integer >= 1, got 0"):
        gpurnn.tbptt_windows(model, x, 0, None)


@pytest.mark.parametrize("batch_first", [False, True])
def test_window_driver_takes_token_ids(batch_first, backend, rng):
    """tbptt_windows over integer ids (T, B) / (B, T) runs what it runs over their one-hot
    rows: the same losses, state and gradients (dx is skipped either way)."""
    model = _model("lstm", backend, num_layers=2, batch_first=batch_first)
    ids = rng.integers(0, 5, (2, 8) if batch_first else (8, 2))
    g = rng.standard_normal((2, 8, 6) if batch_first else (8, 2, 6))

    def run(x):
        model.zero_grad()
        window = (lambda a, s: a[:, s:s + 3]) if batch_first else (lambda a, s: a[s:s + 3])
        losses, state = gpurnn.tbptt_windows(
            model, x, 3, lambda out, s: (float(np.sum(out * window(g, s))), window(g, s)))
        return losses, state_parts(state), {n: v.copy() for n, v in model.grads.items()}

    (losses, state, grads), (want, want_state, want_grads) = run(ids), run(np.eye(5)[ids])
    assert losses == pytest.approx(want, rel=1e-12)
    for a, b in zip(state, want_state):
        np.testing.assert_array_equal(a, b)
    for n in grads:
        np.testing.assert_allclose(grads[n], want_grads[n], rtol=1e-12, atol=1e-14, err_msg=n)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_grads_accumulate_and_zero(cell, backend, rng):
    model = _model(cell, backend, bidirectional=True)
    x = rng.standard_normal((4, 2, 5))
    out, _ = model(x)
    g = rng.standard_normal(out.shape)
    model.backward(g)
    once = {k: v.copy() for k, v in model.grads.items()}
    assert all(np.any(v != 0) for v in once.values())
    model.backward(g)
    for k in once:
        np.testing.assert_allclose(model.grads[k], 2 * once[k], rtol=1e-12)
    model.zero_grad()
    assert all(np.all(v == 0) for v in model.grads.values())


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_state_dict_round_trip_in_torch_names(cell, rng):
    model = _model(cell, "numpy", num_layers=2, bidirectional=True)
    sd = model.state_dict()
    G = model.spec.n_gates
    assert list(sd)[:4] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    assert list(sd)[4:8] == [n + "_reverse" for n in list(sd)[:4]]
    assert sd["weight_ih_l0"].shape == (G * 6, 5)
    assert sd["weight_ih_l1"].shape == (G * 6, 12)
    other = _model(cell, "numpy", num_layers=2, bidirectional=True)
    other_sd = other.state_dict()
    other_sd["weight_hh_l1_reverse"] += 1.0
    model.load_state_dict({k: v.tolist() for k, v in other_sd.items()})   # any array-like
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, other_sd[k])
    sd2 = model.state_dict()
    sd2["weight_ih_l0"][:] = 0                        # a copy: the model is untouched
    assert np.any(model.state_dict()["weight_ih_l0"] != 0)


def test_failed_load_state_dict_leaves_weights_unchanged():
    model = _model("lstm", "numpy", num_layers=2)
    before = model.state_dict()
    bad = {k: v + 1 for k, v in before.items()}
    bad["bias_hh_l1"] = np.zeros(7)
    with pytest.raises(ValueError, match=r"state_dict\['bias_hh_l1'\]: expected shape \(24,\), got \(7,\)"):
        model.load_state_dict(bad)
    missing = dict(before)
    del missing["weight_hh_l0"]
    with pytest.raises(ValueError, match=r"missing keys \['weight_hh_l0'\]"):
        model.load_state_dict(missing)
    nan = dict(bad, bias_hh_l1=np.full(24, np.nan))
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.load_state_dict(nan)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("call, exc, message", [
    (lambda m, x: m(x[0]), ValueError, r"x: expected 3 dimensions \(T, B, I\), got shape \(3, 5\)"),
    (lambda m, x: m(x[:, :, :4]), ValueError, r"x: expected shape \(4, 3, 5\), got \(4, 3, 4\)"),
    (lambda m, x: m(x.astype(np.float32)), TypeError, "x: expected dtype float64, got float32"),
    (lambda m, x: m(x.astype(np.int64)), TypeError, "x: expected dtype float64, got int64"),
    (lambda m, x: m(x, lengths=[4, 0, 2]), ValueError, r"lengths: expected every length in 1..4.*got \[0\]"),
    (lambda m, x: m(x, lengths=[4, 5, 2]), ValueError, r"lengths: expected every length in 1..4.*got \[5\]"),
    (lambda m, x: m(x, lengths=[4, 2]), ValueError, r"lengths: expected shape \(3,\) to match the batch, got \(2,\)"),
    (lambda m, x: m(x, lengths=[4.5, 2, 1]), TypeError, "lengths: expected integers, got dtype float64"),
    (lambda m, x: m(x, np.zeros((1, 3, 6))), TypeError, r"hx: expected a tuple \(h0, c0\)"),
    (lambda m, x: m(x, (np.zeros((2, 3, 6)), None)), ValueError, r"h0: expected shape \(1, 3, 6\), got \(2, 3, 6\)"),
    (lambda m, x: m(x, (None, np.zeros((1, 3, 7)))), ValueError, r"c0: expected shape \(1, 3, 6\), got \(1, 3, 7\)"),
    (lambda m, x: m("text"), TypeError, r"x: expected an array of numbers, got str 'text'"),
])
def test_bad_forward_input_names_argument_expected_and_actual(call, exc, message, rng):
    model = _model("lstm", "numpy")
    x = rng.standard_normal((4, 3, 5))
    with pytest.raises(exc, match=message):
        call(model, x)


def test_bad_backward_input(rng):
    model = _model("gru", "numpy")
    with pytest.raises(RuntimeError, match="call forward first"):
        model.backward(np.zeros((4, 3, 6)))
    model(rng.standard_normal((4, 3, 5)))
    with pytest.raises(ValueError, match=r"dout: expected shape \(4, 3, 6\), got \(4, 3, 5\)"):
        model.backward(np.zeros((4, 3, 5)))
    with pytest.raises(ValueError, match=r"dh_n: expected shape \(1, 3, 6\), got \(3, 6\)"):
        model.backward(np.zeros((4, 3, 6)), np.zeros((3, 6)))
    with pytest.raises(ValueError, match="truncate: expected an integer >= 1, got 0"):
        model.backward(np.zeros((4, 3, 6)), truncate=0)


@pytest.mark.parametrize("kwargs, exc, message", [
    (dict(input_size=0), ValueError, "input_size: expected an integer >= 1, got 0"),
    (dict(hidden_size=2.5), ValueError, "hidden_size: expected an integer >= 1, got 2.5"),
    (dict(num_layers=0), ValueError, "num_layers: expected an integer >= 1, got 0"),
    (dict(dropout=1.0), ValueError, r"dropout: expected a probability in \[0, 1\), got 1.0"),
    (dict(backend="tpu"), ValueError, "backend: expected one of"),
    (dict(dtype="float16"), TypeError, "dtype: backend 'numpy' supports"),
])
def test_bad_constructor_arguments(kwargs, exc, message):
    args = dict(input_size=5, hidden_size=6, backend="numpy")
    args.update(kwargs)
    with pytest.raises(exc, match=message):
        gpurnn.LSTM(**args)
    with pytest.raises(ValueError, match="nonlinearity: expected 'tanh' or 'relu', got 'sigmoid'"):
        gpurnn.RNN(5, 6, nonlinearity="sigmoid")


def test_dropout_is_seeded_active_in_training_and_off_in_eval(rng):
    x = rng.standard_normal((5, 2, 5))
    a = _model("lstm", "numpy", num_layers=2, dropout=0.5)
    b = _model("lstm", "numpy", num_layers=2, dropout=0.5)
    np.testing.assert_array_equal(a(x)[0], b(x)[0])          # same seed, same masks
    a.eval()
    no_drop = _model("lstm", "numpy", num_layers=2)
    np.testing.assert_allclose(a(x)[0], no_drop(x)[0], atol=1e-12)
    assert np.abs(b(x)[0] - no_drop(x)[0]).max() > 1e-3


def test_available_backends_and_auto():
    names = gpurnn.available_backends()
    assert "numpy" in names
    auto_choice = next(n for n in names if n != "cuda" or gpurnn.get_backend("cuda").is_auto_candidate())
    assert gpurnn.LSTM(3, 4).backend == auto_choice
    assert gpurnn.get_backend("numpy").name == "numpy"


def test_auto_for_host_arrays_is_one_rule(monkeypatch):
    """get_backend("auto", device="cpu") is the rule the torch bridge uses for CPU tensors:
    cpu where Numba imports, else numpy; never the cuda backend."""
    from gpurnn import backend as registry
    host = gpurnn.get_backend("auto", device="cpu")
    assert host.name == ("cpu" if "cpu" in gpurnn.available_backends() else "numpy")
    monkeypatch.setattr(registry, "_usable", lambda name, auto=False: name == "numpy")
    assert gpurnn.get_backend("auto", device="cpu").name == "numpy"
    with pytest.raises(gpurnn.BackendUnavailable, match="no backend for cuda arrays"):
        gpurnn.get_backend("auto", device="cuda")
    with pytest.raises(ValueError, match="device: expected"):
        gpurnn.get_backend("auto", device="tpu")
