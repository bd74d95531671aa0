"""Install paths and what the suite reports: the extras combine as the README says, the README's
test command is the one CI runs, `gpurnn info` names the CUDA pieces, and each module-level skip
reason counts the tests it hides."""
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gpurnn.apps.cli import collect_info

ROOT = Path(__file__).resolve().parent.parent


def test_extras_combine_and_only_test_cu_pins_a_toolkit():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any("[cu1" in req for req in extras["test"])        # combines with .[cuda13]
    for cu in ("cu12", "cu13"):
        assert "gpurnn[test]" in extras[f"test-{cu}"]
        assert any(f"numba-cuda[{cu}]" in req for req in extras[f"test-{cu}"])
        assert any(f"numba-cuda[{cu}]" in req for req in extras[f"cuda{cu[2:]}"])


def test_readme_test_command_is_what_ci_runs():
    command = 'python -m pip install -e ".[test-cu12]" && python -m pytest -q -ra'
    assert command in (ROOT / "README.md").read_text()
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in ln
          and not ln.startswith("#")]
    assert ci == [command]
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in (
        ROOT / "README.md").read_text()


def test_info_names_cuda_bindings_toolkit_and_gemm_path():
    rows = dict(collect_info())
    for label in ("cuda-bindings", "CUDA toolkit packages", "cuda GEMM path", "cpu GEMM path"):
        assert rows[label], label
    assert re.match(r"(cuBLAS via CuPy|Numba gemm kernel|none)", rows["cuda GEMM path"])
    assert re.match(r"(mkl|openblas), time loop in (njit|python)", rows["cpu GEMM path"])
    assert re.match(r"(gpurnn's own|the calling thread's OpenMP team)", rows["cpu thread pool"])


def test_module_skip_reasons_count_the_tests_they_skip():
    pytest.importorskip("torch", reason="1 test: counts the torch modules' tests, which needs torch")
    import gpurnn
    modules = ["test_torch_bridge.py", "test_torch_compile.py", "test_torch_ddp.py"]
    if {"numpy", "cpu"} <= set(gpurnn.available_backends()):
        modules.append("test_torch_parity.py")         # its count assumes both host backends
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           *[f"tests/{m}" for m in modules]], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    collected = [ln.split("::")[0] for ln in done.stdout.splitlines() if "::" in ln]
    for m in modules:
        text = (ROOT / "tests" / m).read_text()
        claimed = {int(n) for n in re.findall(r"the (\d+) [\w/ ]*tests", text)}
        assert claimed == {collected.count(f"tests/{m}")}, (m, claimed)
