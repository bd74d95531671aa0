"""How many threads the CPU recurrence uses, and running its parts on them.

  recurrence_threads()       numba.get_num_threads() (NUMBA_NUM_THREADS / numba.set_num_threads,
                             per calling thread), at most the cores this process may run on
  cores_free()              cores of this process's affinity that no other runnable task
                             holds right now (/proc/loadavg's runnable count, ~2 us)
  run_parts(fn, nparts)      fn(0) on the calling thread and fn(1..nparts-1) on pool threads
                             pinned to other cores, all at once; returns when all are done,
                             re-raises the first error
  single_threaded_blas()     context: every BLAS library in the process limited to one thread
                             (threadpoolctl), for parts that each call BLAS themselves; one
                             process-wide, reference-counted limit, so threads that enter and
                             leave it in any order restore the user's BLAS threads at the end

The parts are njit kernels compiled with nogil=True, or Python loops around NumPy's BLAS
and such kernels, so the pool's threads run in parallel. Parts that meet at a spin barrier
(sync.py) must all be running: part 0 always runs on the caller, and the pool has a thread
for every other part, so a part waits at most for a part of another call that is running
already (two user threads calling at once), never for one that cannot start.

Fork: a child process inherits the pool object but not its threads, and a part handed to
it would never start while part 0 spins at the barrier. ``os.register_at_fork`` drops the
pool in the child (the next call starts a fresh one), renews the locks another thread may
have held at the fork, and gives back BLAS limits held by threads the child does not have.
Barriers belong to one layer call (kernels.Plan), so no barrier outlives a fork.
"""
import contextlib
import ctypes
import os
import threading
import time
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


def recurrence_threads():
    """Threads the CPU recurrence may use (>= 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(numba.get_num_threads(), cores))


_loadavg_fd = None


def cores_free():
    """How many cores, besides the caller's, are free at this instant: the cores this
    process may use minus the runnable tasks other than the caller (Linux /proc/loadavg's
    fourth field counts every task running or ready to run, system-wide). A torch OpenMP
    worker spinning after torch's last parallel op (~10 ms here, libgomp's default spin)
    or another process's busy thread counts as a taken core. None where it cannot tell."""
    global _loadavg_fd
    try:
        if _loadavg_fd is None:
            _loadavg_fd = os.open("/proc/loadavg", os.O_RDONLY)
        running = int(os.pread(_loadavg_fd, 128, 0).split()[3].split(b"/")[0])
        cores = len(os.sched_getaffinity(0))
    except (OSError, AttributeError, IndexError, ValueError):
        return None
    return max(0, cores - running)


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


def _blas_controller():
    """A threadpoolctl controller over the BLAS libraries NumPy and Numba use. It sees only
    libraries loaded when it is made (making one costs ~1 ms, too much per call), so load
    SciPy's too, which Numba loads on its own at some first compile."""
    import numpy  # noqa: F401
    try:
        import scipy.linalg.cython_blas  # noqa: F401
    except ImportError:
        pass
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


class _SharedBlasLimit:
    """BLAS held at one thread while any thread of the process is inside ``hold()``.

    BLAS thread counts are process-wide, so per-caller save/restore (a threadpoolctl
    limiter each) breaks when two threads overlap: the one that leaves last restores the
    limit the other had set, and BLAS stays at one thread for good. Here the first holder
    saves the original counts and the last one restores them, whatever the order."""

    def __init__(self):
        self._lock = threading.Lock()
        self._holds = {}              # thread ident -> nesting depth
        self._saved = None            # [(library controller, its thread count before)]
        self._controller = None

    @contextlib.contextmanager
    def hold(self):
        me = threading.get_ident()
        with self._lock:
            if not self._holds:
                if self._controller is None:
                    self._controller = _blas_controller()
                libs = [lib for lib in self._controller.lib_controllers if lib.user_api == "blas"]
                self._saved = [(lib, lib.get_num_threads()) for lib in libs]
                for lib in libs:
                    _set_threads(lib, 1)
            self._holds[me] = self._holds.get(me, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._release(me)

    def _release(self, ident, depth=1):
        left = self._holds.pop(ident) - depth
        if left:
            self._holds[ident] = left
        elif not self._holds:
            for lib, threads in self._saved:
                _set_threads(lib, threads)
            self._saved = None

    def after_fork_in_child(self):
        """Only the forking thread exists in the child: drop the others' holds."""
        self._lock = threading.Lock()
        me = threading.get_ident()
        for ident in [i for i in self._holds if i != me]:
            self._release(ident, self._holds[ident])


def _set_threads(lib, threads, tries=100):
    """lib.set_num_threads(threads), checked: OpenBLAS (0.3.31, pthreads) now and then drops
    a change made by one thread just after another thread's (seen about one time in two
    when two threads leave the limit back to back), so set again until it holds."""
    for _ in range(tries):
        lib.set_num_threads(threads)
        if lib.get_num_threads() == threads:
            return
        time.sleep(1e-4)


_blas = _SharedBlasLimit()


def single_threaded_blas():
    """A context in which BLAS calls run on the calling thread only (so that two parts that
    each call BLAS use a core each instead of both waking BLAS workers). The limit is
    process-wide and reference-counted: set when the first thread enters, restored to what
    it was when the last one leaves. Applies to NumPy's and SciPy's BLAS (_blas_controller);
    costs ~15 us when it sets the limit, ~1 us nested."""
    return _blas.hold()


def _after_fork_in_child():
    global _pool, _pool_size, _pool_lock, _loadavg_fd
    _pool_lock = threading.Lock()
    _loadavg_fd = None                # the child's own descriptor (the parent's stays open)
    _pool, _pool_size = None, 0       # its threads did not survive the fork
    _blas.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
