"""How many threads the CPU recurrence uses, and running its parts on them.

  recurrence_threads()       numba.get_num_threads() (NUMBA_NUM_THREADS / numba.set_num_threads,
                             per calling thread), at most the cores this process may run on
  cores_free()              cores of this process's affinity that no other runnable task
                             holds right now (/proc/loadavg's runnable count, ~2 us)
  run_parts(fn, nparts)      fn(0) on the calling thread and fn(1..nparts-1) on pool threads
                             pinned to other cores, all at once; returns when all are done,
                             re-raises the first error
  pool_choice()             (pool, why not the OpenMP team): which threads run parts 1..
                             ("openmp" or "own"; GPURNN_CPU_POOL=auto|own|openmp)
  single_threaded_blas()     context: every BLAS library in the process limited to one thread
                             (threadpoolctl), for parts that each call BLAS themselves; one
                             process-wide, reference-counted limit, so threads that enter and
                             leave it in any order restore the user's BLAS threads at the end

The parts are njit kernels compiled with nogil=True, or Python loops around NumPy's BLAS
and such kernels, so the pool's threads run in parallel. Parts that meet at a spin barrier
(sync.py) must all be running: part 0 always runs on the caller, and the pool has a thread
for every other part, so a part waits at most for a part of another call that is running
already (two user threads calling at once), never for one that cannot start.

Which threads: with torch imported, its OpenMP workers (libgomp, one team per calling
thread) spin ~5-10 ms after every torch op, on the very cores our parts need; a part handed
to a thread of our own pool then shares a core with a spinning worker until it sleeps.
So where an OpenMP runtime is loaded and torch is imported, the parts run *on* the calling
thread's OpenMP team (GOMP_parallel with a ctypes callback, as a torch op would): the
spinning worker takes part 1 at once instead of competing with it (taking turns with
torch.nn in one process: LSTM T=64 B=32 H=256 28.3 -> 20.4 ms, GRU 21.1 -> 15.1 ms, AMD
EPYC; RESULTS_cpu.md, Tuning log 24). Elsewhere (no torch, GPURNN_CPU_POOL=own) our own
pool runs them.

Fork: a child process inherits the pool object but not its threads, and a part handed to
it would never start while part 0 spins at the barrier. ``os.register_at_fork`` drops the
pool in the child (the next call starts a fresh one), renews the locks another thread may
have held at the fork, and gives back BLAS limits held by threads the child does not have.
Barriers belong to one layer call (kernels.Plan), so no barrier outlives a fork.
"""
import contextlib
import ctypes
import itertools
import os
import sys
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
    or another process's busy thread counts as a taken core, except a worker of the OpenMP
    team the parts will run on (pool_choice): that one takes a part. None where it cannot
    tell."""
    global _loadavg_fd
    try:
        if _loadavg_fd is None:
            _loadavg_fd = os.open("/proc/loadavg", os.O_RDONLY)
        running = int(os.pread(_loadavg_fd, 128, 0).split()[3].split(b"/")[0])
        cores = len(os.sched_getaffinity(0))
    except (OSError, AttributeError, IndexError, ValueError):
        return None
    team = _openmp_team() if pool_choice()[0] == "openmp" else None
    return max(0, cores - running + (team.workers_running() if team else 0))


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
    """A core for each part 1..nparts-1, other than the caller's current one where there
    are others, or None where the platform cannot say or pin."""
    if _sched_getcpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except OSError:
        return None
    here = _sched_getcpu()
    others = [c for c in allowed if c != here] or allowed
    return [others[(part - 1) % len(others)] for part in range(1, nparts)]


def _pinned(fn, part, core):
    """fn(part) on ``core``; then the thread gets back the cores it had (a pool thread its
    process's, an OpenMP worker what its runtime gave it)."""
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        return fn(part)
    finally:
        os.sched_setaffinity(0, own)


class _Parts:
    """One run_parts call: fn, the cores for parts 1.., and each part's result or error."""

    def __init__(self, fn, nparts):
        self.fn, self.nparts = fn, nparts
        self.cores = _core_plan(nparts)
        self.results = [None] * nparts
        self.errors = [None] * nparts
        self.short = None             # the OpenMP team's size, where short of nparts

    def run(self, part):
        """Part ``part`` on the calling thread; never raises (an OpenMP thread cannot take
        a Python exception back to the caller), its error is kept for outcome()."""
        try:
            if part == 0 or self.cores is None:
                self.results[part] = self.fn(part)
            else:
                self.results[part] = _pinned(self.fn, part, self.cores[part - 1])
        except BaseException as error:     # KeyboardInterrupt too: re-raised by outcome()
            self.errors[part] = error

    def on_own_pool(self, parts):
        """Futures of ``parts`` run on this module's pool."""
        pool = _executor(self.nparts - 1)
        return [pool.submit(self.run, part) for part in parts]

    def outcome(self):
        for error in self.errors:
            if error is not None:
                raise error
        return self.results


_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_RUNTIMES = ("libgomp", "libomp", "libiomp5")       # all export GOMP_parallel


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _openmp_runtime():
    """A ctypes library whose GOMP_parallel and omp_* are the OpenMP runtime torch calls,
    and that runtime's path; (None, None) where none is loaded.

    Through torch's own libtorch_cpu.so where torch is imported (dlsym on a library's handle
    searches its dependencies): a process can hold two runtimes, e.g. torch's bundled
    libgomp and the system's, which Numba's "omp" threading layer loads, and a team of the
    other one is a second set of threads beside torch's spinning ones. Else the first
    runtime in /proc/self/maps (GPURNN_CPU_POOL=openmp without torch)."""
    noload = getattr(os, "RTLD_NOLOAD", 0)
    torch = sys.modules.get("torch")
    candidates = []
    if torch is not None and getattr(torch, "__file__", None):
        candidates.append(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
    try:
        with open("/proc/self/maps") as maps:
            candidates += [path for path in (line.rsplit(None, 1)[-1] for line in maps)
                           if os.path.basename(path).startswith(_RUNTIMES) and ".so" in path]
    except OSError:
        pass
    for path in candidates:
        try:
            lib = ctypes.CDLL(path, mode=noload)
            entry = lib.GOMP_parallel
        except (OSError, AttributeError):
            continue
        info = _DlInfo()
        found = ctypes.CDLL(None).dladdr(ctypes.cast(entry, ctypes.c_void_p), ctypes.byref(info))
        return lib, (info.dli_fname.decode() if found and info.dli_fname else path)
    return None, None


class _OpenMPTeam:
    """Runs parts on the calling thread's OpenMP team: GOMP_parallel(callback, key, nparts, 0),
    as a torch op does, so the team's threads (torch's workers, often still spinning) run
    parts 1.. and the caller part 0. The callback holds the GIL only around the Python
    between kernels: the parts' njit kernels and BLAS calls release it.

    A team can come out short of nparts (OMP_THREAD_LIMIT, OMP_DYNAMIC, a call made inside
    another parallel region): parts meet at spin barriers and must all run, so the parts
    the team lacks go to our own pool, and the call's _Parts.short records it."""

    def __init__(self, lib, path):
        self.path = path                           # the runtime's file (dladdr)
        self._parallel = lib.GOMP_parallel
        self._parallel.argtypes = (_CALLBACK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint)
        self._parallel.restype = None
        self._thread_num, self._team_size, self._in_parallel = (
            lib.omp_get_thread_num, lib.omp_get_num_threads, lib.omp_in_parallel)
        for f in (self._thread_num, self._team_size, self._in_parallel):
            f.restype, f.argtypes = ctypes.c_int, ()
        self._entry = _CALLBACK(self._enter)       # kept alive as long as the team
        self._calls = {}                           # key -> _Parts in flight
        self._keys = itertools.count(1)
        self._workers = set()                      # native ids of team threads seen, not callers
        self._stat_fds = {}
        self.run(_Parts(lambda part: None, len(os.sched_getaffinity(0))))  # meet the workers

    def in_parallel(self):
        return bool(self._in_parallel())

    def run(self, parts):
        key = next(self._keys)
        self._calls[key] = parts
        try:
            self._parallel(self._entry, key, parts.nparts, 0)
        finally:
            del self._calls[key]
        return parts.outcome()

    def _enter(self, key):
        parts = self._calls[key]
        me, got = self._thread_num(), self._team_size()
        spill = []
        if me == 0 and got < parts.nparts:
            parts.short = got
            spill = parts.on_own_pool(range(got, parts.nparts))
        if me > 0:
            self._workers.add(threading.get_native_id())
        if me < got:               # (each thread asks the size: one past it runs nothing)
            parts.run(me)
        for future in spill:
            future.result()

    def workers_running(self):
        """How many of the team's worker threads are running or runnable now (state R in
        /proc/self/task/<tid>/stat): a worker spinning after a torch op is."""
        running = 0
        for tid in list(self._workers):
            try:
                fd = self._stat_fds.get(tid)
                if fd is None:
                    fd = self._stat_fds[tid] = os.open(f"/proc/self/task/{tid}/stat", os.O_RDONLY)
                stat = os.pread(fd, 256, 0)
            except OSError:                       # the thread is gone
                self._workers.discard(tid)
                fd = self._stat_fds.pop(tid, None)
                if fd is not None:
                    os.close(fd)
                continue
            state = stat.rindex(b")") + 2          # the field after "(comm) "
            running += stat[state:state + 1] == b"R"
        return running


_team = None          # None: not looked for; False: none usable; "forked": in a child
_team_lock = threading.Lock()
POOLS = ("auto", "own", "openmp")


def _openmp_team():
    global _team
    if _team is None:
        with _team_lock:
            if _team is None:
                lib, path = _openmp_runtime()
                try:
                    _team = _OpenMPTeam(lib, path) if lib is not None else False
                except (OSError, AttributeError):   # a runtime without the omp_* entry points
                    _team = False
    return _team if isinstance(_team, _OpenMPTeam) else None


def pool_mode():
    """GPURNN_CPU_POOL, checked: "auto" (default, also when empty), "own" or "openmp"."""
    mode = os.environ.get("GPURNN_CPU_POOL") or "auto"
    if mode not in POOLS:
        raise ValueError(f"GPURNN_CPU_POOL must be one of {', '.join(POOLS)}, got {mode!r}")
    return mode


def pool_choice():
    """(pool, why not "openmp"): which threads run parts 1.. of the next run_parts call
    from this thread. pool_mode() "auto": the OpenMP team where torch is imported and an
    OpenMP runtime is loaded, "openmp" wherever one is loaded, "own" never. Where the team
    was wanted but cannot serve, why (a fallback: Plan records it)."""
    mode = pool_mode()
    if mode == "own" or (mode == "auto" and "torch" not in sys.modules):
        return "own", None
    team = _openmp_team()
    if team is None:
        return "own", ("a forked child (an OpenMP team does not survive a fork)"
                       if _team == "forked" else "no OpenMP runtime with GOMP_parallel loaded")
    if team.in_parallel():
        return "own", "called inside an OpenMP parallel region"
    return "openmp", None


def run_parts(fn, nparts):
    """fn(part) for part in 0..nparts-1, concurrently; the results in part order.
    (run_parts_on_pool also says which threads ran them.)"""
    return run_parts_on_pool(fn, nparts)[0]


def run_parts_on_pool(fn, nparts):
    """(results, pool): run_parts, and which threads ran parts 1.. ("openmp", "own", or
    what fell back and why; a fallback warns, or raises under GPURNN_STRICT=1).

    Parts 1.. run on the OpenMP team or our own pool (pool_choice), pinned, for the call,
    to cores other than the caller's: a thread woken from sleep is otherwise often placed
    on the caller's core (the kernel's wake-affine heuristic), and two parts on one core
    turn every barrier into a pair of context switches (B=1 LSTM at 2 threads: 8-9 ms
    instead of 3.5 ms for the first ~50 ms after an idle pause, measured; the parts were
    seen on the same CPU)."""
    if nparts == 1:
        return [fn(0)], None
    parts = _Parts(fn, nparts)
    pool, why_not = pool_choice()
    if pool == "openmp":
        results = _openmp_team().run(parts)
        if parts.short is None:
            return results, pool
        why_not = (f"the OpenMP team had {parts.short} of {nparts} threads; parts "
                   f"{parts.short}.. ran on gpurnn's own pool")
        pool = "openmp+own"
    else:
        futures = parts.on_own_pool(range(1, nparts))
        parts.run(0)                  # keeps its error for outcome(): the others are waited for
        for future in futures:
            future.result()
        results = parts.outcome()
    if why_not is None:
        return results, pool
    from ..contract import decline
    decline(f"gpurnn cpu: parts not on the OpenMP team ({why_not})")
    return results, f"{pool} ({why_not})"


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
    global _pool, _pool_size, _pool_lock, _loadavg_fd, _team, _team_lock
    _pool_lock, _team_lock = threading.Lock(), threading.Lock()
    _team = "forked"                  # libgomp's threads did not survive the fork either, and
                                      # its pool would wait for them: our own pool from here
    _loadavg_fd = None                # the child's own descriptor (the parent's stays open)
    _pool, _pool_size = None, 0       # its threads did not survive the fork
    _blas.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
