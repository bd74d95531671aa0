"""Text data for the character language model: loading, the default corpus, the
vocabulary, and the batch-of-streams layout that truncated BPTT walks through.
"""
import os
import sys
import sysconfig

import numpy as np


class TextError(ValueError):
    """A text that cannot be trained on (missing, empty, not UTF-8, too short)."""


def load_text(path):
    """The UTF-8 contents of ``path``; TextError naming the file and the problem."""
    if not os.path.exists(path):
        raise TextError(f"text {path}: no such file")
    if os.path.isdir(path):
        raise TextError(f"text {path}: is a directory, expected a UTF-8 text file")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextError(f"text {path}: not UTF-8 (byte {exc.start}: {exc.reason}); "
                        f"convert it, e.g. iconv -t UTF-8") from None
    if not text:
        raise TextError(f"text {path}: is empty")
    return text


# Pure-Python standard-library modules present from Python 3.8 on, in a fixed order so
# the default corpus is the same text on every run of a given Python.
DEFAULT_CORPUS_MODULES = (
    "argparse.py", "textwrap.py", "difflib.py", "calendar.py", "fractions.py", "shlex.py",
    "pprint.py", "dataclasses.py", "functools.py", "contextlib.py", "tempfile.py", "csv.py",
    "random.py", "statistics.py", "heapq.py", "bisect.py", "string.py", "glob.py", "fnmatch.py",
    "ftplib.py", "smtplib.py", "imaplib.py", "configparser.py", "zipfile.py", "tarfile.py",
)
DEFAULT_CORPUS_CHARS = 1_000_000


def stdlib_dir():
    path = sysconfig.get_paths().get("stdlib")
    if path and os.path.isdir(path):
        return path
    return os.path.dirname(os.__file__)


def default_corpus(max_chars=DEFAULT_CORPUS_CHARS):
    """A real English-and-Python text on every machine that has Python: the source of the
    standard library's modules listed in DEFAULT_CORPUS_MODULES (then the others in name
    order if those are short), about ``max_chars`` characters. Returns (text, description)."""
    root = stdlib_dir()
    names = [n for n in DEFAULT_CORPUS_MODULES if os.path.isfile(os.path.join(root, n))]
    others = sorted(n for n in os.listdir(root) if n.endswith(".py") and n not in names) \
        if os.path.isdir(root) else []
    parts, total = [], 0
    for name in names + others:
        if total >= max_chars:
            break
        try:
            with open(os.path.join(root, name), encoding="utf-8") as f:
                part = f.read()
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(part)
        total += len(part)
    if not parts:   # a Python shipped without sources (.pyc only): use the docstrings
        parts = [m.__doc__ for m in list(sys.modules.values()) if getattr(m, "__doc__", None)
                 and isinstance(m.__doc__, str)]
        parts.sort()
        root = "module docstrings"
    text = "".join(parts)[:max_chars]
    return text, f"Python {sys.version.split()[0]} standard library source ({root})"


class Vocabulary:
    """Characters <-> integer ids, ids in sorted character order."""

    def __init__(self, chars):
        self.chars = list(chars)
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("vocabulary: characters must be unique")
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text):
        return cls(sorted(set(text)))

    def __len__(self):
        return len(self.chars)

    def encode(self, text, what="text"):
        unknown = sorted({c for c in text if c not in self.index})
        if unknown:
            raise TextError(f"{what}: characters not in the model's vocabulary: "
                            f"{''.join(unknown)[:40]!r}")
        return np.fromiter((self.index[c] for c in text), dtype=np.int64, count=len(text))

    def decode(self, ids):
        return "".join(self.chars[int(i)] for i in ids)


def split_train_val(ids, val_fraction):
    """The last ``val_fraction`` of the text is held out (a contiguous tail, so no
    validation window overlaps training text)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a number in (0, 1), got {val_fraction!r}")
    n_val = max(2, int(len(ids) * val_fraction))
    return ids[:-n_val], ids[-n_val:]


def as_streams(ids, batch):
    """Cut ``ids`` into ``batch`` equal contiguous streams: (batch, L). Window w of every
    stream continues window w-1, so the hidden state can be carried between them."""
    length = len(ids) // batch
    return np.ascontiguousarray(ids[:batch * length].reshape(batch, length))


def one_hot(ids, size, dtype):
    """ids (...) -> (..., size) one-hot floats: the RNN's input X_t."""
    out = np.zeros(ids.shape + (size,), dtype)
    np.put_along_axis(out, ids[..., None], 1, axis=-1)
    return out
