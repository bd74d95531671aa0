"""Shared test utilities: model construction, random inputs, loss probes, error norms."""
import numba
import numpy as np

import gpurnn
from gpurnn.cpu.sync import FLAG_STRIDE, barrier

ALL_CELLS = gpurnn.cells.TORCH_CELLS       # torch's four: the torch-style RNN/LSTM/GRU API
EVERY_CELL = gpurnn.cells.BUILTIN_CELLS    # every cell gpurnn ships (gpurnn.Recurrent)


def make_model(cell, input_size, hidden_size, **kw):
    return gpurnn.layers.make_layer(cell, input_size, hidden_size, **kw)


def is_lstm(model):
    return model.spec.n_states == 2


def random_state(model, rng, batch, dtype=None):
    dtype = dtype or model.dtype
    h0 = rng.standard_normal(model._state_shape(batch, 0)).astype(dtype)   # h: proj_size wide
    if is_lstm(model):                                                   # with a projection
        return h0, rng.standard_normal(model._state_shape(batch, 1)).astype(dtype)
    return h0


def state_parts(state):
    """(h,) or (h, c) from whatever a model returns as its state."""
    return tuple(state) if isinstance(state, tuple) else (state,)


def rel_err(a, b):
    """Normwise relative error ||a - b|| / ||b|| (absolute when b is zero)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    denom = np.linalg.norm(b)
    return np.linalg.norm(a - b) / (denom if denom > 0 else 1.0)


def reseed_dropout(model, seed=1234):
    """Make the next forward draw the same dropout masks as the last reseeded one."""
    model._dropout_rng = np.random.default_rng(seed)


def numeric_grad(f, array, eps=1e-6, indices=None):
    """Central differences of the scalar f() w.r.t. elements of ``array``.

    ``array`` is perturbed in place and restored. With ``indices`` (flat positions) only
    those elements are differenced and a 1-D array of their derivatives is returned;
    otherwise the full gradient, shaped like ``array``.
    """
    flat = array.reshape(-1)
    positions = range(flat.size) if indices is None else indices
    fd = np.zeros(len(positions))
    for n, i in enumerate(positions):
        orig = flat[i]
        flat[i] = orig + eps
        up = f()
        flat[i] = orig - eps
        down = f()
        flat[i] = orig
        fd[n] = (up - down) / (2 * eps)
    return fd.reshape(array.shape) if indices is None else fd


def host(a):
    """Any backend's array as a NumPy array."""
    from gpurnn.arrays import to_numpy
    return np.asarray(to_numpy(a))


def forward_backward(model, inputs, lengths=None, truncate=None):
    """Forward and backward of ``model`` on inputs (x, state, dout, dstate); every array
    the user can see, by name. All states' gradients are one array "dstate0": one may be
    exactly zero in exact arithmetic (sLSTM's stabiliser m: h does not depend on it), its
    own norm pure rounding noise."""
    out, state_n = model(inputs["x"], inputs["state"], lengths=lengths)
    dx, dstate0 = model.backward(inputs["dout"], inputs["dstate"], truncate=truncate)
    results = {"out": out, "dx": dx}
    results.update({f"state_n[{k}]": s for k, s in enumerate(state_parts(state_n))})
    results["dstate0"] = np.concatenate([host(s) for s in state_parts(dstate0)])
    results.update({f"grad {k}": g.copy() for k, g in model.grads.items()})   # grads accumulate in place
    return results


def assert_all_close(actual, expected, dtype, tolerance):
    """Same names, dtype ``dtype``, shapes, finite values (a NaN-poisoned buffer left
    unwritten fails) and normwise relative error <= tolerance, array by array."""
    assert actual.keys() == expected.keys()
    for name, want in expected.items():
        got = host(actual[name])
        assert got.dtype == np.dtype(dtype), f"{name}: dtype {got.dtype}, expected {dtype}"
        assert got.shape == np.shape(want), name
        assert np.all(np.isfinite(got)), f"{name}: non-finite values (a buffer left unwritten?)"
        err = rel_err(got, want)
        assert err <= tolerance, f"{name}: normwise relative error {err:.3g}"


def poisoned_cpu(**kw):
    """A "cpu" backend that fills every buffer its kernels must write with NaN first."""
    from gpurnn.cpu import CpuBackend
    return CpuBackend(poison=True, **kw)


def split_cpu():
    """poisoned_cpu split over 2 threads whatever the size (and however busy the machine),
    so the split paths run on small test shapes."""
    from gpurnn.cpu.kernels import SplitRules
    return poisoned_cpu(threads=2, split=SplitRules(units_per_part=1, rows_per_part=1,
                                                    split_macs=0, fit_free_cores=False))


def backend_or_skip(factory, name):
    """factory() (a fresh backend instance), or skip the test saying why ``name`` cannot run
    here (the cuda backend needs numba-cuda: a GPU, or its simulator, NUMBA_ENABLE_CUDASIM=1)."""
    import pytest
    try:
        impl = factory()
        if not impl.is_available():
            raise gpurnn.BackendUnavailable(f"{name} is not available here")
    except (ImportError, gpurnn.BackendUnavailable) as exc:
        pytest.skip(f"backend {name} cannot run here: {exc}")
    return impl



@numba.njit(nogil=True)
def exchange_steps(part, nparts, flags, slots, steps, errors):
    """Each step every part writes its slot, meets the others at the spin barrier, counts in
    errors[part] the slots not yet at this step, and meets again: a part that does not run
    at the same time as the others hangs it (the barrier's and the pools' tests)."""
    for step in range(1, steps + 1):
        slots[part * FLAG_STRIDE] = step
        barrier(flags, part, nparts, 2 * step - 1)
        for other in range(nparts):
            if slots[other * FLAG_STRIDE] != step:
                errors[part] += 1
        barrier(flags, part, nparts, 2 * step)
