"""One conformance suite for every backend and every registered cell.

Each backend configuration below runs forward + BPTT through gpurnn.Recurrent (so any
cell works) and must equal the numpy backend (the hand-written reference for torch's four
cells, the cell's own vectorised forward with its derived backward for the others) on
odd, distinct shapes, for every option of the table. Every buffer a backend must write
is NaN before it runs (poison=True), so an element left unwritten fails instead of
passing by luck. A new backend or cell gets all of it by appearing in BACKENDS or in the
registry.
"""
import numpy as np
import pytest

import gpurnn
from gpurnn.backend import NumpyBackend
from helpers import (EVERY_CELL, assert_all_close, backend_or_skip, forward_backward, host,
                     poisoned_cpu, rel_err, split_cpu)

TOLERANCE = {"float32": 2e-5, "float64": 1e-10}
T, I, H = 7, 5, 6                 # odd, distinct sizes so a transposed index cannot hide
LENGTHS = np.array([7, 2, 5])     # full, short and middle rows (B = 3)
LENGTHS_11 = np.array([7, 2, 5, 7, 1, 3, 7, 6, 4, 7, 2])     # the same for B = 11

# option -> (constructor kwargs, run kwargs); "rows" takes B = 11 (the CPU's BLAS-step path)
OPTIONS = {
    "plain": ({}, {}),
    "initial_state": ({}, {"state": True}),
    "lengths": ({}, {"lengths": LENGTHS}),
    "truncate": ({}, {"truncate": 3}),
    "lengths_truncate": ({}, {"lengths": LENGTHS, "truncate": 3}),
    "no_bias": ({"bias": False}, {}),
    "two_layers": ({"num_layers": 2}, {}),
    "bidirectional": ({"bidirectional": True}, {}),
    "two_layers_bidirectional": ({"num_layers": 2, "bidirectional": True}, {}),
    "dropout": ({"num_layers": 2, "dropout": 0.4}, {}),
    "rows": ({}, {"batch": 11, "state": True, "truncate": 4}),
    "rows_lengths": ({}, {"batch": 11, "lengths": LENGTHS_11, "truncate": 3}),
    "everything": ({"num_layers": 2, "bidirectional": True, "dropout": 0.3, "batch_first": True},
                   {"state": True, "lengths": LENGTHS, "truncate": 2}),
}


def _cuda():
    from gpurnn.cuda.backend import CudaBackend
    return CudaBackend(poison=True)


# name -> (factory, options it runs: the CUDA simulator is slow, so it runs one that has everything)
BACKENDS = {
    "numpy-vectorised": (lambda: NumpyBackend(vectorised=True), tuple(OPTIONS)),
    "cpu": (poisoned_cpu, tuple(OPTIONS)),
    "cpu-split": (split_cpu, ("lengths_truncate", "rows", "rows_lengths", "everything")),
    "cpu-openblas": (lambda: poisoned_cpu(gemm="openblas"), ("rows", "rows_lengths")),
    "cuda": (_cuda, ("everything",)),
}


def _cases():
    for backend, (_, options) in BACKENDS.items():
        for cell in EVERY_CELL:
            if backend == "numpy-vectorised" and gpurnn.cells.get_cell(cell).reference is None:
                continue        # that IS the oracle for this cell
            for option in options:
                for dtype in ("float32", "float64"):
                    yield pytest.param(backend, cell, option, dtype, id=f"{backend}-{cell}-{option}-{dtype}")


def _inputs(model, rng, batch, with_state):
    LD, D, S = model.num_layers * model.num_directions, model.num_directions, model.spec.n_states
    shape = lambda *s: rng.standard_normal(s).astype(model.dtype)   # noqa: E731
    x = shape(batch, T, I) if model.batch_first else shape(T, batch, I)
    dout = shape(batch, T, D * H) if model.batch_first else shape(T, batch, D * H)
    states = lambda: tuple(rng.uniform(0.1, 1.0, (LD, batch, H)).astype(model.dtype)   # noqa: E731
                           for _ in range(S))
    return dict(x=x, state=states() if with_state else None, dout=dout, dstate=states())


def _backend(name):
    """A fresh instance of backend ``name`` ("numpy" or a BACKENDS entry), or a skip."""
    factory = {"numpy": NumpyBackend, **{k: f for k, (f, _) in BACKENDS.items()}}[name]
    return backend_or_skip(factory, name)


