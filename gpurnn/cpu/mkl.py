"""MKL's packed GEMM for the CPU recurrence's per-step products, callable from njit code.

Why: the per-step product of the "rows" recurrence (B > 8 rows, kernels.Plan) is a skinny
GEMM, (rows, H) x (H, G*H), whose one weight matrix is the same at every step. MKL can
pack that matrix once into its kernel's internal layout (cblas_sgemm_pack) and multiply
by the packed copy at every step (cblas_sgemm_compute): 16 x 256 x 1024 took 71 us
instead of NumPy's OpenBLAS 126-158 us (one thread, float32, Xeon 2.1 GHz; RESULTS_cpu.md,
Tuning log 19). Called from the step loop's njit code, the T steps are one njit call per
part instead of a Python loop with a BLAS call and an njit call per step.

Which MKL: torch's CPU wheels link MKL into libtorch_cpu.so and export its CBLAS packed
GEMM; that is the MKL found here (the library is loaded with ctypes, torch need not be
imported). Float32 only (torch's library exports no cblas_dgemm_pack). Where none is
found, the recurrence uses NumPy's OpenBLAS per step and the plan says why
(``status()``).

  status()                  (True, "mkl <version> in <library>") or (False, why not)
  fast_here()               (True, None) on Intel CPUs, where MKL runs its tuned kernels,
                            else (False, why "auto" prefers OpenBLAS)
  pack_weights(w, trans, m) MKL's packed copy of a (K, N) operand B (w, or w.T where
                            trans), for products with m-row left operands
  gemm_packed(a, packed, c, beta)   njit: c = a @ B + beta * c; a (m, K), c (m, N), both
                            with unit stride in their last dimension (rows may be strided)
  one_thread() / restore_threads(previous)   njit: MKL on the calling thread only, and back
  gemm(a, b, out)           out = a @ b (plain, one thread) for the big GEMMs around the loop

GPURNN_CPU_GEMM=openblas turns MKL off for the process (the plans then say so).

Calls go by symbol name (registered with llvmlite.binding.add_symbol, as sync.py does for
sched_yield), so kernels that use them cache on disk like every other kernel.

Run/test:  python -m pytest tests/test_cpu_backend.py -q -k mkl
"""
import ctypes
import functools
import importlib.util
import os
import platform

import llvmlite.binding
import llvmlite.ir as ir
import numpy as np
from numba.core import cgutils, types
from numba.extending import intrinsic

from .jit import stable_jit

# CBLAS enumerations (mkl_cblas.h)
ROW_MAJOR, NO_TRANS, TRANS, PACKED, B_MATRIX = 101, 111, 112, 151, 162

_COMPUTE = "gpurnn_mkl_sgemm_compute"          # the names the njit code calls
_SET_THREADS = "gpurnn_mkl_set_num_threads_local"


def _candidates():
    """Libraries that may hold MKL's CBLAS, best first."""
    spec = importlib.util.find_spec("torch")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            yield os.path.join(root, "lib", "libtorch_cpu.so")


def turned_off():
    """GPURNN_CPU_GEMM=openblas: the user chose OpenBLAS for the process (not a fallback)."""
    return os.environ.get("GPURNN_CPU_GEMM", "") == "openblas"


@functools.lru_cache(maxsize=None)
def _library():
    """(ctypes library, description) or (None, why not)."""
    if turned_off():
        return None, "GPURNN_CPU_GEMM=openblas"
    tried = []
    for path in _candidates():
        if not os.path.exists(path):
            tried.append(f"{path}: missing")
            continue
        try:
            lib = ctypes.CDLL(path)
            compute, pack = lib.cblas_sgemm_compute, lib.cblas_sgemm_pack
            size, threads = lib.cblas_sgemm_pack_get_size, lib.MKL_Set_Num_Threads_Local
        except (OSError, AttributeError) as e:
            tried.append(f"{path}: {e}")
            continue
        size.restype, size.argtypes = ctypes.c_size_t, [ctypes.c_int] * 4
        compute.restype = None
        compute.argtypes = ([ctypes.c_int] * 6 + [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                                  ctypes.c_int, ctypes.c_float, ctypes.c_void_p,
                                                  ctypes.c_int])
        threads.restype, threads.argtypes = ctypes.c_int, [ctypes.c_int]
        pack.restype = None
        pack.argtypes = ([ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int,
                                               ctypes.c_void_p])
        version = ctypes.create_string_buffer(256)
        try:
            lib.MKL_Get_Version_String(version, 256)
            name = version.value.decode(errors="replace").strip()
        except AttributeError:
            name = "MKL"
        for symbol, fn in ((_COMPUTE, compute), (_SET_THREADS, threads)):
            llvmlite.binding.add_symbol(symbol, ctypes.cast(fn, ctypes.c_void_p).value)
        return lib, f"{name} in {path}"
    return None, ("no MKL with a packed CBLAS GEMM found (torch's CPU wheel has one: "
                  "pip install torch)" + (f"; tried {'; '.join(tried)}" if tried else ""))


