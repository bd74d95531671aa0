"""Argument checks shared by every public entry point.

Each check raises before any kernel runs, naming the argument, what was expected and
what was given, so a user never meets a Numba typing error or a silent wrong answer.
"""
import os

import numpy as np


def describe_shape(shape):
    return "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"


def check_array_like(name, a):
    """TypeError naming the type unless ``a`` may be an array (NumPy would turn a string
    into a 0-d array, and the user would hear about its shape instead of its type)."""
    if a is None or isinstance(a, (str, bytes, dict, set)):
        shown = repr(a) if len(repr(a)) <= 40 else repr(a)[:37] + "..."
        raise TypeError(f"{name}: expected an array of numbers, got {type(a).__name__} {shown}")
    return a


def check_float_array(name, a, shape, dtype):
    """``a`` must have ``shape`` (None = any size) and exactly ``dtype``. Returns a."""
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise TypeError(f"{name}: expected an array of shape {describe_shape(shape)}, "
                        f"got {type(a).__name__}")
    actual = tuple(a.shape)
    if len(actual) != len(shape) or any(e is not None and e != s for e, s in zip(shape, actual)):
        raise ValueError(f"{name}: expected shape {describe_shape(shape)}, got {actual}")
    if np.dtype(a.dtype) != np.dtype(dtype):
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype).name}, got {np.dtype(a.dtype).name}"
                        f" (convert with .astype('{np.dtype(dtype).name}'))")
    return a


def check_input_kind(name, x, layout="T, B"):
    """What a layer input ``x`` (an array) is: True for integer token ids (2 dimensions,
    ``layout``), False for floats (3 dimensions, ``layout`` + I; their dtype and size are
    checked with check_float_array). Bool arrays and other ranks raise, naming both."""
    kind, shape = np.dtype(x.dtype).kind, tuple(x.shape)
    accepted = f"floats ({layout}, I) or integer token ids ({layout})"
    if kind == "b":
        raise TypeError(f"{name}: expected {accepted}, got dtype bool (a one-hot mask: pass the "
                        f"ids, or convert it with .astype('float32'))")
    if kind in "iu" and len(shape) == 2:
        return True
    if len(shape) != 3:
        raise ValueError(f"{name}: expected 3 dimensions ({layout}, I), got shape {shape} of "
                         f"{np.dtype(x.dtype).name}; the other input accepted is integer token "
                         f"ids, 2 dimensions ({layout})")
    return False


def check_token_ids(name, ids, size):
    """Integer token ids must lie in 0..size-1 (size = input_size, the vocabulary: each id
    names a column of W_ih). ValueError naming the first id out of range, where it is and
    how many are. Returns ids."""
    if ids.size:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= size:
            host = np.asarray(ids.get() if hasattr(ids, "get") and not isinstance(ids, np.ndarray)
                              else ids)
            bad = np.argwhere((host < 0) | (host >= size))
            where = tuple(int(i) for i in bad[0])
            raise ValueError(f"{name}: expected token ids in 0..{size - 1} (input_size {size}), "
                             f"got {int(host[where])} at index {where} ({len(bad)} id(s) out of "
                             f"range)")
    return ids


def check_lengths(lengths, batch, steps):
    """Validate ``lengths`` (B,) integers in 1..T; returns a host int64 array or None."""
    if lengths is None:
        return None
    if hasattr(lengths, "get") and not isinstance(lengths, np.ndarray):
        lengths = lengths.get()          # CuPy array: lengths drive host-side indexing
    arr = np.asarray(lengths)
    if arr.shape != (batch,):
        raise ValueError(f"lengths: expected shape ({batch},) to match the batch, got {arr.shape}")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"lengths: expected integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 1 or arr.max() > steps):
        bad = arr[(arr < 1) | (arr > steps)]
        raise ValueError(f"lengths: expected every length in 1..{steps} (the sequence length T),"
                         f" got {bad.tolist()}")
    return arr


def check_positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def physical_memory():
    """The machine's memory in bytes (None where the platform cannot say): the bound that
    sizes read from files or asked for by users are checked against before allocating."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
