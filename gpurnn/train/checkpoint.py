"""Checkpoints as plain .npz files: no pickle, readable with numpy alone.

Layout of the archive (every entry a plain array):

    meta                 0-d unicode array holding JSON: format, version, step, config,
                         vocabulary, RNG state, optimizer name/step/hyperparameters, extra
    param/<name>         model weights, e.g. param/rnn.weight_ih_l0, param/head.weight
    optim/<buffer>/<name> optimizer buffers, e.g. optim/m/rnn.weight_hh_l0
    array/<name>         anything else the trainer must restore exactly (carried state)

Writing is atomic: a temp file in the same directory (``.<name>.<random>.tmp``), fsync,
rename, fsync of the directory; ``remove_stale_temps`` clears temps a killed writer left.

Reading is bounded, because a checkpoint may come from anywhere: the zip directory gives
each entry's uncompressed size and the first bytes of an entry give its .npy header
(shape, dtype), so every size is checked (against the caller's expectation, the header,
and ``max_bytes``) before anything is allocated, and an entry the caller does not know is
never decompressed. Anything wrong raises ``CheckpointError`` (a ValueError) naming the
file and the field.
"""
import json
import os
import secrets
import struct
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..arrays import to_numpy
from ..validation import physical_memory

FORMAT = "gpurnn-checkpoint"
VERSION = 1
PREFIXES = ("param", "optim", "array")
MAX_META_BYTES = 64 << 20       # the JSON (history included: ~60 bytes per step)
MAX_ENTRIES = 10_000
_CHUNK = 1 << 20                # payloads are read in pieces straight into their arrays
# What a corrupt archive may raise from zipfile / zlib / the .npy header parser (which
# tokenizes the header: hypothesis found the TokenError).
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError, ValueError,
                NotImplementedError, struct.error, UnicodeError, KeyError, OverflowError,
                SyntaxError, TypeError, tokenize.TokenError)


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


# --------------------------------------------------------------------------- writing


TEMP_SUFFIX = ".tmp"


def _temp_prefix(path):
    return f".{os.path.basename(path)}."


def remove_stale_temps(path):
    """Delete temp files a killed ``save_checkpoint(path, ...)`` left next to ``path``
    (and the ``tmp*.npz.tmp`` ones of gpurnn before 0.2). Returns the names removed."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    stale = [n for n in names if n.endswith(TEMP_SUFFIX)
             and (n.startswith(prefix) or (n.startswith("tmp") and n.endswith(".npz.tmp")))]
    for name in stale:
        try:
            os.remove(os.path.join(directory, name))
        except OSError:
            pass
    return stale


def save_checkpoint(path, ckpt):
    """Write ``ckpt`` (a Checkpoint) to ``path`` atomically: a reader (or a crash) sees the
    old file or the new one, never a mix. Created with the umask's permissions (0644 for the
    usual 022), like every other output file."""
    meta = dict(format=FORMAT, version=VERSION, step=int(ckpt.step), config=ckpt.config,
                vocab=ckpt.vocab, rng_state=ckpt.rng_state, optimizer=ckpt.optimizer_meta,
                extra=ckpt.extra)
    entries = {"meta": np.array(json.dumps(meta))}
    for prefix, arrays in zip(PREFIXES, (ckpt.params, ckpt.optimizer_arrays, ckpt.arrays)):
        for name, a in arrays.items():
            entries[f"{prefix}/{name}"] = np.ascontiguousarray(to_numpy(a))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f"{_temp_prefix(path)}{secrets.token_hex(4)}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)   # mkstemp would give 0600
    try:
        with os.fdopen(fd, "wb") as f:     # a file object: np.savez would append ".npz" to a name
            np.savez(f, **entries)
            f.flush()
            os.fsync(f.fileno())           # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory):
    """Make the rename itself durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

# --------------------------------------------------------------------------- reading


def default_max_bytes():
    """Most bytes of arrays one load may allocate: half the machine's memory."""
    memory = physical_memory()
    return memory // 2 if memory else 8 << 30


