"""benchmarks/: the check every benchmarked version passes before it is timed (timing.py), the
FLOP count and fp32 peak (timing.py, machine.py), and bench_cpu.py's interleaved mode."""
import csv
import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_cpu  # noqa: E402
import machine  # noqa: E402
import timing  # noqa: E402

import gpurnn  # noqa: E402


def test_a_wrong_result_is_refused_a_time(rng):
    want = {"out": rng.standard_normal((4, 3)), "dx": rng.standard_normal(5)}
    assert timing.validate("v", {k: v + 1e-9 for k, v in want.items()}, want) < 1e-8
    wrong = dict(want, dx=want["dx"] * 1.01)
    with pytest.raises(timing.WrongResult, match="v: dx differs .* not timed"):
        timing.validate("v", wrong, want)
    with pytest.raises(timing.WrongResult, match="non-finite"):
        timing.validate("v", dict(want, out=np.full((4, 3), np.nan)), want)
    with pytest.raises(timing.WrongResult, match="no 'dx'"):
        timing.validate("v", {"out": want["out"]}, want)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_reference_accepts_a_right_layer_and_refuses_a_broken_one(cell, rng):
    m = gpurnn.layers.make_layer(cell, 5, 6, num_layers=2, backend="numpy", dtype="float32", seed=1)
    weights = m.state_dict()
    x = rng.standard_normal((7, 3, 5)).astype(np.float32)
    dout = rng.standard_normal((7, 3, 6)).astype(np.float32)
    reference = timing.layer_reference(cell, weights, x, dout)
    timing.validate(cell, timing.gpurnn_results(m, x, dout), reference)
    weights["weight_hh_l1"][0, 0] += 0.5            # a kernel bug stand-in
    m.load_state_dict(weights)
    with pytest.raises(timing.WrongResult):
        timing.validate(cell, timing.gpurnn_results(m, x, dout), reference)


def test_the_flop_count_is_six_products_of_one_layer():
    T, B, I, H, G = 3, 2, 5, 7, 4
    # forward: X W_ih^T, h W_hh^T; backward: dh, dW_hh, dW_ih, dX: each 2 x (T B G H x I or H)
    assert timing.layer_flops(T, B, I, H, G) == 2 * T * B * G * H * (3 * I + 3 * H)
    assert bench_cpu.config_flops(("gru", T, B, I, H)) == timing.layer_flops(T, B, I, H, 3)


def test_the_fp32_peak_is_cores_fma_units_lanes_2_clock():
    assert machine.fp32_peak_gflops(cores=2, fma_units=2, lanes=16, mhz=2100) == 268.8
    assert machine.simd_lanes({"fma", "avx2", "avx512f"}) == 16
    assert machine.simd_lanes({"fma", "avx2"}) == 8
    assert machine.simd_lanes({"sse2"}) == 4
    fig = machine.cpu_figures()               # this machine's, whatever it is
    assert fig["fma_units"] == machine.FMA_UNITS and fig["lanes"] in (4, 8, 16)
    assert fig["peak_gflops"] == machine.fp32_peak_gflops(fig["cores"], fig["fma_units"],
                                                          fig["lanes"], fig["mhz"])
    assert "assumed" in machine.describe_peak(fig)


def test_a_gemm_faster_than_the_nominal_peak_becomes_the_peak():
    fig = dict(machine.cpu_figures(), peak_gflops=332.0)
    assert machine.anchored_peak(fig, 300.0)["peak_gflops"] == 332.0      # below: nominal
    assert "nominal" not in machine.describe_peak(machine.anchored_peak(fig, 300.0))
    raised = machine.anchored_peak(fig, 417.0)
    assert raised["peak_gflops"] == 417.0 and raised["nominal_peak_gflops"] == 332.0
    assert "417 GFLOP/s, the measured GEMM ceiling" in machine.describe_peak(raised)
    assert "nominal 332" in machine.describe_peak(raised)


def test_busy_rows_are_compared_with_the_quiet_run_of_the_same_config():
    row = dict(threads=1, config="c", backend="native")
    rows = [dict(row, load="quiet", median_ms=2.0, ratio_to_torch=0.5),
            dict(row, load="busy", median_ms=3.0, ratio_to_torch=0.6),
            dict(row, load="busy", config="other", median_ms=1.0, ratio_to_torch=1.0)]
    bench_cpu.add_busy_vs_quiet(rows)
    assert rows[0]["ratio_busy_vs_quiet"] == "" and rows[2]["ratio_busy_vs_quiet"] == ""
    assert rows[1]["time_busy_vs_quiet"] == pytest.approx(1.5)
    assert rows[1]["ratio_busy_vs_quiet"] == pytest.approx(1.2)


def test_the_interleaved_benchmark_writes_every_version_of_every_config(tmp_path):
    pytest.importorskip("torch")
    script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cpu.py"
    subprocess.run([sys.executable, str(script), "--quick", "--repeats", "2", "--threads", "1",
                    "--cells", "lstm,gru", "--no-profile", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=600)
    with open(tmp_path / "cpu.csv") as f:
        rows = list(csv.DictReader(f))
    configs = [bench_cpu.config_name(c) for c in bench_cpu.QUICK_CONFIGS if c[0] in ("lstm", "gru")]
    assert [(r["config"], r["backend"]) for r in rows] == [
        (c, v) for c in configs for v in bench_cpu.INTERLEAVED_VERSIONS]
    assert set(bench_cpu.FIELDS) <= set(rows[0])
    for r in rows:
        assert (r["mode"], r["load"], r["threads"]) == ("interleaved", "quiet", "1")
        for k in ("median_ms", "ratio_to_torch", "gflop", "gflops", "peak_fraction"):
            assert np.isfinite(float(r[k])) and float(r[k]) > 0, (k, r)
        if r["backend"] == "torch":
            assert float(r["ratio_to_torch"]) == 1.0 and r["target"] == ""
        else:
            assert float(r["target"]) == bench_cpu.TARGETS[r["cell"], r["backend"]]
    md = (tmp_path / "cpu.md").read_text()
    assert "Command: `" in md and "OpenBLAS kernels" in md and "FMA units (assumed)" in md
    assert (tmp_path / "cpu.png").exists() or importlib.util.find_spec("matplotlib") is None
