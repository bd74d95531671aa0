"""Wall-clock timing shared by the CPU-side benchmarks (the GPU one times with CUDA events)."""
import time


def time_calls(fn, repeats, warmup=2):
    """Seconds taken by each of ``repeats`` calls of ``fn()``, after ``warmup`` untimed calls
    (which also keep JIT compilation out of the numbers)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times
