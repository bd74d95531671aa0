"""The CPU backend's recurrence split over threads (gpurnn/cpu/kernels.py Plan, sync.py,
parallel.py) against the NumPy reference, and the spin barrier on its own.

The split thresholds are lowered so that tiny odd shapes split too: H=37 over 3 parts gives
units 0-15, 16-31 and a ragged 32-36; B=11 over 3 parts gives rows 0-2, 3-6, 7-10. Every
buffer is NaN before the kernels run (poison=True), so a part that skips its share fails.
"""
import numba
import os

import numpy as np
import pytest

import gpurnn
from gpurnn.cpu import CpuBackend
from gpurnn.cpu import kernels
from gpurnn.cpu.parallel import recurrence_threads, run_parts, single_threaded_blas
from gpurnn.cpu.sync import FLAG_STRIDE, new_flags
from helpers import exchange_steps, rel_err

CELLS = {"rnn_tanh": (gpurnn.RNN, {}), "rnn_relu": (gpurnn.RNN, {"nonlinearity": "relu"}),
         "lstm": (gpurnn.LSTM, {}), "gru": (gpurnn.GRU, {})}
T, I, H = 9, 5, 37
TOLERANCE = {"float32": 2e-5, "float64": 1e-11}


SPLIT_SMALL = kernels.SplitRules(units_per_part=1, rows_per_part=1, split_macs=0,
                                 fit_free_cores=False)  # split tiny shapes


# (batch, threads, expected plan): units for B <= 8, rows above
PLANS = [(1, 2, ("units", 2)), (3, 3, ("units", 3)), (11, 2, ("rows", 2)), (11, 3, ("rows", 3))]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch,threads,plan", PLANS)
@pytest.mark.parametrize("cell", list(CELLS))
def test_split_matches_reference(cell, batch, threads, plan, dtype, rng):
    cls, extra = CELLS[cell]
    kw = dict(num_layers=2, bidirectional=True, dtype=dtype, seed=4, **extra)
    ref = cls(I, H, backend="numpy", **kw)
    backend = CpuBackend(poison=True, threads=threads, split=SPLIT_SMALL)
    cpu = cls(I, H, backend=backend, **kw)
    cpu.load_state_dict(ref.state_dict())
    lengths = rng.integers(1, T + 1, batch)
    lengths[0] = T
    x = rng.standard_normal((T, batch, I)).astype(dtype)
    dout = rng.standard_normal((T, batch, 2 * H)).astype(dtype)
    n_states = 2 if cell == "lstm" else 1
    h0 = tuple(rng.standard_normal((4, batch, H)).astype(dtype) for _ in range(n_states))
    h0 = h0 if n_states == 2 else h0[0]
    results = []
    for model in (cpu, ref):
        out, state = model(x, h0, lengths=lengths)
        dx, dstate = model.backward(dout, truncate=4)
        results.append([out, dx, *np.atleast_1d(state if n_states == 1 else state),
                        *(g.copy() for g in model.grads.values())])
    for direction_plans in cpu.last_plans.values():        # forward and backward
        assert [p["split"] for layer in direction_plans for p in layer] == [plan] * 4
        assert {p.get("gemms") for layer in direction_plans for p in layer} == {
            "parts" if plan[0] == "units" else None}
    for got, want in zip(*results):
        assert rel_err(got, want) <= TOLERANCE[dtype]


@pytest.mark.parametrize("need_dx", [True, False])
def test_gemms_in_parts_match_the_rows_path(need_dx, rng):
    """"units" parts doing their own units' GEMMs with X and W_ih inside their loop call
    (plan.gemms "parts": X W_ih^T, dW_ih, dW_hh, their rows of dX) give what the GEMMs split
    by rows around the loop give; every buffer poisoned, 3 parts over a ragged H."""
    from gpurnn.cpu.backend import CpuBackend as Backend
    spec = gpurnn.cells.get_cell("lstm")
    B = 3
    x = rng.standard_normal((T, B, I))
    w_ih, w_hh = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, H)) / 4
    b = rng.standard_normal(4 * H)
    dout = rng.standard_normal((T, B, H))
    lengths = np.array([T, 4, 7])

    class RowsOnly(Backend):
        @staticmethod
        def _njit_gemms_why(plan):
            return "test", False
    results = []
    for be in (Backend(poison=True, threads=3, split=SPLIT_SMALL),
               RowsOnly(poison=True, threads=3, split=SPLIT_SMALL)):
        out, state, tape = be.forward(spec, x, w_ih, w_hh, b, b, (None, None), lengths)
        g = be.backward(tape, dout, (None, None), 3, need_dx=need_dx)
        assert g.plan["split"] == ("units", 3)
        results.append((g.plan["gemms"], [out, *state, g.dw_ih, g.dw_hh, g.db_ih, *g.dstate0]
                        + ([g.dx] if need_dx else [])))
        assert (g.dx is None) != need_dx
    (parts, got), (rows, want) = results
    assert (parts, rows) == ("parts", "rows (test)")
    for a, b in zip(got, want):
        assert rel_err(a, b) <= 1e-12


