"""Checkpoints as plain .npz files: no pickle, readable with numpy alone.

Layout of the archive (every entry a plain array):

    meta                 0-d unicode array holding JSON: format, version, step, config,
                         vocabulary, RNG state, optimizer name/step/hyperparameters, extra
    param/<name>         model weights, e.g. param/rnn.weight_ih_l0, param/head.weight
    optim/<buffer>/<name> optimizer buffers, e.g. optim/m/rnn.weight_hh_l0
    array/<name>         anything else the trainer must restore exactly (carried state)

Loading uses ``allow_pickle=False``; anything that is not such an archive raises
``CheckpointError`` (a ValueError) naming the file and the problem.
"""
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field

import numpy as np

from .arrays import to_numpy

FORMAT = "gpurnn-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit what it is loaded into."""


@dataclass
class Checkpoint:
    step: int
    params: dict
    config: dict
    vocab: list = None
    rng_state: dict = None
    optimizer_arrays: dict = field(default_factory=dict)
    optimizer_meta: dict = None
    arrays: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def save_checkpoint(path, ckpt):
    """Write ``ckpt`` (a Checkpoint) to ``path`` atomically (temp file, then rename)."""
    meta = dict(format=FORMAT, version=VERSION, step=int(ckpt.step), config=ckpt.config,
                vocab=ckpt.vocab, rng_state=ckpt.rng_state, optimizer=ckpt.optimizer_meta,
                extra=ckpt.extra)
    entries = {"meta": np.array(json.dumps(meta))}
    for prefix, arrays in (("param", ckpt.params), ("optim", ckpt.optimizer_arrays),
                           ("array", ckpt.arrays)):
        for name, a in arrays.items():
            entries[f"{prefix}/{name}"] = to_numpy(a)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:     # a file object: np.savez would append ".npz" to a name
            np.savez(f, **entries)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path):
    """Read a checkpoint written by ``save_checkpoint``; CheckpointError if it is not one."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            entries = {k: archive[k] for k in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path}: not a readable .npz archive ({exc})") from None
    if not isinstance(entries, dict) or "meta" not in entries:
        raise CheckpointError(f"checkpoint {path}: no 'meta' entry; not a gpurnn checkpoint")
    try:
        meta = json.loads(str(entries.pop("meta")))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {path}: its 'meta' entry is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a gpurnn checkpoint (format "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {meta.get('version')!r}, this "
                              f"gpurnn reads version {VERSION}")
    groups = {"param": {}, "optim": {}, "array": {}}
    for key, value in entries.items():
        prefix, _, name = key.partition("/")
        if prefix not in groups or not name:
            raise CheckpointError(f"checkpoint {path}: unexpected entry {key!r}")
        groups[prefix][name] = value
    return Checkpoint(step=int(meta["step"]), params=groups["param"], config=meta.get("config") or {},
                      vocab=meta.get("vocab"), rng_state=meta.get("rng_state"),
                      optimizer_arrays=groups["optim"], optimizer_meta=meta.get("optimizer"),
                      arrays=groups["array"], extra=meta.get("extra") or {})


def check_config_matches(ckpt, config, keys, path="checkpoint"):
    """CheckpointError naming every key in ``keys`` where ``ckpt.config`` differs."""
    diffs = [f"{k}: checkpoint has {ckpt.config.get(k)!r}, expected {config.get(k)!r}"
             for k in keys if ckpt.config.get(k) != config.get(k)]
    if diffs:
        raise CheckpointError(f"{path} does not match this model ({'; '.join(diffs)})")
