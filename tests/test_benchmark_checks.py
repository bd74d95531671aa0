"""benchmarks/timing.py: the check every benchmarked version passes before it is timed."""
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
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
