"""The `gpurnn` command never loses work and never shows a traceback (README, Reliability).

* One error path: every expected failure is one line ``gpurnn CMD: error: ...`` and exit 2
  (the issue's cases, then hypothesis driving every subcommand with bad values).
* Periodic checkpoints; a resume from any of them repeats the uninterrupted run bit for
  bit; SIGINT / SIGTERM save and exit 130 / 143; kill -9 leaves a loadable checkpoint and
  the next run clears its temp files.
* Divergence stops with exit 2 naming the step and a remedy, keeping a good checkpoint.
* --resume says what it will not change; progress lines show the latest validation.
"""
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpurnn.apps import cli
from gpurnn.train.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))    # this checkout's gpurnn
TEXT = "".join(["the cat sat on the mat. ", "a dog ran in the park. ", "we like tea. "][i]
               for i in np.random.default_rng(0).integers(0, 3, 120))
TINY = ["--hidden", "12", "--window", "8", "--batch", "4", "--backend", "numpy", "--sample-length", "20"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, text_file):
    out = tmp_path_factory.mktemp("trained")
    assert run(["train", "--text", text_file, "--steps", "6", "--out", str(out)] + TINY)[0] == 0
    return str(out / "checkpoint.npz")


def run(argv):
    """(exit code, stdout, stderr) of cli.main(argv), in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(argv, *words):
    code, _, err = run(argv)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("step ")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"gpurnn {argv[0]}: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]

# --------------------------------------------------------------------------- one error path


def test_the_issues_cases_are_one_line_and_exit_2(tmp_path, text_file, trained):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    train = ["train", "--text", text_file, "--steps", "2"] + TINY
    cases = [
        (train + ["--out", str(a_file)], "--out", "not a directory"),
        (train + ["--out", str(a_file / "sub")], "--out"),
        (train + ["--out", "/proc/gpurnn-cannot-write-here"], "--out"),
        (train + ["--clip", "0"], "--clip"), (train + ["--clip", "-1"], "--clip"),
        (train + ["--clip", "nan"], "--clip"),
        (train + ["--hidden", "100000000"], "--hidden", "100000000"),
        (train + ["--lr", "inf"], "--lr"),
        (["sample", trained, "--temperature", "nan"], "--temperature"),
        (["sample", trained, "--temperature", "0"], "--temperature"),
        (["sample", trained, "--backend", "bogus"], "--backend", "bogus"),
        (["sample", str(tmp_path)], "is a directory"),
        (["sample", str(a_file)], "a_file"),
        (["forecast", "--tau", "0", "--out", str(tmp_path / "f")], "--tau"),
        (["forecast", "--hidden", "0", "--out", str(tmp_path / "f")], "--hidden"),
        (["forecast", "--cells", "bogus", "--out", str(tmp_path / "f")], "--cells", "bogus"),
        (["gradflow", "--cells", "bogus", "--out", str(tmp_path / "g")], "--cells", "bogus"),
        (["train", "--bogus-option"], "--bogus-option"),
    ]
    for argv, *words in cases:
        line = assert_one_line_error(argv, *words)
        assert "allow_pickle" not in line


BAD_INT = ["0", "-1", "-7", "1.5", "abc", "", "nan", "1e3", "99999999999999999999"]
BAD_FLOAT = ["nan", "inf", "-inf", "-1", "abc", "", "0"]
BAD = {  # subcommand: {option: values that are all wrong for it}
    "train": {"--hidden": BAD_INT, "--layers": BAD_INT, "--window": BAD_INT, "--batch": BAD_INT,
              "--steps": BAD_INT, "--eval-every": BAD_INT, "--lr": BAD_FLOAT, "--clip": BAD_FLOAT,
              "--val-fraction": BAD_FLOAT + ["1", "2"], "--temperature": BAD_FLOAT,
              "--seed": ["-1", "abc", "1.5"], "--sample-every": ["-1", "abc"],
              "--checkpoint-every": ["-1", "abc", "2.5"], "--checkpoint-seconds": ["-1", "nan", "abc"],
              "--cell": ["bogus", ""], "--optimizer": ["rmsprop"], "--backend": ["bogus", ""],
              "--text": ["/nonexistent/text.txt", "/"]},
    "sample": {"--length": ["-1", "abc", "99999999999999999999"], "--temperature": BAD_FLOAT,
               "--seed": ["-1", "abc"], "--backend": ["bogus", "tpu"]},
    "forecast": {"--n": BAD_INT, "--tau": BAD_INT, "--hidden": BAD_INT, "--steps": BAD_INT,
                 "--cells": ["bogus", "", ",", "lstm,bogus"], "--backend": ["bogus"], "--seed": ["-1", "x"]},
    "gradflow": {"--length": BAD_INT + ["1"], "--hidden": BAD_INT, "--truncate": BAD_INT,
                 "--cells": ["bogus", "", "gru,,x"], "--seed": ["-1", "x"]},
}


@st.composite
def bad_command(draw, tmp, text_file, trained):
    command = draw(st.sampled_from(sorted(BAD)))
    options = BAD[command]
    chosen = draw(st.lists(st.sampled_from(sorted(options)), min_size=1, max_size=3, unique=True))
    argv = {"train": ["train", "--text", text_file, "--steps", "2", "--out", tmp] + TINY,
            "sample": ["sample", trained, "--length", "5", "--backend", "numpy"],
            "forecast": ["forecast", "--n", "200", "--steps", "2", "--hidden", "4", "--cells", "gru",
                         "--backend", "numpy", "--out", tmp],
            "gradflow": ["gradflow", "--length", "6", "--hidden", "4", "--truncate", "3", "--out", tmp]}[command]
    for option in chosen:
        argv += [option, draw(st.sampled_from(options[option]))]     # the last value given wins
    return argv


@settings(max_examples=int(os.environ.get("GPURNN_FUZZ_EXAMPLES", 60)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bad_values_never_give_a_traceback(tmp_path, text_file, trained, data):
    argv = data.draw(bad_command(str(tmp_path / "out"), text_file, trained))
    assert_one_line_error(argv)

# --------------------------------------------------------------------------- periodic checkpoints


def test_resume_from_every_periodic_checkpoint_repeats_the_run(tmp_path, text_file, monkeypatch):
    saved = []
    original = cli.PeriodicCheckpoint.save

    def save_and_keep(self):           # keep a copy of each periodic checkpoint
        original(self)
        copy = tmp_path / f"step{self.trainer.step}.npz"
        shutil.copy(self.path, copy)
        saved.append(str(copy))
    monkeypatch.setattr(cli.PeriodicCheckpoint, "save", save_and_keep)
    args = ["--text", text_file, "--steps", "11", "--checkpoint-every", "4", "--eval-every", "3",
            "--sample-every", "5"] + TINY
    assert run(["train", "--out", str(tmp_path / "straight")] + args)[0] == 0
    assert [os.path.basename(p) for p in saved] == ["step4.npz", "step8.npz", "step11.npz", "step11.npz"]
    straight = load_checkpoint(saved[-1])
    for start in saved[:2]:
        out = tmp_path / f"from_{os.path.basename(start)}"
        assert run(["train", "--out", str(out), "--resume", start] + args)[0] == 0
        resumed = load_checkpoint(str(out / "checkpoint.npz"))
        assert resumed.step == 11
        for name, value in straight.params.items():
            np.testing.assert_array_equal(resumed.params[name], value)
        for name, value in straight.optimizer_arrays.items():
            np.testing.assert_array_equal(resumed.optimizer_arrays[name], value)
        assert resumed.extra["history"]["train_bpc"] == straight.extra["history"]["train_bpc"]
        assert resumed.rng_state == straight.rng_state


def spawn_train(text_file, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "gpurnn.apps.cli", "train", "--text", text_file,
                             "--out", str(out), "--steps", "100000", "--sample-every", "0", *TINY, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT})


def wait_for(path, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_and_resume_matches(tmp_path, text_file, sig, code):
    out = tmp_path / "run"
    proc = spawn_train(text_file, out, "--checkpoint-every", "7")
    ckpt = out / "checkpoint.npz"
    wait_for(ckpt, proc)                               # running, and past its first save
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert f"stopped by {signal.Signals(sig).name} at step" in stderr and "Traceback" not in stderr
    stopped = load_checkpoint(str(ckpt))
    assert stopped.step > 0
    total = stopped.step + 3
    common = ["--text", text_file, "--steps", str(total), "--sample-every", "0"] + TINY
    assert run(["train", "--out", str(out), "--resume", str(ckpt)] + common)[0] == 0
    assert run(["train", "--out", str(tmp_path / "straight")] + common)[0] == 0
    resumed, straight = (load_checkpoint(str(p)) for p in (ckpt, tmp_path / "straight" / "checkpoint.npz"))
    for name, value in straight.params.items():
        np.testing.assert_array_equal(resumed.params[name], value)
    assert resumed.extra["history"]["train_bpc"] == straight.extra["history"]["train_bpc"]


def test_kill_9_leaves_a_loadable_checkpoint_and_no_temps(tmp_path, text_file):
    out = tmp_path / "run"
    proc = spawn_train(text_file, out, "--checkpoint-every", "1")     # saving all the time
    wait_for(out / "checkpoint.npz", proc)
    time.sleep(0.5)
    proc.kill()
    proc.communicate(timeout=60)
    assert load_checkpoint(str(out / "checkpoint.npz")).step > 0
    (out / ".checkpoint.npz.deadbeef.tmp").write_bytes(b"partial")    # as a kill mid-save leaves
    (out / "tmpk1ll3d.npz.tmp").write_bytes(b"partial")               # gpurnn 0.1's temp name
    assert run(["train", "--text", text_file, "--out", str(out), "--steps", "2"] + TINY)[0] == 0
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]

# --------------------------------------------------------------------------- divergence


@pytest.mark.parametrize("extra", [["--cell", "rnn_relu", "--lr", "50"], ["--lr", "1e38", "--clip", "1e38"]])
def test_divergence_stops_cleanly_and_keeps_a_good_checkpoint(tmp_path, text_file, extra):
    out = tmp_path / "run"
    line = assert_one_line_error(["train", "--text", text_file, "--out", str(out), "--steps", "200",
                                  "--checkpoint-every", "1"] + TINY + extra,
                                 "diverged at step", "--lr", "--clip")
    if "last good checkpoint" in line:
        ckpt = load_checkpoint(str(out / "checkpoint.npz"))
        assert f"(step {ckpt.step})" in line
        assert all(np.all(np.isfinite(v)) for v in ckpt.params.values())

# --------------------------------------------------------------------------- no silent surprises


def test_resume_refuses_changed_settings_and_says_what_it_changes(tmp_path, text_file, trained):
    resume = ["train", "--text", text_file, "--out", str(tmp_path / "r"), "--resume", trained]
    assert_one_line_error(resume + ["--steps", "9", "--hidden", "16"], "--hidden 16", "12")
    assert_one_line_error(resume + ["--steps", "9", "--window", "4"], "--window 4")
    assert_one_line_error(resume + ["--steps", "6"], "--steps 6", "already at step 6")
    code, _, err = run(resume + ["--steps", "8", "--lr", "0.001", "--backend", "numpy"])
    assert code == 0 and "--lr 0.001 replaces the checkpoint's 0.01" in err


def test_resume_without_optimizer_state_is_refused(tmp_path, text_file, trained):
    from gpurnn.train.checkpoint import save_checkpoint
    ckpt = load_checkpoint(trained)
    ckpt.optimizer_arrays.clear()
    path = str(tmp_path / "noopt.npz")
    save_checkpoint(path, ckpt)
    assert_one_line_error(["train", "--text", text_file, "--out", str(tmp_path / "r"), "--resume", path,
                           "--steps", "9"] + TINY[-2:], "no optimizer state")


def test_progress_shows_the_latest_validation_and_output_says_what_train_measures(tmp_path, text_file):
    code, out, err = run(["train", "--text", text_file, "--out", str(tmp_path / "r"), "--steps", "12",
                          "--eval-every", "3"] + TINY)
    assert code == 0
    history = json.loads((tmp_path / "r" / "metrics.json").read_text())["val_history"]
    lines = {int(line.split()[1].split("/")[0]): line for line in err.splitlines() if line.startswith("step ")}
    for step, val in zip(history["step"], history["val_bpc"]):
        assert f"val {val:.3f}" in lines[step], lines[step]
    assert "on its first" in out and "chars (unigram" in out


def test_eta_leaves_out_the_first_steps_compile(monkeypatch):
    clock = iter([100.0, 101.0, 102.0])      # first step done at 100 s (JIT), then 1 s a step
    monkeypatch.setattr(cli.time, "perf_counter", lambda: next(clock))
    bar = cli.ProgressBar(12, stream=io.StringIO())
    assert bar.line(1, 4.0, 1.0, None).endswith("eta --")
    bar.line(2, 4.0, 1.0, None)
    assert bar.line(3, 4.0, 1.0, None).endswith("eta 9.0s")      # 9 steps left at 1 s each


def test_forecast_reports_progress(tmp_path):
    code, _, err = run(["forecast", "--out", str(tmp_path), "--n", "200", "--steps", "2", "--hidden", "4",
                        "--cells", "gru", "--backend", "numpy"])
    assert code == 0 and "fitting GRU (latent AR)" in err and "fitting AR(5) (1/3)" in err
