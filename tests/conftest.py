"""Test setup. The CUDA simulator must be chosen before Numba is imported anywhere.

With no NVIDIA driver (CI, laptops) the CUDA kernels run in Numba's CUDA simulator;
with GPURNN_REAL_GPU=1 (benchmarks/gpu_check.sh) they run on the real GPU.
"""
import os
import shutil
import sys
import zlib

if os.environ.get("GPURNN_REAL_GPU") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0" if shutil.which("nvidia-smi") else "1")
sys.setswitchinterval(5e-4)   # the simulator runs a thread per CUDA thread: switch fast

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng(request):
    """A fresh generator per test, seeded from the test's name so failures reproduce."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
