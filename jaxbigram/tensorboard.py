"""TensorBoard event files of a run's evals, written without TensorFlow, tensorboardX or protobuf.

An event file is a sequence of TFRecords (length, masked CRC-32C of the length, data, masked CRC-32C of the data),
each data an ``Event`` protocol buffer. The few messages used here (a file version, scalar summaries, a session
start) are encoded by hand below, from the published ``.proto`` definitions: nothing to install, nothing to import
at start-up. ``tests/test_tensorboard.py`` reads the files back with TensorBoard's own reader.

``EventLog`` (the edge) appends to ``<folder>/events.out.tfevents.<seconds>.<host>.<pid>.<ns>``; a folder that cannot be
written disables it with one warning: never a reason to stop training.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

from .errors import message

EVENTS_DIR = "tensorboard"  # under a run's workdir
FILE_PREFIX = "events.out.tfevents."


# ----------------------------------------------------------------------------- encoding (pure)

def _crc32c_table() -> tuple:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return tuple(table)


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord uses."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One TFRecord."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 fields: two's complement
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, messages)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int = 0, *, file_version: str | None = None, scalars: dict | None = None,
          session_start: bool = False) -> bytes:
    """An ``Event``: wall_time (1, double), step (2, int64), then one of file_version (3), summary (5: ``Summary``
    of ``Value``s with tag (1) and simple_value (2, float)) or session_log (7: status (1) START = 1)."""
    out = struct.pack("<Bd", 1 << 3 | 1, wall_time) + _varint(2 << 3) + _varint(step)
    if file_version is not None:
        out += _field(3, file_version.encode())
    if scalars:
        values = b"".join(_field(1, _field(1, tag.encode()) + struct.pack("<Bf", 2 << 3 | 5, value))
                          for tag, value in scalars.items())
        out += _field(5, values)
    if session_start:
        out += _field(7, _varint(1 << 3) + _varint(1))
    return out


def scalars_of(row: dict) -> dict:
    """The TensorBoard scalars of a metrics row (``progress.MetricsLog``): the loss estimates, the learning rate and
    the training speed, where present and finite."""
    names = {"train_loss": "loss/train_estimate", "val_loss": "loss/val_estimate", "lr": "learning_rate",
             "steps_per_s": "steps_per_s"}
    return {tag: float(row[key]) for key, tag in names.items()
            if isinstance(row.get(key), (int, float)) and not isinstance(row.get(key), bool)
            and abs(float(row[key])) != float("inf") and row[key] == row[key]}


# ----------------------------------------------------------------------------- the writer (side effects)

class EventLog:
    """One event file in ``folder``, opened for each append (a kill loses at most the append in progress).

    ``clear()`` deletes the event files here and below (a ``--fresh`` run replacing the old one; a resume, which
    rewrites them as the repaired metrics, ``progress.MetricsLog``)."""

    def __init__(self, folder: str | Path, log=None, fallback: str = "metrics.jsonl still logs the evals"):
        self.folder = Path(folder)
        self.log = log or (lambda text: None)
        self.fallback = fallback  # where the evals stay readable, as the warning of an unusable folder says
        self.path: Path | None = None
        self.disabled = False

    def _write(self, *events: bytes) -> None:
        if self.disabled or not events:
            return
        try:
            if self.path is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                now = time.time_ns()  # TensorBoard reads a folder's files in name order: seconds, host, pid, then ns
                self.path = self.folder / (f"{FILE_PREFIX}{now // 10**9}.{run_name(socket.gethostname())}."
                                           f"{os.getpid()}.{now % 10**9:09d}")
                events = (event(time.time(), file_version="brain.Event:2"),) + events
            with self.path.open("ab") as f:
                f.write(b"".join(record(e) for e in events))
        except OSError as e:
            self.disabled = True
            self.log(message("warn_events_unwritable", path=self.folder, reason=e.strerror or e, fallback=self.fallback))

    def clear(self) -> None:
        """Remove the event files of this folder and of the folders below it (a sweep's member runs, or a sweep's
        left by a run this one replaces); only files named like TensorBoard's, never the folders themselves."""
        if self.disabled or not self.folder.is_dir():
            return
        try:
            for path in sorted(self.folder.rglob(FILE_PREFIX + "*")):
                if path.is_file() and not path.is_symlink() and path != self.path:
                    path.unlink()
        except OSError as e:
            self.disabled = True
            self.log(message("warn_events_unwritable", path=self.folder, reason=e.strerror or e, fallback=self.fallback))

    def rows(self, rows) -> None:
        """Write metrics rows (``step``, losses, …; ``time`` as the wall time when present) as scalars."""
        scalars = [(r, scalars_of(r)) for r in rows]
        self._write(*(event(float(r.get("time") or time.time()), int(r["step"]), scalars=values)
                      for r, values in scalars if values))


def run_name(text: str) -> str:
    """``text`` as a folder name TensorBoard lists as a run (letters, digits and ``._=+-``; others become ``_``)."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "._=+-") else "_" for c in text)[:200]
