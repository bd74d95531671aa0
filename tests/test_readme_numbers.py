"""The README's numbers come from the commands it names: the forecast table is what
`gpurnn forecast` (defaults) writes to DIR/forecast.md, the gradient-flow table what
`gpurnn gradflow` prints. (The main job's output is a run's log, dated in the README.)"""
import re
from pathlib import Path

from gpurnn.apps.cli import main

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 0.09     # per entry, relative: float32 training rounds differently with another
                     # BLAS or CPU: the RNN entry was 0.0748 on a Xeon (MKL), 0.0732 and 0.0795
                     # on an EPYC Zen 5 (OpenBLAS SkylakeX / Haswell kernels), 6.3% apart at
                     # most from the table's; a stale table was 11% off


def markdown_table(text):
    """{row label: [numbers]} of the first Markdown table in ``text`` (bold/italics ignored)."""
    rows, started = {}, False
    for line in text.splitlines():
        if line.startswith("|"):
            started = True
            cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
            numbers = [float(c) for c in cells[1:] if re.fullmatch(r"-?\d+(\.\d+)?", c)]
            if numbers:
                rows[cells[0]] = numbers
        elif started:
            break
    return rows


def test_readme_forecast_table_is_what_the_command_writes(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("`gpurnn forecast` prints"):]
    claimed = markdown_table(section)
    assert main(["forecast", "--out", str(tmp_path)]) in (0, None)
    measured = markdown_table((tmp_path / "forecast.md").read_text())
    assert claimed.keys() == measured.keys() and len(claimed) >= 5
    for model, numbers in claimed.items():
        for want, got in zip(numbers, measured[model], strict=True):
            assert abs(got - want) <= TOLERANCE * abs(want), (model, want, got)


def _numbers_by_cell(text):
    return {ln.split()[0]: [float(v) for v in ln.split()[1:]] for ln in text.splitlines()
            if re.match(r"(rnn_tanh|rnn_relu|lstm|gru)\s", ln)}


def test_readme_gradflow_table_is_what_the_command_prints(tmp_path, capsys):
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("and `gpurnn gradflow`:"):]
    claimed = _numbers_by_cell(block[:block.index("```", block.index("```") + 3)])
    capsys.readouterr()
    assert main(["gradflow", "--out", str(tmp_path)]) in (0, None)
    measured = _numbers_by_cell(capsys.readouterr().out)
    assert claimed.keys() == measured.keys() == {"rnn_tanh", "rnn_relu", "lstm", "gru"}
    for cell, numbers in claimed.items():
        for want, got in zip(numbers, measured[cell], strict=True):
            assert abs(got - want) <= 0.02 * abs(want), (cell, want, got)   # printed to 3 digits