class _Archive:
    """An open .npz whose entries are inspected before any payload is read."""

    def __init__(self, path, zf):
        self.path, self.zf = path, zf
        infos = zf.infolist()
        if len(infos) > MAX_ENTRIES:
            raise CheckpointError(f"checkpoint {path}: {len(infos)} entries, more than any gpurnn "
                                  f"checkpoint has ({MAX_ENTRIES})")
        self.infos = {}
        for info in infos:
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if key in self.infos:
                raise CheckpointError(f"checkpoint {path}: entry {key!r} appears twice")
            self.infos[key] = info

    def header(self, key):
        """(shape, dtype, fortran_order) from the entry's .npy header, checked against the
        size the zip directory declares; decompresses only the header's bytes."""
        info = self.infos[key]
        with self.zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise CheckpointError(f"checkpoint {self.path}: entry {key!r}: .npy format "
                                      f"version {version} is not supported")
            offset = f.tell()
        if dtype.hasobject:
            raise CheckpointError(f"checkpoint {self.path}: entry {key!r} holds Python objects "
                                  f"(dtype {dtype}); gpurnn checkpoints hold plain arrays only and "
                                  f"are never unpickled")
        if any(d < 0 for d in shape):
            raise CheckpointError(f"checkpoint {self.path}: entry {key!r}: bad shape {shape}")
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if info.file_size != offset + nbytes:
            raise CheckpointError(f"checkpoint {self.path}: entry {key!r}: the archive declares "
                                  f"{info.file_size} bytes, its header (shape {shape}, {dtype}) "
                                  f"needs {offset + nbytes}")
        return shape, dtype, fortran

    def read(self, key, shape, dtype, fortran):
        """The entry's array, read in chunks into one allocation of the checked size."""
        arr = np.empty(shape[::-1] if fortran else shape, dtype)
        view = memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else memoryview(b"")
        with self.zf.open(self.infos[key]) as f:
            f.seek(self.infos[key].file_size - arr.nbytes)      # past the header just checked
            pos = 0
            while pos < arr.nbytes:
                chunk = f.read(min(_CHUNK, arr.nbytes - pos))
                if not chunk:
                    raise CheckpointError(f"checkpoint {self.path}: entry {key!r} is truncated")
                view[pos:pos + len(chunk)] = chunk
                pos += len(chunk)
            if f.read(1):             # also makes zipfile check the CRC at the end of the entry
                raise CheckpointError(f"checkpoint {self.path}: entry {key!r} is longer than "
                                      f"its header says")
        return arr.T if fortran else arr


def load_checkpoint(path, expect=None, max_bytes=None):
    """Read a checkpoint written by ``save_checkpoint``; CheckpointError if it is not one.

    ``expect(ckpt, keys)`` (optional) sees the Checkpoint with its metadata only (no arrays
    yet) and the archive's entry names (``"param/rnn.weight_hh_l0"``, ...), and returns
    {entry name: (shape, dtype) to read it, or None to skip it unread}; it raises
    CheckpointError where the metadata is wrong. An entry it does not name is refused
    unread; one it names that is missing is an error. Without ``expect`` every entry under
    the known prefixes is read. ``max_bytes`` (default: half the memory) bounds the total."""
    max_bytes = default_max_bytes() if max_bytes is None else max_bytes
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path}: is a directory, expected a .npz file written "
                              f"by gpurnn train")
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path}: no such file")
    field_ = "the zip directory"
    try:
        with zipfile.ZipFile(path) as zf:
            archive = _Archive(path, zf)
            field_ = "meta"
            ckpt = _read_meta(archive)
            keys = [k for k in archive.infos if k != "meta"]
            plan = expect(ckpt, keys) if expect is not None else {k: None for k in keys}
            to_read = _check_entries(archive, keys, plan, expect is None, max_bytes)
            groups = dict(zip(PREFIXES, (ckpt.params, ckpt.optimizer_arrays, ckpt.arrays)))
            for key, header in to_read.items():
                field_ = key
                prefix, _, name = key.partition("/")
                groups[prefix][name] = archive.read(key, *header)
    except CheckpointError:
        raise
    except MemoryError:
        raise CheckpointError(f"checkpoint {path}: not enough memory to read {field_}") from None
    except _READ_ERRORS as exc:
        what = "not a readable .npz archive" if field_ == "the zip directory" else f"{field_} is unreadable"
        raise CheckpointError(f"checkpoint {path}: {what} ({type(exc).__name__}: {exc}); "
                              f"gpurnn checkpoints are .npz files written by gpurnn train") from None
    return ckpt


