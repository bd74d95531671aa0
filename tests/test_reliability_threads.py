"""Fork and thread safety of the CPU backend's split (README, Reliability).

* A child forked after the parent used the multi-part split gets a fresh thread pool
  (os.register_at_fork in gpurnn/cpu/parallel.py) instead of spinning forever at a barrier.
* Threads entering and leaving the one-thread BLAS scope in any order leave BLAS as it was
  (one process-wide, reference-counted limit), and split layer calls from two threads at
  once give the results of one thread.
"""
import json
import multiprocessing
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import gpurnn
from gpurnn.cpu import CpuBackend, kernels

T, B, I, H = 6, 1, 3, 8
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # this checkout's gpurnn


SPLIT_SMALL = kernels.SplitRules(units_per_part=1, rows_per_part=1, split_macs=0,  # split tiny shapes,
                                 fit_free_cores=False)                           # whatever else runs


def run_split_lstm(seed=0):
    m = gpurnn.LSTM(I, H, backend=CpuBackend(threads=2, split=SPLIT_SMALL), seed=1)
    x = np.random.default_rng(seed).standard_normal((T, B, I)).astype(np.float32)
    out, _ = m(x)
    m.backward(np.ones_like(out))
    assert {k: p[0][0]["split"] for k, p in m.last_plans.items()} == {
        "forward": ("units", 2), "backward": ("units", 2)}
    return out, m.grads["weight_hh_l0"].copy()


def blas_threads():
    """{library path: threads} of the BLAS libraries loaded now."""
    return {lib["filepath"]: lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork here")
def test_forked_child_after_split_does_not_hang():
    parent = run_split_lstm()               # starts the pool in the parent
    with multiprocessing.get_context("fork").Pool(1) as pool:
        try:
            child = pool.apply_async(run_split_lstm).get(timeout=60)
        except multiprocessing.TimeoutError:
            pool.terminate()
            pytest.fail("a forked child hung in a split layer call (dead inherited pool)")
    for a, b in zip(parent, child):
        np.testing.assert_array_equal(a, b)


# Run in a fresh process: OpenBLAS ignores thread-count changes made from other threads
# once the main thread has set one (seen with OpenBLAS 0.3.31), which any earlier test
# in this process may have done.
ORDERED_EXIT = """
import json, threading
import numpy as np
from threadpoolctl import threadpool_info
from gpurnn.cpu.parallel import single_threaded_blas

def blas():
    return {lib["filepath"]: lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

before = blas()
entered, first_left, second_inside = threading.Event(), threading.Event(), threading.Event()
inside = []

def first():                    # enters first, leaves first
    with single_threaded_blas():
        entered.set()
        second_inside.wait(10)
    first_left.set()

def second():                   # enters second, leaves last
    entered.wait(10)
    with single_threaded_blas():
        second_inside.set()
        first_left.wait(10)
        inside.append(blas())   # still held for this thread

threads = [threading.Thread(target=f) for f in (first, second)]
for t in threads:
    t.start()
for t in threads:
    t.join(20)
print(json.dumps({"before": before, "inside": inside[0], "after": blas()}))
"""


def test_blas_limit_restored_whatever_order_threads_leave():
    done = subprocess.run([sys.executable, "-c", ORDERED_EXIT], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    if not seen["before"] or max(seen["before"].values()) < 2:
        pytest.skip(f"BLAS runs one thread here already: {seen}")
    assert set(seen["inside"].values()) == {1}
    assert {k: seen["after"][k] for k in seen["before"]} == seen["before"]


def test_two_threads_at_once_give_one_threads_results():
    before = blas_threads()
    want = [run_split_lstm(seed) for seed in range(2)]
    got, errors = [None, None], []

    def work(i):
        try:
            for _ in range(5):
                got[i] = run_split_lstm(i)
        except BaseException as exc:      # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and not any(t.is_alive() for t in threads)
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            np.testing.assert_array_equal(a, b)
    after = blas_threads()
    assert {k: after[k] for k in before} == before       # a library loaded meanwhile may be new


@pytest.mark.parametrize("batch", [1, 11])          # "units" and "rows" splits
def test_fixed_thread_count_is_bitwise_repeatable(batch):
    """The README's determinism promise: the same thread count gives the same bits; another
    thread count splits the sums differently and changes results at rounding level only."""
    x = np.random.default_rng(batch).standard_normal((20, batch, 5)).astype(np.float32)

    def run(threads):
        m = gpurnn.LSTM(5, 37, backend=CpuBackend(threads=threads, split=SPLIT_SMALL), seed=3)
        out, _ = m(x)
        m.backward(np.ones_like(out))
        return out, m.grads["weight_hh_l0"].copy()
    one, two = run(1), run(2)
    for a, b in zip(two, run(2)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(two, one):
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