def status():
    """(True, which MKL) where the packed products can run, else (False, why not)."""
    lib, text = _library()
    return lib is not None, text


@functools.lru_cache(maxsize=None)
def cpu_vendor():
    """The CPU's vendor id ("GenuineIntel", "AuthenticAMD", ...) or "" where unknown. Read
    once: reading /proc/cpuinfo took 33-170 us here (measured; why it is that slow was not
    checked), and every float32 layer call asks (CpuBackend._products)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    text = platform.processor()           # Windows: "... GenuineIntel" / "... AuthenticAMD"
    return next((v for v in ("GenuineIntel", "AuthenticAMD") if v in text), "")


def fast_here():
    """(True, None) where MKL runs its tuned kernels, else (False, why): MKL dispatches its
    AVX2 / AVX-512 kernels on Intel CPUs only, and elsewhere runs a generic path
    (MKL_VERBOSE: "Intel(R) Architecture processors") that took twice OpenBLAS's time per
    step on an AMD EPYC Zen 5 (16 x 256 x 1024: 120 us vs 61 us; RESULTS_cpu.md, Tuning log
    21). So "auto" picks MKL on Intel CPUs only; gemm="mkl" runs it anywhere."""
    vendor = cpu_vendor()
    if vendor == "GenuineIntel":
        return True, None
    return False, (f"CPU vendor {vendor or 'unknown'}: MKL runs its generic, slower path "
                   "on non-Intel CPUs, so OpenBLAS was chosen")


def pack_weights(w, trans, m):
    """MKL's packed copy of the right operand B (K, N) of products a @ B with m-row a:
    B = w.T (w (N, K), C-contiguous) where ``trans``, else B = w (w (K, N)). Returns a
    64-byte aligned uint8 buffer holding the packed matrix (alpha = 1)."""
    from .kernels import aligned_empty
    lib, text = _library()
    if lib is None:
        raise RuntimeError(f"MKL packed GEMM unavailable: {text}")
    w = np.ascontiguousarray(w, np.float32)
    K, N = (w.shape[1], w.shape[0]) if trans else w.shape
    nbytes = lib.cblas_sgemm_pack_get_size(B_MATRIX, int(m), int(N), int(K))
    packed = aligned_empty((max(int(nbytes), 1),), np.uint8)
    previous = lib.MKL_Set_Num_Threads_Local(1)     # see gemm: no OpenMP team of MKL's own
    try:
        lib.cblas_sgemm_pack(ROW_MAJOR, B_MATRIX, TRANS if trans else NO_TRANS, int(m), int(N),
                             int(K), 1.0, w.ctypes.data, int(w.shape[1]), packed.ctypes.data)
    finally:
        lib.MKL_Set_Num_Threads_Local(previous)
    return packed


def _operand(a):
    """(CBLAS trans flag, leading dimension) of a 2-D float32 operand with unit stride in
    one dimension: a C-ordered block is used as is, an F-ordered one (a transposed view)
    transposed."""
    item = a.itemsize
    if a.strides[1] == item or a.shape[1] == 1:
        return NO_TRANS, max(a.strides[0] // item, a.shape[1], 1)
    if a.strides[0] == item or a.shape[0] == 1:
        return TRANS, max(a.strides[1] // item, a.shape[0], 1)
    raise ValueError(f"gemm: operand with strides {a.strides} has no unit-stride dimension")


def gemm(a, b, out):
    """out = a @ b by MKL on the calling thread only (its own MKL setting restored after).
    a (M, K), b (K, N), out (M, N) C-ordered rows; float32; a and b may be transposed
    views. The big GEMMs around the recurrence, each part its share of the rows."""
    lib, text = _library()
    if lib is None:
        raise RuntimeError(f"MKL GEMM unavailable: {text}")
    (M, K), N = a.shape, b.shape[1]
    if M == 0 or N == 0:
        return
    if K == 0:
        out[...] = 0
        return
    ta, lda = _operand(a)
    tb, ldb = _operand(b)
    previous = lib.MKL_Set_Num_Threads_Local(1)
    try:
        lib.cblas_sgemm_compute(ROW_MAJOR, ta, tb, M, N, K, a.ctypes.data, lda, b.ctypes.data,
                                ldb, 0.0, out.ctypes.data, out.strides[0] // out.itemsize)
    finally:
        lib.MKL_Set_Num_Threads_Local(previous)


def _declare(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


@intrinsic
def _compute(typingctx, a, packed, c, beta):
    """cblas_sgemm_compute(row-major, a no-trans, B packed): c = a @ B + beta c."""
    if not (isinstance(a, types.Array) and isinstance(c, types.Array) and a.ndim == c.ndim == 2
            and a.dtype == c.dtype == types.float32 and isinstance(packed, types.Array)):
        return None

    def codegen(context, builder, signature, args):
        i32, f32, ptr = ir.IntType(32), ir.FloatType(), ir.IntType(8).as_pointer()
        arr_a = context.make_array(signature.args[0])(context, builder, args[0])
        arr_b = context.make_array(signature.args[1])(context, builder, args[1])
        arr_c = context.make_array(signature.args[2])(context, builder, args[2])
        m, k = (builder.trunc(s, i32) for s in cgutils.unpack_tuple(builder, arr_a.shape, 2))
        n = builder.trunc(cgutils.unpack_tuple(builder, arr_c.shape, 2)[1], i32)
        four = ir.Constant(ir.IntType(64), 4)
        lda = builder.trunc(builder.udiv(cgutils.unpack_tuple(builder, arr_a.strides, 2)[0], four), i32)
        ldc = builder.trunc(builder.udiv(cgutils.unpack_tuple(builder, arr_c.strides, 2)[0], four), i32)
        beta = builder.fptrunc(args[3], f32) if args[3].type != f32 else args[3]
        fn = _declare(builder, _COMPUTE, ir.VoidType(),
                      [i32, i32, i32, i32, i32, i32, ptr, i32, ptr, i32, f32, ptr, i32])
        const = lambda v: ir.Constant(i32, v)    # noqa: E731
        builder.call(fn, [const(ROW_MAJOR), const(NO_TRANS), const(PACKED), m, n, k,
                          builder.bitcast(arr_a.data, ptr), lda, builder.bitcast(arr_b.data, ptr),
                          n, beta, builder.bitcast(arr_c.data, ptr), ldc])
        return context.get_dummy_value()
    return types.void(a, packed, c, types.float64), codegen


@intrinsic
def _set_local_threads(typingctx, n):
    """MKL_Set_Num_Threads_Local(n): MKL threads for calls from this thread (1: none, 0:
    back to the process-wide setting); returns the previous local setting."""
    if not isinstance(n, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        fn = _declare(builder, _SET_THREADS, i32, [i32])
        value = builder.trunc(args[0], i32) if args[0].type.width > 32 else args[0]
        return builder.sext(builder.call(fn, [value]), ir.IntType(64))
    return types.int64(n), codegen


for _fn in (_compute, _set_local_threads):      # stable cache keys (jit.py)
    _fn._set_uuid(f"gpurnn.cpu:mkl:{_fn.__name__}")


@stable_jit("mkl", inline="always")
def gemm_packed(a, packed, c, beta):
    """c = a @ B + beta * c with B packed by ``pack_weights`` for len(a) rows. a (m, K),
    c (m, N) float32, unit stride in the last dimension. Runs on as many threads as MKL
    is set to use on the calling thread: callers wrap their loop in ``one_thread()`` /
    ``restore_threads`` (the parts are the parallelism)."""
    _compute(a, packed, c, beta)


@stable_jit("mkl", inline="always")
def one_thread():
    """MKL single-threaded on this thread; returns the setting to give ``restore_threads``
    (the caller's own MKL calls, e.g. torch's, keep their threads afterwards)."""
    return _set_local_threads(1)


@stable_jit("mkl", inline="always")
def restore_threads(previous):
    _set_local_threads(previous)