def _read_meta(archive):
    path = archive.path
    if "meta" not in archive.infos:
        raise CheckpointError(f"checkpoint {path}: no 'meta' entry; not a gpurnn checkpoint")
    shape, dtype, fortran = archive.header("meta")
    if shape != () or dtype.kind != "U" or archive.infos["meta"].file_size > MAX_META_BYTES:
        raise CheckpointError(f"checkpoint {path}: 'meta' must be one JSON string of at most "
                              f"{MAX_META_BYTES >> 20} MB, got shape {shape}, dtype {dtype}, "
                              f"{archive.infos['meta'].file_size} bytes")
    try:
        meta = json.loads(str(archive.read("meta", shape, dtype, fortran)[()]))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"checkpoint {path}: its 'meta' entry is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a gpurnn checkpoint (format "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {meta.get('version')!r}, this "
                              f"gpurnn reads version {VERSION}")
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"checkpoint {path}: meta.step: expected an integer >= 0, got {step!r}")
    for key, kinds, what in (("config", (dict, type(None)), "an object"),
                             ("vocab", (list, type(None)), "a list of characters"),
                             ("rng_state", (dict, type(None)), "an object"),
                             ("optimizer", (dict, type(None)), "an object"),
                             ("extra", (dict, type(None)), "an object")):
        if not isinstance(meta.get(key), kinds):
            raise CheckpointError(f"checkpoint {path}: meta.{key}: expected {what}, got "
                                  f"{type(meta.get(key)).__name__}")
    return Checkpoint(step=step, params={}, config=meta.get("config") or {}, vocab=meta.get("vocab"),
                      rng_state=meta.get("rng_state"), optimizer_meta=meta.get("optimizer"),
                      extra=meta.get("extra") or {})


def _check_entries(archive, keys, plan, generic, max_bytes):
    """{entry: header} of the entries to read, every size checked; nothing read yet."""
    path = archive.path
    for key in keys:
        prefix, _, name = key.partition("/")
        if key not in plan or prefix not in PREFIXES or not name:
            raise CheckpointError(f"checkpoint {path}: unexpected entry {key!r} (not read); "
                                  f"this checkpoint was not written by gpurnn for this model")
    missing = sorted(k for k, spec in plan.items() if spec is not None and k not in archive.infos)
    if missing:
        raise CheckpointError(f"checkpoint {path}: missing entries {missing}")
    to_read, total = {}, 0
    for key, spec in plan.items():
        if spec is None and not generic:
            continue
        shape, dtype, fortran = header = archive.header(key)
        if spec is not None:
            want_shape, want_dtype = tuple(spec[0]), np.dtype(spec[1])
            if shape != want_shape or dtype != want_dtype:
                raise CheckpointError(f"checkpoint {path}: {key}: expected shape {want_shape} "
                                      f"{want_dtype.name}, got {shape} {dtype}")
        elif dtype.kind not in "biuf":
            raise CheckpointError(f"checkpoint {path}: {key}: expected numbers, got dtype {dtype}")
        total += int(np.prod(shape, dtype=object)) * dtype.itemsize
        if total > max_bytes:
            raise CheckpointError(f"checkpoint {path}: its arrays need more than {max_bytes:,} bytes "
                                  f"(at {key}); refusing to load it")
        to_read[key] = header
    return to_read


def check_config_matches(ckpt, config, keys, path="checkpoint"):
    """CheckpointError naming every key in ``keys`` where ``ckpt.config`` differs."""
    diffs = [f"{k}: checkpoint has {ckpt.config.get(k)!r}, expected {config.get(k)!r}"
             for k in keys if ckpt.config.get(k) != config.get(k)]
    if diffs:
        raise CheckpointError(f"{path} does not match this model ({'; '.join(diffs)})")
