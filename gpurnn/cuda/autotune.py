"""``algo="auto"`` by measurement: time the step and persistent kernels once per
(cell, shape class, dtype) on the real GPU and cache the winner on disk.

Shape class: (cell, dtype, B and H rounded up to powers of two, the GPU's name), so one
timing serves nearby shapes. The cache is a JSON file, ``$GPURNN_AUTOTUNE_CACHE`` or
``~/.cache/gpurnn/cuda_auto.json``: {"version": 1, "winners": {key: {"algo": ...,
"times": {...}}}}; written atomically (temp file + rename); a file that cannot be read is
ignored and rewritten. Where no timing exists and none can be made (the simulator, or
``GPURNN_AUTOTUNE=0``), the documented static rule decides (kernels_docs/cuda.md,
"The auto rule"). The timer is injectable, so the logic is unit-tested with a fake one
(tests/test_cuda_backend.py).
"""
import json
import os
import tempfile

VERSION = 1


def _pow2(n):
    n = max(int(n), 1)
    return 1 << (n - 1).bit_length()


def shape_class(cell, B, H, dtype, device=""):
    return f"{cell}|{dtype}|B{_pow2(B)}|H{_pow2(H)}|{device}"


def default_path():
    return os.environ.get("GPURNN_AUTOTUNE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "gpurnn", "cuda_auto.json")


class AutoTuner:
    """choose(key, candidates) -> the winning candidate's name.

    candidates: {name: fn}; ``timer(fn)`` runs fn (warm-up included as the timer likes)
    and returns seconds. A cached key is answered without timing. timer=None: nothing is
    timed, and choose returns None for unknown keys (the caller's static rule decides)."""

    def __init__(self, path=None, timer=None):
        self.path = path or default_path()
        self.timer = timer
        self._winners = None

    def _load(self):
        if self._winners is None:
            try:
                with open(self.path) as fh:
                    data = json.load(fh)
                self._winners = dict(data["winners"]) if data.get("version") == VERSION else {}
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                self._winners = {}
        return self._winners

    def cached(self, key):
        w = self._load().get(key)
        return None if w is None else w.get("algo")

    def choose(self, key, candidates):
        hit = self.cached(key)
        if hit is not None and hit in candidates:
            return hit
        if self.timer is None:
            return None
        times = {name: float(self.timer(fn)) for name, fn in candidates.items()}
        best = min(times, key=times.get)
        self._load()[key] = {"algo": best, "times": times}
        self._save()
        return best

    def _save(self):
        d = os.path.dirname(self.path) or "."
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".cuda_auto.")
        with os.fdopen(fd, "w") as fh:
            json.dump({"version": VERSION, "winners": self._winners}, fh, indent=1)
        os.replace(tmp, self.path)


def gpu_timer(fn, reps=3):
    """Seconds of one call of fn on the GPU: one warm-up (JIT), then the median of
    ``reps`` calls, each closed by a device synchronize."""
    import time
    from numba import cuda
    fn()
    cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]
