"""How many threads the CPU recurrence uses, and running its parts on them.

  recurrence_threads()       numba.get_num_threads() (NUMBA_NUM_THREADS / numba.set_num_threads,
                             per calling thread), at most the cores this process may run on
  run_parts(fn, nparts)      fn(0) on the calling thread and fn(1..nparts-1) on pool threads,
                             all at once; returns when all are done, re-raises the first error
  single_threaded_blas()     context: every BLAS library in the process limited to one thread
                             (threadpoolctl), for parts that each call BLAS themselves

The parts are njit kernels compiled with nogil=True, or Python loops around NumPy's BLAS
and such kernels, so the pool's threads run in parallel. Parts that meet at a spin barrier
(sync.py) must all be running: part 0 always runs on the caller, and the pool has a thread
for every other part, so a part waits at most for a part of another call that is running
already (two user threads calling at once), never for one that cannot start.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba

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


def run_parts(fn, nparts):
    """fn(part) for part in 0..nparts-1, concurrently; the results in part order."""
    if nparts == 1:
        return [fn(0)]
    futures = [_executor(nparts - 1).submit(fn, part) for part in range(1, nparts)]
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