@pytest.mark.parametrize("backend, cell, option, dtype", list(_cases()))
def test_backend_matches_the_numpy_oracle(backend, cell, option, dtype, rng):
    impl = _backend(backend)
    ctor, run_kw = OPTIONS[option]
    batch = run_kw.get("batch", 3)
    kw = dict(dtype=dtype, seed=7, **ctor)
    oracle = gpurnn.Recurrent(cell, I, H, backend=NumpyBackend(), **kw)
    model = gpurnn.Recurrent(cell, I, H, backend=impl, **kw)
    model.load_state_dict(oracle.state_dict())
    inputs = _inputs(oracle, rng, batch, run_kw.get("state", False))
    lengths = run_kw.get("lengths")
    expected = forward_backward(oracle, inputs, lengths, run_kw.get("truncate"))
    actual = forward_backward(model, inputs, lengths, run_kw.get("truncate"))
    assert_all_close(actual, expected, dtype, TOLERANCE[dtype])


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("cell", EVERY_CELL)
def test_backward_keeps_its_tape_and_accumulates(backend, cell, rng):
    """backward must not consume its tape: a second call gives the same dx and exactly
    twice the gradients."""
    model = gpurnn.Recurrent(cell, I, H, backend=backend, dtype="float64", seed=2)
    inputs = _inputs(model, rng, 3, True)
    first = forward_backward(model, inputs, LENGTHS)
    dx_again, _ = model.backward(inputs["dout"], inputs["dstate"])
    np.testing.assert_array_equal(dx_again, first["dx"])
    for name, g in model.grads.items():
        np.testing.assert_allclose(g, 2 * first[f"grad {name}"], rtol=1e-14, atol=0)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_every_backend_checks_its_input_the_same_way(backend, rng):
    """The checks live in gpurnn.layers, above every backend: the same errors everywhere."""
    model = gpurnn.Recurrent("slstm", I, H, backend=backend, dtype="float64")
    x = rng.standard_normal((T, 3, I))
    cases = [
        (lambda: model(x[0]), ValueError, r"x: expected 3 dimensions"),
        (lambda: model(x.astype(np.float32)), TypeError, "x: expected dtype float64, got float32"),
        (lambda: model(x, lengths=[7, 0, 2]), ValueError, r"lengths: expected every length in 1\.\.7"),
        (lambda: model(x, (None,) * 3), TypeError, r"state0: expected a tuple of 4 states"),
        (lambda: model(x, (None, np.zeros((1, 3, H + 1)), None, None)), ValueError,
         r"state0\[1\] \(c\): expected shape \(1, 3, 6\)"),
    ]
    for call, exc, message in cases:
        with pytest.raises(exc, match=message):
            call()
    model(x)
    with pytest.raises(ValueError, match=r"dstate_n\[3\] \(m\): expected shape"):
        model.backward(np.zeros((T, 3, H)), (None, None, None, np.zeros((1, 2, H))))


# --------------------------------------------------------------------------- token inputs
VOCAB = 7                               # odd sizes again: T=5, B=3, vocab 7, H=5
TOKEN_T, TOKEN_H = 5, 5
TOKEN_LENGTHS = np.array([5, 2, 4])
# backend -> (constructor kwargs, dtypes): the simulator is slow, so cuda runs one that
# has the reverse direction (ids reversed within their lengths) and batch_first
TOKEN_OPTIONS = {"cuda": (dict(bidirectional=True, batch_first=True), ("float32",))}
TOKEN_DEFAULT = (dict(num_layers=2, bidirectional=True, dropout=0.3, batch_first=True),
                 ("float32", "float64"))


def _token_cases():
    for backend in ("numpy", *BACKENDS):
        ctor, dtypes = TOKEN_OPTIONS.get(backend, TOKEN_DEFAULT)
        for cell in EVERY_CELL:
            for dtype in dtypes:
                yield pytest.param(backend, cell, dtype, id=f"{backend}-{cell}-{dtype}")


def _run(model, x, state, dout, dstate, need_dx=True):
    """Forward + backward (the dropout masks redrawn the same); every result by name."""
    model._dropout_rng = np.random.default_rng(5)
    model.zero_grad()
    out, state_n = model(x, state, lengths=TOKEN_LENGTHS)
    dx, dstate0 = model.backward(dout, dstate, truncate=2, need_dx=need_dx)
    results = {"out": out, **{f"state_n[{k}]": s for k, s in enumerate(state_n)},
               **{f"dstate0[{k}]": s for k, s in enumerate(dstate0)},
               **{f"grad {k}": g.copy() for k, g in model.grads.items()}}
    return {k: host(v) for k, v in results.items()}, dx


