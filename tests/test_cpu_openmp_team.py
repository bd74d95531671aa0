"""The CPU recurrence's parts on torch's OpenMP team (gpurnn/cpu/parallel.py, _OpenMPTeam):
which pool runs them, that they all run at once and in order, that errors come back, that a
short team or a call from inside a parallel region falls back visibly, that a forked child
does not touch the team, and that results are bitwise the same on either pool.

The team is libgomp's, loaded by torch: without torch these tests skip.
"""
import multiprocessing
import threading
import warnings

import numba
import numpy as np
import pytest

import gpurnn
from gpurnn import contract
from gpurnn.cpu import CpuBackend, kernels, parallel
from gpurnn.cpu.sync import FLAG_STRIDE, meet, new_flags
from helpers import exchange_steps

torch = pytest.importorskip("torch")

SPLIT_SMALL = kernels.SplitRules(units_per_part=1, rows_per_part=1, split_macs=0,
                                 fit_free_cores=False)


@pytest.fixture
def team(monkeypatch):
    monkeypatch.setenv("GPURNN_CPU_POOL", "openmp")
    monkeypatch.setattr(contract, "_warned", set())
    team = parallel._openmp_team()
    if team is None:
        pytest.skip(f"no OpenMP team here: {parallel.pool_choice()[1]}")
    return team


def test_pool_choice_follows_the_variable(monkeypatch, team):
    assert parallel.pool_choice() == ("openmp", None)
    monkeypatch.setenv("GPURNN_CPU_POOL", "auto")           # torch is imported: the team
    assert parallel.pool_choice() == ("openmp", None)
    monkeypatch.setenv("GPURNN_CPU_POOL", "own")
    assert parallel.pool_choice() == ("own", None)
    monkeypatch.setenv("GPURNN_CPU_POOL", "gomp")
    with pytest.raises(ValueError,
                       match=r"GPURNN_CPU_POOL must be one of auto, own, openmp, got 'gomp'"):
        parallel.pool_choice()


def test_the_team_is_torchs(team):
    """Numba's "omp" threading layer may load a second libgomp (the system's): the team must
    be the runtime torch calls, so that torch's ops and our parts share one set of workers
    (no thread is created by a torch op after our call, nor by our call after a torch op)."""
    import os
    numba.get_num_threads()                        # starts Numba's threading layer
    assert os.path.dirname(team.path) == os.path.join(os.path.dirname(torch.__file__), "lib")

    def threads():
        return set(os.listdir("/proc/self/task"))
    parallel.run_parts(lambda p: None, 2)
    torch.relu(torch.randn(4_000_000))            # big enough for torch's parallel_for
    before = threads()
    workers = parallel.run_parts(lambda p: threading.get_native_id(), 2)[1:]
    torch.relu(torch.randn(4_000_000))
    assert threads() == before and {str(w) for w in workers} <= before


@pytest.mark.parametrize("nparts", [2, 3])
def test_parts_run_at_once_on_distinct_threads_in_order(nparts, team):
    flags = new_flags(nparts)
    slots = np.zeros(nparts * FLAG_STRIDE, np.int64)
    errors = np.zeros(nparts, np.int64)
    steps = 5000 if nparts <= parallel.recurrence_threads() else 300

    def part(p):
        exchange_steps(p, nparts, flags, slots, steps, errors)   # hangs unless all run at once
        return p, threading.get_native_id()
    results, pool = parallel.run_parts_on_pool(part, nparts)
    assert pool == "openmp"
    assert [p for p, _ in results] == list(range(nparts))
    ids = [tid for _, tid in results]
    assert ids[0] == threading.get_native_id() and len(set(ids)) == nparts
    assert errors.tolist() == [0] * nparts
    assert flags[::FLAG_STRIDE].tolist() == [2 * steps] * nparts + [0]


def test_errors_come_back_from_team_threads(team):
    def fails(p):
        if p == 1:
            raise RuntimeError("part 1 failed")
        return p
    with pytest.raises(RuntimeError, match="part 1 failed"):
        parallel.run_parts(fails, 2)
    plan = kernels.Plan(100, 1, 256, 1024, threads=2, rules=SPLIT_SMALL)

    def interrupted(p):
        if p == 1:
            raise KeyboardInterrupt     # its partner waits at the meeting: released, not hung
        plan.meet(p)
    with pytest.raises(KeyboardInterrupt):
        plan.run(interrupted)
    assert parallel.run_parts(lambda p: p * 10, 2) == [0, 10]      # the team still works


