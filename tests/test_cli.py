"""The `gpurnn` command, in-process through main([...]) with tiny sizes."""
import json
import subprocess
import sys

import numpy as np
import pytest

from gpurnn.apps.cli import build_parser, main

TEXT = "".join(["the cat sat on the mat. ", "a dog ran in the park. ", "we like tea. "][i]
               for i in np.random.default_rng(0).integers(0, 3, 120))
TINY = ["--hidden", "12", "--window", "8", "--batch", "4", "--backend", "numpy", "--sample-length", "20"]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


@pytest.fixture
def trained(tmp_path, text_file):
    out = tmp_path / "run"
    assert main(["train", "--text", text_file, "--steps", "12", "--out", str(out)] + TINY) == 0
    return out


def test_train_writes_metrics_curve_and_checkpoint(tmp_path, text_file, capsys):
    trained = tmp_path / "run"
    assert main(["train", "--text", text_file, "--steps", "12", "--out", str(trained)] + TINY) == 0
    metrics = json.loads((trained / "metrics.json").read_text())
    for key in ("val_bpc", "train_bpc", "steps", "backend", "chars_per_s", "unigram_bpc"):
        assert key in metrics
    assert metrics["steps"] == 12 and metrics["backend"] == "numpy" and metrics["chars_per_s"] > 0
    assert np.isfinite(metrics["val_bpc"]) and np.isfinite(metrics["train_bpc"])
    assert (trained / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (trained / "checkpoint.npz").stat().st_size > 0
    out = capsys.readouterr()
    assert "val" in out.out and "bits/char" in out.out and "sample at step" in out.out
    assert "chars/s" in out.err and "step 12/12" in out.err          # progress bar on stderr


def test_sample_from_checkpoint(trained, capsys):
    capsys.readouterr()
    assert main(["sample", str(trained / "checkpoint.npz"), "--length", "30", "--prime", "the ",
                 "--temperature", "0.5", "--seed", "1", "--backend", "numpy"]) == 0
    printed = capsys.readouterr().out.rstrip("\n")
    assert printed.startswith("the ") and len(printed) == 34 and set(printed) <= set(TEXT)


def test_resume_continues_to_the_total_steps(trained, text_file, tmp_path):
    out = tmp_path / "resumed"
    assert main(["train", "--text", text_file, "--steps", "15", "--out", str(out),
                 "--resume", str(trained / "checkpoint.npz")] + TINY) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 15


def error_of(argv, capsys):
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def test_text_errors_exit_2_and_name_the_problem(tmp_path, capsys):
    missing = str(tmp_path / "nope.txt")
    code, err = error_of(["train", "--text", missing, "--out", str(tmp_path / "o")] + TINY, capsys)
    assert code == 2 and "no such file" in err and "nope.txt" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, err = error_of(["train", "--text", str(empty)] + TINY, capsys)
    assert code == 2 and "empty" in err
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00abc\x80")
    code, err = error_of(["train", "--text", str(binary)] + TINY, capsys)
    assert code == 2 and "not UTF-8" in err


def test_window_longer_than_text_exits_2(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("tiny text")
    code, err = error_of(["train", "--text", str(short), "--window", "50", "--hidden", "4",
                          "--backend", "numpy"], capsys)
    assert code == 2 and "--window 50" in err and "longer than the text" in err


def test_bad_checkpoints_exit_2(tmp_path, trained, capsys):
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a zip")
    code, err = error_of(["sample", str(corrupt), "--backend", "numpy"], capsys)
    assert code == 2 and "corrupt.npz" in err
    other = tmp_path / "other.txt"
    other.write_text("A completely different text, with other letters: XYZ QWERTY!" * 5)
    code, err = error_of(["train", "--text", str(other), "--steps", "20", "--out", str(tmp_path / "o"),
                          "--resume", str(trained / "checkpoint.npz")] + TINY, capsys)
    assert code == 2 and "different text" in err
    code, err = error_of(["sample", str(trained / "checkpoint.npz"), "--prime", "QQ", "--backend", "numpy"],
                         capsys)
    assert code == 2 and "prime" in err


def test_unknown_backend_exits_2(text_file, capsys):
    code, err = error_of(["train", "--text", text_file, "--backend", "tpu", "--steps", "1"], capsys)
    assert code == 2 and "backend" in err


@pytest.mark.parametrize("command", ["train", "sample", "forecast", "gradflow", "info"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: gpurnn " + command in capsys.readouterr().out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "train" in capsys.readouterr().out
    assert set(build_parser()._subparsers._group_actions[0].choices) == {
        "train", "sample", "forecast", "gradflow", "info"}


def test_forecast_and_gradflow_write_their_files(tmp_path, capsys):
    assert main(["forecast", "--out", str(tmp_path / "f"), "--n", "400", "--steps", "10", "--hidden", "4",
                 "--cells", "gru", "--backend", "numpy"]) == 0
    assert (tmp_path / "f" / "forecast.png").exists()
    assert "AR(5)" in (tmp_path / "f" / "forecast.md").read_text()
    assert main(["gradflow", "--out", str(tmp_path / "g"), "--length", "12", "--hidden", "4",
                 "--truncate", "5"]) == 0
    flows = json.loads((tmp_path / "g" / "gradflow.json").read_text())
    assert set(flows) == {"rnn_tanh", "rnn_relu", "lstm", "gru"} and len(flows["gru"]["grad_norm"]) == 12
    assert (tmp_path / "g" / "gradflow.png").exists()
    assert "decades/step" in capsys.readouterr().out


def test_info_never_crashes_and_names_the_essentials(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for label in ("backends available", "GPU / driver", "numba", "numba-cuda", "cupy", "torch",
                  "CUDA simulator"):
        assert label in out


def test_module_runs_as_a_script():
    done = subprocess.run([sys.executable, "-m", "gpurnn.apps.cli", "info"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "backends available" in done.stdout


@pytest.mark.parametrize("cell", ["mgu", "cifg_lstm", "slstm"])
def test_train_resume_and_gradflow_take_every_registered_cell(cell, tmp_path, text_file):
    """Cells beyond torch's (registered through define_cell) train, checkpoint (with their
    S states carried), resume and show their gradient flow like the built-ins."""
    out = tmp_path / cell
    assert main(["train", "--text", text_file, "--steps", "4", "--cell", cell, "--out", str(out)]
                + TINY) == 0
    assert main(["train", "--text", text_file, "--steps", "6", "--cell", cell,
                 "--out", str(tmp_path / "again"), "--resume", str(out / "checkpoint.npz")] + TINY) == 0
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["steps"] == 6
    assert main(["gradflow", "--cells", cell, "--length", "12", "--hidden", "6",
                 "--out", str(tmp_path / "flow")]) == 0
