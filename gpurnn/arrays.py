"""Array-type helpers shared by the layers, the models and the checkpoints.

gpurnn's arrays are NumPy on the host backends and CuPy (or Numba device arrays) on the
cuda backend; users may also hand in torch tensors or plain lists.
"""
import numpy as np


def array_module(a):
    """numpy, or cupy when ``a`` is a CuPy array (the cuda backend's native arrays)."""
    if type(a).__module__.startswith("cupy"):
        import cupy
        return cupy
    return np


def to_numpy(a):
    """A host NumPy array for anything array-like: NumPy (as is), CuPy, a Numba device
    array, a torch tensor (CPU or CUDA, with or without grad), or a nested list."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    if hasattr(a, "copy_to_host"):
        return a.copy_to_host()
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return np.asarray(a)