def test_target_shapes_split_by_default():
    """Without lowered thresholds: the issue's B=1 LSTM splits its 256 units, B=32 its rows;
    too few units, rows or steps do not split."""
    fixed = kernels.SplitRules(fit_free_cores=False)        # whatever else runs here now
    for batch, kind in ((1, "units"), (32, "rows")):
        assert kernels.Plan(100, batch, 256, 1024, threads=2, rules=fixed).describe() == (kind, 2)
    assert kernels.Plan(100, 8, 40, 160, threads=2).describe() == ("units", 1)    # units
    assert kernels.Plan(900, 9, 40, 160, threads=2).describe() == ("rows", 2)
    assert kernels.Plan(100, 9, 40, 160, threads=2).describe() == ("rows", 1)     # steps
    assert kernels.Plan(100, 12, 256, 1024, threads=1).describe() == ("rows", 1)  # threads


@pytest.mark.parametrize("nparts", [2, 3])
def test_barrier_orders_every_step(nparts):
    flags = new_flags(nparts)
    slots = np.zeros(nparts * FLAG_STRIDE, np.int64)
    errors = np.zeros(nparts, np.int64)
    steps = 20000 if nparts <= recurrence_threads() else 500   # 3 parts on 2 cores: yields
    run_parts(lambda p: exchange_steps(p, nparts, flags, slots, steps, errors), nparts)
    assert errors.tolist() == [0] * nparts
    assert flags[::FLAG_STRIDE].tolist() == [2 * steps] * nparts + [0]   # + the abort flag


def test_failing_part_releases_the_others():
    """A part that raises before a meeting must not leave its partner waiting there."""
    import threading
    plan = kernels.Plan(100, 1, 256, 1024, threads=2, rules=SPLIT_SMALL)
    assert plan.nparts == 2

    def part(p):
        if p == 1:
            raise KeyboardInterrupt   # as a Ctrl-C between two steps of a part would
        plan.meet(p)
    outcome = []

    def call():
        try:
            plan.run(part)
        except KeyboardInterrupt:
            outcome.append("raised")
    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(timeout=30)
    assert not caller.is_alive() and outcome == ["raised"]


def test_run_parts_returns_in_order_and_raises():
    assert run_parts(lambda p: p * p, 3) == [0, 1, 4]

    def fails(p):
        if p == 1:
            raise RuntimeError("part 1 failed")
        return p
    with pytest.raises(RuntimeError, match="part 1 failed"):
        run_parts(fails, 2)


def test_blas_limit_is_restored():
    from threadpoolctl import threadpool_info
    before = [lib["num_threads"] for lib in threadpool_info()]
    with single_threaded_blas():
        assert all(lib["num_threads"] == 1 for lib in threadpool_info() if lib["user_api"] == "blas")
    assert [lib["num_threads"] for lib in threadpool_info()] == before


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_threads_argument_is_checked(bad):
    with pytest.raises(ValueError, match="threads"):
        CpuBackend(threads=bad)


def test_default_threads_follow_numba():
    """backend="cpu" with no ``threads`` uses numba.get_num_threads() (capped at the cores)."""
    saved = numba.get_num_threads()
    model = gpurnn.LSTM(8, 64, backend=CpuBackend(split=SPLIT_SMALL))   # threads=None: numba's
    try:
        for n in sorted({1, min(2, saved)}):
            numba.set_num_threads(n)
            assert recurrence_threads() == n
            model(np.zeros((3, 1, 8), np.float32))
            assert model.last_plans["forward"][0][0]["split"] == ("units", n)
    finally:
        numba.set_num_threads(saved)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_split_matmul_matches_numpy(threads, rng):
    from gpurnn.cpu.kernels import split_matmul
    a, b = rng.standard_normal((301, 37)), rng.standard_normal((37, 29))
    np.testing.assert_allclose(split_matmul(a, b, threads), a @ b, rtol=1e-12, atol=1e-12)
    at = np.asfortranarray(a)                      # a transposed view, as the head passes
    np.testing.assert_allclose(split_matmul(at.T.T, b, threads), a @ b, rtol=1e-12, atol=1e-12)


