"""A spin barrier for njit code running on several threads at once (the split recurrence).

Why: splitting one time step over the two cores (kernels.py, the small-batch path) needs the
threads to meet once per step, every few microseconds. A lock or a Python-level event costs
tens of microseconds; a spin on a shared counter costs ~0.1-0.3 us when both threads run.
Numba has no CPU atomics, and a plain load in a loop may be hoisted out of it by LLVM, so
the counters are read and written with LLVM atomic load (acquire) / store (release).

  barrier(flags, part, nparts, generation)
      flags       new_flags(nparts): ((nparts + 1) * FLAG_STRIDE,) int64, zeros; the last
                  cache line is the abort flag (``abort(flags)``)
      part        this thread's index in 0..nparts-1
      generation  1, 2, 3, ... (one more at each meeting; the counters only grow, so no reset)
  Each thread publishes ``generation`` in its own cache line, then waits until every other
  thread has published at least that much. Past SPINS_BEFORE_YIELD polls it calls
  sched_yield between polls, so a thread whose partner lost its core (more runnable threads
  than cores) gives the core back instead of burning its time slice. Once the abort flag
  is set no barrier waits any more, so a part that raised cannot leave the others hanging.

Run/test:  python -m pytest tests/test_cpu_parallel.py -q
"""
import ctypes
import ctypes.util
import platform

import llvmlite.binding
import llvmlite.ir as ir
import numpy as np
from numba.core import cgutils, types
from numba.extending import intrinsic

from .jit import stable_jit

FLAG_STRIDE = 16            # int64s between two threads' counters: 128 bytes, no false sharing
SPINS_BEFORE_YIELD = 256    # PAUSE is ~25 ns here: ~6 us of polling, about one step of work

_IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")

# sched_yield is called by name from compiled code; register its address with LLVM's
# symbol table so that code loaded from Numba's disk cache links in any process.
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
_HAS_YIELD = hasattr(_libc, "sched_yield")
if _HAS_YIELD:
    llvmlite.binding.add_symbol("sched_yield", ctypes.cast(_libc.sched_yield, ctypes.c_void_p).value)


def _element_pointer(context, builder, array_type, array, index):
    ary = context.make_array(array_type)(context, builder, array)
    return cgutils.get_item_pointer(context, builder, array_type, ary, [index])


@intrinsic
def _load_acquire(typingctx, array, index):
    if not (isinstance(array, types.Array) and array.dtype == types.int64
            and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", 8)
    return types.int64(array, index), codegen


@intrinsic
def _store_release(typingctx, array, index, value):
    if not (isinstance(array, types.Array) and array.dtype == types.int64
            and isinstance(index, types.Integer) and value == types.int64):
        return None

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store_atomic(args[2], ptr, "release", 8)
        return context.get_dummy_value()
    return types.void(array, index, value), codegen


@intrinsic
def _relax(typingctx):
    """One polling pause: x86 PAUSE (frees the core's pipeline while spinning)."""
    def codegen(context, builder, signature, args):
        if _IS_X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def _yield(typingctx):
    """sched_yield(): give the core to another runnable thread."""
    def codegen(context, builder, signature, args):
        if _HAS_YIELD:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                                "sched_yield")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


for _fn in (_load_acquire, _store_release, _relax, _yield):     # stable cache keys (jit.py)
    _fn._set_uuid(f"gpurnn.cpu:sync:{_fn.__name__}")


def new_flags(nparts):
    """Counters for ``nparts`` threads, each in its own cache line, and an abort flag after
    them (``abort``): a part that fails sets it so that the others stop waiting for it."""
    return np.zeros((nparts + 1) * FLAG_STRIDE, np.int64)


def abort(flags):
    """Release every part waiting at a barrier on ``flags`` (a part failed; its partners
    run on to the end of their loops without waiting, and the caller raises the error)."""
    flags[-FLAG_STRIDE] = 1


@stable_jit("sync", inline="always")
def barrier(flags, part, nparts, generation):
    _store_release(flags, part * FLAG_STRIDE, generation)
    aborted = nparts * FLAG_STRIDE
    for other in range(nparts):
        if other == part:
            continue
        polls = 0
        while (_load_acquire(flags, other * FLAG_STRIDE) < generation
               and _load_acquire(flags, aborted) == 0):
            polls += 1
            if polls < SPINS_BEFORE_YIELD:
                _relax()
            else:
                _yield()


@stable_jit("sync", nogil=True)
def meet(flags, part, nparts, generation):
    """``barrier`` callable from Python (the phases around a split loop)."""
    barrier(flags, part, nparts, generation)
