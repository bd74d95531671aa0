"""How many threads the CPU recurrence uses, and running its parts on them.

  recurrence_threads()       numba.get_num_threads() (NUMBA_NUM_THREADS / numba.set_num_threads,
                             per calling thread), at most the cores this process may run on
  run_parts(fn, nparts)      fn(0) on the calling thread and fn(1..nparts-1) on pool threads
                             pinned to other cores, all at once; returns when all are done,
                             re-raises the first error
  single_threaded_blas()     context: every BLAS library in the process limited to one thread
                             (threadpoolctl), for parts that each call BLAS themselves

The parts are njit kernels compiled with nogil=True, or Python loops around NumPy's BLAS
and such kernels, so the pool's threads run in parallel. Parts that meet at a spin barrier
(sync.py) must all be running: part 0 always runs on the caller, and the pool has a thread
for every other part, so a part waits at most for a part of another call that is running
already (two user threads calling at once), never for one that cannot start.
"""
import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba

try:                                        # glibc: the CPU the calling thread runs on
    _sched_getcpu = ctypes.CDLL(None).sched_getcpu
    _sched_getcpu.restype, _sched_getcpu.argtypes = ctypes.c_int, ()
except (OSError, AttributeError):
    _sched_getcpu = None

_pool_lock = threading.Lock()
_pool = None
_pool_size = 0
_blas = None


def recurrence_threads():
    """Threads the CPU recurrence may use (>= 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(numba.get_num_threads(), cores))


def _executor(workers):
    global _pool, _pool_size
    with _pool_lock:
        if _pool_size < workers:
            old = _pool
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpurnn-cpu")
            _pool_size = workers
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def _core_plan(nparts):
    """(allowed cores, a core for each part 1..nparts-1 other than the caller's current one),
    or None where the platform cannot say or pin."""
    if _sched_getcpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except OSError:
        return None
    here = _sched_getcpu()
    others = [c for c in allowed if c != here] or allowed
    return allowed, [others[(part - 1) % len(others)] for part in range(1, nparts)]


def _pinned(fn, part, core, allowed):
    """fn(part) on ``core``, then the pool thread is free to move again."""
    os.sched_setaffinity(0, {core})
    try:
        return fn(part)
    finally:
        os.sched_setaffinity(0, allowed)


def run_parts(fn, nparts):
    """fn(part) for part in 0..nparts-1, concurrently; the results in part order.

    Parts 1.. run on pool threads pinned, for the call, to cores other than the caller's:
    a pool thread woken from sleep is otherwise often placed on the caller's core (the
    kernel's wake-affine heuristic), and two parts on one core turn every barrier into a
    pair of context switches (B=1 LSTM at 2 threads: 8-9 ms instead of 3.5 ms for the
    first ~50 ms after an idle pause, measured; the parts were seen on the same CPU)."""
    if nparts == 1:
        return [fn(0)]
    plan = _core_plan(nparts)
    pool = _executor(nparts - 1)
    if plan is None:
        futures = [pool.submit(fn, part) for part in range(1, nparts)]
    else:
        allowed, cores = plan
        futures = [pool.submit(_pinned, fn, part, core, allowed)
                   for part, core in zip(range(1, nparts), cores)]
    try:
        first = fn(0)
    finally:
        rest = [f.result() for f in futures]
    return [first] + rest


def single_threaded_blas():
    """A context in which BLAS calls run on the calling thread only (so that two parts that
    each call BLAS use a core each instead of both waking BLAS workers), restored on exit.
    Applies to every BLAS library loaded when first called (NumPy's is, since numpy is
    imported first); costs ~3 us per use."""
    global _blas
    if _blas is None:
        import numpy  # noqa: F401  (its BLAS must be loaded for the controller to see it)
        from threadpoolctl import ThreadpoolController
        _blas = ThreadpoolController()
    return _blas.limit(limits=1, user_api="blas")