@pytest.mark.parametrize("backend, cell, dtype", list(_token_cases()))
def test_token_ids_equal_their_one_hot_rows(backend, cell, dtype, rng):
    """Integer ids (B, T) give what their explicit one-hot float input gives: the forward
    bitwise (the gather picks the very numbers the one-hot product sums), every gradient
    but dW_ih of the first layer bitwise (they see the same dG), dW_ih (the scatter-add:
    the same terms summed in another order) to rounding; dx is None. The backends write
    into NaN-poisoned buffers (poison=True), as above."""
    ctor, _ = TOKEN_OPTIONS.get(backend, TOKEN_DEFAULT)
    model = gpurnn.Recurrent(cell, VOCAB, TOKEN_H, backend=_backend(backend), dtype=dtype,
                             seed=3, **ctor)
    B, LD = len(TOKEN_LENGTHS), model.num_layers * model.num_directions
    ids = rng.integers(0, VOCAB, (B, TOKEN_T))
    ids[:, 1] = ids[0, 0]                       # repeated ids: the scatter must add them up
    one_hot = np.eye(VOCAB, dtype=dtype)[ids]   # (B, T, vocab), batch_first
    states = lambda: tuple(rng.uniform(0.1, 1.0, (LD, B, TOKEN_H)).astype(dtype)  # noqa: E731
                           for _ in range(model.spec.n_states))
    state, dstate = states(), states()
    dout = rng.standard_normal((B, TOKEN_T, model.num_directions * TOKEN_H)).astype(dtype)

    dense, dense_dx = _run(model, one_hot, state, dout, dstate)
    tokens, tokens_dx = _run(model, ids, state, dout, dstate)
    assert dense_dx is not None and tokens_dx is None
    assert tokens.keys() == dense.keys()
    for name, want in dense.items():
        got = tokens[name]
        assert got.dtype == np.dtype(dtype) and got.shape == want.shape, name
        assert np.all(np.isfinite(got)), f"{name}: non-finite values (a buffer left unwritten?)"
        if name.startswith("grad weight_ih_l0"):
            assert rel_err(got, want) <= TOLERANCE[dtype], name
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)


# backend -> (cells, constructor kwargs) of the need_dx test (the simulator: one, one way)
NEED_DX = {"cuda": (("gru",), dict(num_layers=2))}
NEED_DX_DEFAULT = (EVERY_CELL, dict(num_layers=2, bidirectional=True))


@pytest.mark.parametrize("backend, cell", [
    pytest.param(b, c, id=f"{b}-{c}") for b in ("numpy", *BACKENDS)
    for c in NEED_DX.get(b, NEED_DX_DEFAULT)[0]])
def test_need_dx_false_skips_dx_and_changes_nothing_else(backend, cell, rng):
    """backward(need_dx=False): dx is None and every other result is bitwise what
    need_dx=True gives (the layers above the first still get their input's gradient)."""
    impl = _backend(backend)
    model = gpurnn.Recurrent(cell, I, H, backend=impl, dtype="float64", seed=4,
                             **NEED_DX.get(backend, NEED_DX_DEFAULT)[1])
    inputs = _inputs(model, rng, 3, True)
    args = (inputs["x"], inputs["state"], inputs["dout"], inputs["dstate"])
    with_dx, dx = _run(model, *args)
    without, no_dx = _run(model, *args, need_dx=False)
    assert dx is not None and host(dx).shape == (T, 3, I) and no_dx is None
    assert without.keys() == with_dx.keys()
    for name, want in with_dx.items():
        np.testing.assert_array_equal(without[name], want, err_msg=name)
    # the contract: the backend's own backward returns dx None (its dX GEMM not run)
    spec = gpurnn.cells.get_cell(cell)
    x = impl.asarray(inputs["x"])
    w = [model.parameters()[f"{k}_l0"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    _, _, tape = impl.forward(spec, x, *w, (None,) * spec.n_states, None)
    g = impl.backward(tape, impl.asarray(inputs["dout"][:, :, :H].copy()), (None,) * spec.n_states,
                      None, need_dx=False)
    assert g.dx is None and host(g.dw_ih).shape == (spec.n_gates * H, I)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_bad_token_ids_name_the_argument_expected_and_actual(backend, rng):
    """Token ids are checked in gpurnn.layers, above every backend, in the user's layout."""
    model = gpurnn.Recurrent("lstm", VOCAB, TOKEN_H, backend=backend, batch_first=True)
    ids = rng.integers(0, VOCAB, (3, TOKEN_T))
    negative, too_big = ids.copy(), ids.copy()
    negative[1, 2] = -1
    too_big[2, 4], too_big[0, 0] = VOCAB, VOCAB + 3
    cases = [
        (negative, ValueError, r"x: expected token ids in 0\.\.6 \(input_size 7\), got -1 at "
                               r"index \(1, 2\) \(1 id\(s\) out of range\)"),
        (too_big, ValueError, r"x: expected token ids in 0\.\.6 \(input_size 7\), got 10 at "
                              r"index \(0, 0\) \(2 id\(s\) out of range\)"),
        (ids.astype(np.uint8) + np.uint8(250), ValueError, r"x: expected token ids in 0\.\.6"),
        (ids.astype(np.float32), ValueError,
         r"x: expected 3 dimensions \(B, T, I\), got shape \(3, 5\) of float32; the other input "
         r"accepted is integer token ids, 2 dimensions \(B, T\)"),
        (ids.astype(bool), TypeError, r"x: expected floats \(B, T, I\) or integer token ids "
                                      r"\(B, T\), got dtype bool"),
        (ids[0], ValueError, r"x: expected 3 dimensions \(B, T, I\), got shape \(5,\) of int64"),
        (np.eye(VOCAB, dtype=np.int64)[ids], TypeError, "x: expected dtype float32, got int64"),
    ]
    for x, exc, message in cases:
        with pytest.raises(exc, match=message):
            model(x)
    out, _ = model(ids.astype(np.int32))        # any integer dtype
    assert out.shape == (3, TOKEN_T, TOKEN_H) and out.dtype == np.float32