def test_short_team_runs_the_rest_on_own_pool(monkeypatch, team):
    """A team smaller than asked (OMP_THREAD_LIMIT, say) must still run every part at once:
    the missing ones go to gpurnn's pool, the pool says so, strict mode raises."""
    monkeypatch.setattr(team, "_team_size", lambda: 1)
    flags, slots, errors = new_flags(2), np.zeros(2 * FLAG_STRIDE, np.int64), np.zeros(2, np.int64)

    def part(p):
        exchange_steps(p, 2, flags, slots, 200, errors)
        return p
    with pytest.warns(RuntimeWarning, match="the OpenMP team had 1 of 2 threads"):
        results, pool = parallel.run_parts_on_pool(part, 2)
    assert results == [0, 1] and errors.tolist() == [0, 0]
    assert pool.startswith("openmp+own (the OpenMP team had 1 of 2 threads")
    monkeypatch.setenv("GPURNN_STRICT", "1")
    flags[:] = 0
    with pytest.raises(contract.FallbackError, match="1 of 2 threads"):
        parallel.run_parts_on_pool(part, 2)


def test_inside_a_parallel_region_uses_own_pool(monkeypatch, team):
    inner = []

    def outer(p):
        if p == 0:
            inner.append(parallel.run_parts_on_pool(lambda q: q + 1, 2))
    with pytest.warns(RuntimeWarning, match="inside an OpenMP parallel region"):
        parallel.run_parts(outer, 2)
    assert inner == [([1, 2], "own (called inside an OpenMP parallel region)")]


def test_busy_team_worker_is_counted_as_running(team):
    """workers_running() sees a team thread that is running a part (as it sees one spinning
    after a torch op), so cores_free does not count that core as taken."""
    import time
    flags = new_flags(2)
    seen = []

    def part(p):
        if p == 0:
            time.sleep(0.05)               # part 1 waits at the meeting (spins, then yields:
            seen.append(team.workers_running())   # runnable either way) until part 0 comes
        meet(flags, p, 2, 1)
    parallel.run_parts(part, 2)
    assert seen[0] >= 1


@pytest.mark.parametrize("cell,batch", [("LSTM", 1), ("GRU", 11), ("RNN", 3)])
def test_results_are_bitwise_the_same_on_either_pool(monkeypatch, cell, batch, team, rng):
    model = getattr(gpurnn, cell)(7, 37, num_layers=2, dtype="float32", seed=3,
                                  backend=CpuBackend(threads=2, poison=True, split=SPLIT_SMALL))
    x = rng.standard_normal((9, batch, 7)).astype(np.float32)
    dout = rng.standard_normal((9, batch, 37)).astype(np.float32)
    runs = {}
    for pool in ("own", "openmp"):
        monkeypatch.setenv("GPURNN_CPU_POOL", pool)
        model.zero_grad()
        out, _ = model(x)
        dx, _ = model.backward(dout)
        runs[pool] = [out, dx, *(g.copy() for g in model.grads.values())]
        plans = model.last_plans
        pools = {p["pool"] for d in ("forward", "backward") for layer in plans[d] for p in layer}
        assert pools == {pool}
    for own, team_result in zip(runs["own"], runs["openmp"]):
        np.testing.assert_array_equal(own, team_result)


def _child_runs_parts(queue):
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            queue.put((parallel.pool_choice(), parallel.run_parts_on_pool(lambda p: p, 2)))
    except BaseException as error:              # the parent reports it
        queue.put(repr(error))


def test_forked_child_does_not_use_the_team(team):
    """libgomp's workers do not survive a fork and its pool would wait for them: a child
    runs its parts on gpurnn's own pool, and says why."""
    parallel.run_parts(lambda p: p, 2)           # the parent's team is in use
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_runs_parts, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung running two parts")
    reason = "a forked child (an OpenMP team does not survive a fork)"
    assert queue.get(timeout=5) == (("own", reason), ([0, 1], f"own ({reason})"))
