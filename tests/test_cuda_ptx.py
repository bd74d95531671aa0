"""Real PTX for sm_90 from every CUDA kernel of every registered cell, with no GPU: no
float64 instruction may appear in a float32 kernel, and registers / shared memory are
reported per kernel.

The simulator compiles nothing, so gpurnn.cuda.ptx_report runs in its own process with
NUMBA_ENABLE_CUDASIM=0 (tests/conftest.py turns the simulator on for this process). It needs
numba-cuda's CUDA toolkit extra (NVVM: ``.[test-cu12]`` or ``.[test-cu13]``) but no
driver; without it the test skips and says so.
"""
import os
import subprocess
import sys

import pytest

from gpurnn.cells import BUILTIN_CELLS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ptx_sm90_no_f64_in_float32_kernels(tmp_path):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    report = tmp_path / "ptx_report.md"
    r = subprocess.run([sys.executable, "-m", "gpurnn.cuda.ptx_report", "--out", str(report),
                        "--ptx-dir", str(tmp_path / "ptx")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    text = r.stdout + r.stderr
    if r.returncode == 3:
        pytest.skip("1 test: the CUDA toolkit (NVVM) is not installed, so no real PTX can be"
                    " compiled; pip install -e '.[test-cu12]' (or test-cu13) to run it ("
                    + text.strip()[-200:] + ")")
    print(text)
    assert r.returncode == 0, text[-4000:]
    body = report.read_text()
    assert "OK:" in body and "FAIL" not in body
    rows = [ln for ln in body.splitlines() if ln.startswith("| ") and "_float" in ln]
    # every registered cell x (fwd/bwd step + fwd/bwd persistent x {1block, grid}) + gemm,
    # per dtype; names as fwd_persist_grid_lstm_float32
    n = len(BUILTIN_CELLS)
    assert len(rows) == 2 * (n * 6 + 1), body
    for cell in BUILTIN_CELLS:
        for kind in ("fwd_step", "bwd_step", "fwd_persist_1block", "fwd_persist_grid",
                     "bwd_persist_1block", "bwd_persist_grid"):
            assert f"| {kind}_{cell}_float32 |" in body, (kind, cell)
    ptx32 = sorted((tmp_path / "ptx").glob("*float32*.ptx"))
    assert len(ptx32) == n * 6 + 1
    for p in ptx32:
        src = p.read_text()
        assert ".visible .entry" in src and ".target sm_90" in src, p.name
        assert ".f64" not in src, p.name
    # the float64 kernels really are float64 (the check above could not pass vacuously)
    assert ".f64" in (tmp_path / "ptx" / "gemm_float64.ptx").read_text()
