"""Checkpoints: round trip, exact resume, clear errors for corrupt or mismatched files."""
import json
import zipfile

import numpy as np
import pytest

from gpurnn.apps.charlm import LMConfig, Trainer
from gpurnn.train.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint

TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness, it was the epoch of belief. ") * 6


def tiny_config(**kw):
    base = dict(cell="lstm", hidden=12, window=8, batch=4, lr=0.01, backend="numpy", seed=5)
    base.update(kw)
    return LMConfig(**base)


def test_round_trip_keeps_every_field(tmp_path, rng):
    ckpt = Checkpoint(step=7, params={"rnn.w": rng.standard_normal((3, 2)).astype(np.float32)},
                      config={"hidden": 3, "cell": "gru"}, vocab=list("ab\nλ"),
                      rng_state=np.random.default_rng(1).bit_generator.state,
                      optimizer_arrays={"m/rnn.w": rng.standard_normal((3, 2))},
                      optimizer_meta={"name": "adam", "t": 7, "lr": 0.1},
                      arrays={"state0": np.ones((1, 2, 3))}, extra={"note": "x"})
    path = tmp_path / "c.npz"
    save_checkpoint(str(path), ckpt)
    back = load_checkpoint(str(path))
    assert back.step == 7 and back.config == ckpt.config and back.vocab == ckpt.vocab
    assert back.rng_state == ckpt.rng_state and back.optimizer_meta == ckpt.optimizer_meta
    assert back.extra == {"note": "x"}
    for got, want in ((back.params, ckpt.params), (back.optimizer_arrays, ckpt.optimizer_arrays),
                      (back.arrays, ckpt.arrays)):
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
            assert got[k].dtype == want[k].dtype
    with np.load(path, allow_pickle=False) as archive:      # plain arrays, no pickle inside
        assert "meta" in archive.files and archive["meta"].dtype.kind == "U"


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_resume_repeats_the_uninterrupted_run_exactly(tmp_path, cell):
    total, cut = 14, 6
    straight = Trainer(TEXT, tiny_config(cell=cell))
    for _ in range(total):
        straight.train_step()
    sample_straight = straight.sample(30)

    first = Trainer(TEXT, tiny_config(cell=cell))
    for _ in range(cut):
        first.train_step()
    path = str(tmp_path / "ckpt.npz")
    first.save(path)
    resumed = Trainer.resume(path, TEXT)
    assert resumed.step == cut
    for _ in range(total - cut):
        resumed.train_step()

    assert resumed.history["train_bpc"] == straight.history["train_bpc"]      # bit for bit
    assert resumed.history["grad_norm"] == straight.history["grad_norm"]
    for name, p in straight.lm.parameters().items():
        np.testing.assert_array_equal(resumed.lm.parameters()[name], p)
    assert resumed.sample(30) == sample_straight                # the RNG state came back too


def test_resume_crosses_an_epoch_boundary(tmp_path):
    trainer = Trainer(TEXT, tiny_config())
    steps = trainer.windows_per_epoch + 2
    for _ in range(trainer.windows_per_epoch - 1):
        trainer.train_step()
    path = str(tmp_path / "c.npz")
    trainer.save(path)
    resumed = Trainer.resume(path, TEXT)
    straight = Trainer(TEXT, tiny_config())
    for t in (resumed, straight):
        while t.step < steps:
            t.train_step()
    assert resumed.history["train_bpc"] == straight.history["train_bpc"]


def test_garbage_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(CheckpointError, match="not a readable .npz"):
        load_checkpoint(str(path))


def test_truncated_file_is_a_clear_error(tmp_path):
    trainer = Trainer(TEXT, tiny_config())
    path = tmp_path / "c.npz"
    trainer.save(str(path))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=str(path.name)):
        load_checkpoint(str(path))


def test_missing_file_and_foreign_archives(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(str(tmp_path / "nope.npz"))
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.ones(3))
    with pytest.raises(CheckpointError, match="no 'meta'"):
        load_checkpoint(str(plain))
    other = tmp_path / "other.npz"
    np.savez(other, meta=np.array(json.dumps({"format": "something-else"})))
    with pytest.raises(CheckpointError, match="not a gpurnn checkpoint"):
        load_checkpoint(str(other))
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, meta=np.array([{"format": "gpurnn-checkpoint"}], dtype=object))
    with pytest.raises(CheckpointError):
        load_checkpoint(str(pickled))


def test_future_version_is_refused(tmp_path):
    path = tmp_path / "v.npz"
    np.savez(path, meta=np.array(json.dumps({"format": "gpurnn-checkpoint", "version": 99, "step": 0})))
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(str(path))


def test_mismatched_checkpoint_names_the_difference(tmp_path):
    trainer = Trainer(TEXT, tiny_config(hidden=12))
    path = str(tmp_path / "c.npz")
    trainer.save(path)
    with pytest.raises(CheckpointError, match="hidden: checkpoint has 12, expected 16"):
        Trainer(TEXT, tiny_config(hidden=16)).restore(load_checkpoint(path), path)
    with pytest.raises(CheckpointError, match="different text"):
        Trainer.resume(path, TEXT + "#~")            # new characters
    with pytest.raises(CheckpointError, match="different text"):
        Trainer.resume(path, TEXT[::-1])             # same characters, other text


def test_weights_that_do_not_fit_are_a_clear_error(tmp_path):
    trainer = Trainer(TEXT, tiny_config())
    ckpt = trainer.to_checkpoint()
    ckpt.params["rnn.weight_hh_l0"] = ckpt.params["rnn.weight_hh_l0"][:, :3]
    path = str(tmp_path / "c.npz")
    save_checkpoint(path, ckpt)
    with pytest.raises(CheckpointError, match="weight_hh_l0"):
        Trainer.resume(path, TEXT)


def test_save_is_atomic_and_keeps_the_name(tmp_path):
    path = tmp_path / "sub" / "model.ckpt"        # no .npz suffix: kept as given
    save_checkpoint(str(path), Checkpoint(step=1, params={}, config={}))
    assert path.exists() and zipfile.is_zipfile(path)
    assert [p.name for p in path.parent.iterdir()] == ["model.ckpt"]
