"""``stable_jit``: numba.njit(cache=True) whose disk cache survives a new process.

Used by every kernel of the CPU backend (kernels.py, fastmath.py).
"""
import numba

# error_model="numpy": float division without a zero check, so the loops can vectorise.
# fastmath "contract" alone: LLVM may fuse a*b+c into one FMA (the cells' polynomials and
# products; LSTM forward pass 7.7 -> 6.3 ns per unit, RESULTS_cpu.md Tuning log 19), and no
# other liberty (no reassociation, NaN and inf kept), so results stay the same from run to
# run and from thread count to thread count.
_OPTIONS = dict(cache=True, error_model="numpy", fastmath={"contract"})


def stable_jit(key, **options):
    """numba.njit(cache=True) for a closure, with a reproducible identity ``key``.

    Numba keys a closure's disk cache on a pickle of its closure cells. The cells here hold
    other dispatchers, which pickle with a random per-process uuid, so every new process
    would miss the cache and recompile (~4 s per kernel). Giving each dispatcher a uuid
    derived from what it is (module, cell, dtype, function name) makes the key stable; the
    pickle still holds the functions' code, so editing a cell invalidates the cache.
    Generated functions (exec'd, no source file) pass cache=False and inline="always": they
    are compiled, and cached, as part of their file-backed callers.
    """
    def decorate(fn):
        dispatcher = numba.njit(fn, **{**_OPTIONS, **options})
        try:
            dispatcher._set_uuid(f"gpurnn.cpu:{key}:{fn.__qualname__}")
        except (AttributeError, AssertionError):   # Numba internals changed: cache misses only
            pass
        return dispatcher
    return decorate
