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
from helpers import EVERY_CELL, assert_all_close, forward_backward

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


def _cpu(**kw):
    from gpurnn.cpu import CpuBackend
    return CpuBackend(poison=True, **kw)


def _cpu_split():
    from gpurnn.cpu.kernels import SplitRules
    return _cpu(threads=2, split=SplitRules(units_per_part=1, rows_per_part=1, split_macs=0,
                                            fit_free_cores=False))


def _cuda():
    from gpurnn.cuda.backend import CudaBackend
    return CudaBackend(poison=True)


# name -> (factory, options it runs: the CUDA simulator is slow, so it runs one that has everything)
BACKENDS = {
    "numpy-vectorised": (lambda: NumpyBackend(vectorised=True), tuple(OPTIONS)),
    "cpu": (_cpu, tuple(OPTIONS)),
    "cpu-split": (_cpu_split, ("lengths_truncate", "rows", "rows_lengths", "everything")),
    "cpu-openblas": (lambda: _cpu(gemm="openblas"), ("rows", "rows_lengths")),
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


@pytest.mark.parametrize("backend, cell, option, dtype", list(_cases()))
def test_backend_matches_the_numpy_oracle(backend, cell, option, dtype, rng):
    factory, _ = BACKENDS[backend]
    try:
        impl = factory()
        if not impl.is_available():
            raise gpurnn.BackendUnavailable(f"{backend} is not available here")
    except (ImportError, gpurnn.BackendUnavailable) as exc:
        pytest.skip(f"backend {backend} cannot run here: {exc}")
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
