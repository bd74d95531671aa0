"""Library-level promises of the Reliability section that need no CLI: argument types
named in errors, and a diverging step that is detected before it is applied."""
import numpy as np
import pytest

import gpurnn
from gpurnn.apps.charlm import LMConfig, Trainer, TrainingDiverged

TEXT = "the cat sat on the mat. a dog ran in the park. we like tea. " * 20


@pytest.mark.parametrize("bad", ["hello", b"bytes", {"x": 1}, {1, 2}])
def test_non_array_input_names_its_type(bad):
    m = gpurnn.LSTM(3, 4, backend="numpy")
    with pytest.raises(TypeError, match=f"x: expected an array of numbers, got {type(bad).__name__}"):
        m(bad)


def test_a_diverging_step_is_not_applied():
    trainer = Trainer(TEXT, LMConfig(hidden=8, window=8, batch=2, backend="numpy"))
    trainer.train_step()
    before = {k: v.copy() for k, v in trainer.lm.parameters().items()}
    state, adam_t = trainer.state, trainer.optimizer.t
    trainer.lm.head.parameters()["bias"][0] = np.nan           # as an overflowed update leaves it
    with pytest.raises(TrainingDiverged, match="diverged at step 2: the loss is nan; lower the learning rate"):
        trainer.train_step()
    assert trainer.step == 1 and trainer.optimizer.t == adam_t and trainer.state is state
    for name, value in trainer.lm.parameters().items():
        if name != "head.bias":
            np.testing.assert_array_equal(value, before[name])
    with pytest.raises(TrainingDiverged, match="weight head.bias"):
        trainer.check_finite()


def test_a_model_too_big_for_memory_reports_its_own_dtype():
    """The init draws in float64 chunks and stores float32 directly: a model too big for
    memory fails on the float32 array it needs, not on a float64 copy twice its size."""
    with pytest.raises(MemoryError) as info:
        gpurnn.LSTM(8, 3_000_000, dtype="float32", backend="numpy")   # W_hh: 144 TB
    assert "float32" in str(info.value) and "float64" not in str(info.value)