def test_output_layer_split_over_the_cpu_backends_threads(rng):
    """The char LM's head on backend="cpu" splits its rows over the backend's threads (the
    contract's run_rows: kernels.split_rows; 280 rows, two shares) and matches the numpy
    backend's one-share head."""
    from gpurnn.train.losses import OutputLayer
    h = rng.standard_normal((7, 40, 33))
    targets = rng.integers(0, 11, (7, 40))
    plain = OutputLayer(33, 11, "float64", seed=2)
    split = OutputLayer(33, 11, "float64", seed=2, backend=CpuBackend(threads=2))
    loss_a, dh_a = plain.loss_and_backward(h, targets)
    loss_b, dh_b = split.loss_and_backward(h, targets)
    assert loss_a == pytest.approx(loss_b, rel=1e-12)
    np.testing.assert_allclose(dh_b, dh_a, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(split.grads["weight"], plain.grads["weight"], rtol=1e-12, atol=1e-14)
    assert plain.backend.name == "numpy" and split.backend.name == "cpu"


def test_cpu_backend_matmul_and_compute_scope(rng, monkeypatch):
    """The contract's matmul is split_matmul on the backend's threads; compute_scope holds
    BLAS at one thread."""
    calls = []
    monkeypatch.setattr(kernels, "split_matmul",
                        lambda a, b, t, library: calls.append((t, library)) or a @ b)
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((3, 4))
    np.testing.assert_array_equal(CpuBackend(threads=3).matmul(a, b), a @ b)
    np.testing.assert_array_equal(CpuBackend(gemm="openblas").matmul(a, b), a @ b)
    assert calls == [(3, "openblas"), (None, "openblas")]        # float64: OpenBLAS
    from threadpoolctl import threadpool_info
    with CpuBackend().compute_scope():
        assert all(pool["num_threads"] == 1 for pool in threadpool_info()
                   if pool["user_api"] == "blas")


@pytest.mark.parametrize("batch", [2, 11])
def test_split_backward_twice_on_one_tape(batch, rng):
    """Each backward gets fresh barriers (Plan.for_backward): a second call on the same
    tape gives exactly the first call's gradients again."""
    model = gpurnn.GRU(I, H, backend=CpuBackend(threads=2, split=SPLIT_SMALL), dtype="float64", seed=1)
    model(rng.standard_normal((T, batch, I)))
    dout = rng.standard_normal((T, batch, H))
    first, _ = model.backward(dout)
    grads = {k: g.copy() for k, g in model.grads.items()}
    again, _ = model.backward(dout)
    assert model.last_plans["backward"][0][0]["split"][1] == 2
    np.testing.assert_array_equal(again, first)
    for k, g in model.grads.items():
        np.testing.assert_allclose(g, 2 * grads[k], rtol=1e-14, atol=0)


@pytest.mark.parametrize("free, parts", [(0, 1), (1, 2), (5, 2), (None, 2)])
def test_units_split_uses_only_free_cores(free, parts, monkeypatch):
    """A "units" split meets every step: it takes only the cores free now (a spinning torch
    worker or another process holds the rest) and says so; "rows" keeps its parts; the
    backward decides again. None: the platform cannot tell, so no cut."""
    monkeypatch.setattr(kernels, "cores_free", lambda: free)
    plan = kernels.Plan(100, 1, 256, 1024, threads=2)
    want = ("units", parts) if parts == 2 else ("units", 1, "1 core busy")
    assert plan.describe() == want
    assert kernels.Plan(100, 32, 256, 1024, threads=2).describe() == ("rows", 2)
    monkeypatch.setattr(kernels, "cores_free", lambda: 1)
    assert plan.for_backward(np.float32).describe() == ("units", 2)


def test_cores_free_reads_the_machine():
    from gpurnn.cpu.parallel import cores_free
    free = cores_free()
    assert free is None or 0 <= free < len(os.sched_getaffinity(0))


def test_the_njit_functions_parts_call_from_python_release_the_gil():
    """The parts call these from Python on their own threads at once: one that held the
    GIL would run them one part at a time (the token gather and scatter-add did)."""
    from gpurnn.cpu import sync, tokens
    for fn in (tokens.gather_rows, tokens.scatter_add_columns, kernels.transpose, sync.meet):
        assert fn.targetoptions.get("nogil") is True, fn.py_func.__qualname__
