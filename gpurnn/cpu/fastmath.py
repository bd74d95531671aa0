"""Vectorisable float32 exp and tanh for the CPU kernels (branch-free, no libm calls).

Why: under numba.njit, ``np.exp``/``np.tanh`` on float32 are scalar libm calls (about
12 ns each here) that stop LLVM from vectorising the pointwise loop over hidden units;
without SVML there is no vector libm. These are plain polynomial/rational arithmetic, so
the whole fused cell loop compiles to AVX2/AVX-512 code.

Versions:
  exp_f32(x)   Cephes expf: Cody-Waite reduction x = n ln2 + r, degree-7 polynomial in r,
               2^n built from its exponent bits; x clamped to [-87.3, 88] (no inf/denormals).
               Max relative error ~2 ulp.
  tanh_f32(x)  Eigen's rational approximation (odd degree-13 over even degree-6), x clamped
               to +-7.905 where float32 tanh is +-1. Max error ~2 ulp.
Only used for float32; float64 kernels keep libm (they check gradients to 1e-10).

Run/test:  python -m pytest tests/test_cpu_backend.py -q -k fastmath
"""
import llvmlite.ir
import numpy as np
from numba.core import types
from numba.extending import intrinsic

from .jit import stable_jit

f32 = np.float32


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (a bitcast, no conversion)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvmlite.ir.FloatType())
    return types.float32(types.int32), codegen


_float32_from_bits._set_uuid("gpurnn.cpu:fastmath:_float32_from_bits")   # see jit.stable_jit

_EXP_LO, _EXP_HI = f32(-87.3), f32(88.0)
_LOG2E, _LN2_HI, _LN2_LO = f32(1.44269504088896341), f32(0.693359375), f32(-2.12194440e-4)
_EXP_P = tuple(f32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
_HALF, _ONE = f32(0.5), f32(1.0)


@stable_jit("fastmath", inline="always")
def exp_f32(x):
    x = min(max(x, _EXP_LO), _EXP_HI)
    n = np.floor(x * _LOG2E + _HALF)
    r = x - n * _LN2_HI - n * _LN2_LO
    p = _EXP_P[0]
    p = p * r + _EXP_P[1]
    p = p * r + _EXP_P[2]
    p = p * r + _EXP_P[3]
    p = p * r + _EXP_P[4]
    p = p * r + _EXP_P[5]
    p = p * r * r + r + _ONE
    two_n = _float32_from_bits(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))
    return p * two_n


_TANH_CLAMP = f32(7.90531110763549805)
_TANH_ALPHA = tuple(f32(c) for c in (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
                                      5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
                                      4.89352455891786e-03))
_TANH_BETA = tuple(f32(c) for c in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                                     4.89352518554385e-03))


@stable_jit("fastmath", inline="always")
def tanh_f32(x):
    x = min(max(x, -_TANH_CLAMP), _TANH_CLAMP)
    x2 = x * x
    p = _TANH_ALPHA[0]
    p = p * x2 + _TANH_ALPHA[1]
    p = p * x2 + _TANH_ALPHA[2]
    p = p * x2 + _TANH_ALPHA[3]
    p = p * x2 + _TANH_ALPHA[4]
    p = p * x2 + _TANH_ALPHA[5]
    p = p * x2 + _TANH_ALPHA[6]
    q = _TANH_BETA[0]
    q = q * x2 + _TANH_BETA[1]
    q = q * x2 + _TANH_BETA[2]
    q = q * x2 + _TANH_BETA[3]
    return x * p / q
