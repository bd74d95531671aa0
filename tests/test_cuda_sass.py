"""SASS budgets of the CUDA kernels, from sm_90 machine code, with no GPU.

gpurnn.cuda.sass_report compiles every float32 kernel (every version x every registered
cell; the report itself also covers float64) with ptxas and disassembles it with nvdisasm,
in its own process with the simulator off (like tests/test_cuda_ptx.py). Budgets:
  every float32 kernel: 0 spill bytes;
  the persistent kernels: 0 calls to integer division helpers;
  innermost FFMA loops of fwd_persist / bwd_persist: FFMA / instructions >= 0.5, no
    exemption (the one-gate cells' forward blocks JB = 4 units per thread to get there).
Needs numba-cuda's CUDA extra (NVVM), ptxas (nvidia-cuda-nvcc-cu12) and nvdisasm
(nvidia-cuda-nvdisasm); skips, saying which is missing, without them.
"""
import json
import os
import subprocess
import sys

import pytest

from gpurnn.cells import BUILTIN_CELLS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("sass") / "sass.json"
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "gpurnn.cuda.sass_report", "--dtypes", "float32",
                        "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    text = r.stdout + r.stderr
    if r.returncode == 3:
        pytest.skip("SASS budgets: " + text.strip()[-300:] + " (pip install -e '.[test-cu12]')")
    assert r.returncode == 0, text[-4000:]
    return json.loads(out.read_text())["kernels"]


def test_every_kernel_reported(report):
    got = {k["name"] for k in report}
    for cell in BUILTIN_CELLS:
        for kind in ("fwd_step", "bwd_step", "fwd_persist_1block", "fwd_persist_grid",
                     "bwd_persist_1block", "bwd_persist_grid"):
            assert f"{kind}_{cell}_float32" in got
    assert "gemm_float32" in got
    for k in report:
        for key in ("registers", "spill_bytes", "shared_bytes", "div_calls", "inner_loops"):
            assert key in k, (k["name"], key)


def test_no_spills_in_float32_kernels(report):
    bad = [(k["name"], k["spill_bytes"]) for k in report if k["spill_bytes"]]
    assert not bad, bad


def test_no_division_helpers_in_persistent_kernels(report):
    bad = [(k["name"], k["div_calls"]) for k in report
           if "persist" in k["kind"] and k["div_calls"]]
    assert not bad, bad


def test_persistent_inner_loops_ffma_ratio(report):
    """FFMA / instructions >= 0.5 in every FFMA inner loop of fwd_persist / bwd_persist of
    every cell, and no design caps it below 0.5 (sass_report.ratio_cap: G*JB*RB FMAs per
    G*JB + RB loads; the one-gate forward at JB = RB = 4: 16 per 8)."""
    from gpurnn.cuda import sass_report as S
    loops = [(k["name"], lp["ffma"], lp["instructions"]) for k in report
             if k["kind"] in ("fwd_persist", "bwd_persist") for lp in k["inner_loops"]
             if lp["ffma"]]
    assert loops, "no FFMA inner loop found in the persistent kernels"
    capped = [k["name"] for k in report if "persist" in k["kind"] and S.ratio_cap(k) < 0.5]
    assert not capped, capped
    bad = S.budget_failures(report)
    assert not bad, bad
