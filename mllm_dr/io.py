"""The one place that writes files: atomic whole-file writes and line-atomic JSON-lines appends.

Everything MLlm-DR writes goes through here, so a killed process never leaves half a file:

* :func:`atomic_open` / :func:`write_text_atomic` / :func:`write_json_atomic` /
  :func:`save_npy_atomic`: a hidden temporary file in the destination folder, flushed and
  fsynced, then ``os.replace``-d over the destination (readers see the old file or the new one).
* :func:`append_jsonl`: whole lines in one ``write``, flushed and fsynced; a torn last line left
  by a killed writer is repaired first (a complete record that only lacks its newline is kept).
* :func:`read_jsonl`: every record with its line number; only a torn *last* line (one that does
  not parse and has no newline) is dropped, any other malformed line raises naming file and line.
* :func:`exclusive_lock`: one writer per output folder (a second evaluation or distillation into
  the same folder is refused at once, naming the folder and the process that holds it).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "FolderInUse",
    "append_jsonl",
    "exclusive_lock",
    "atomic_open",
    "read_jsonl",
    "save_npy_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """A handle on a temporary file that replaces ``path`` when the ``with`` block ends normally
    (after flush and fsync); on any error the temporary file is removed and ``path`` is untouched."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, mode, encoding=encoding if "b" not in mode else None) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # mkstemp creates 0600 files; a written output is an ordinary file
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes UTF-8 text to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int = 2) -> Path:
    """Writes ``data`` as JSON (non-JSON values through ``str``) atomically, with a final newline."""
    return write_text_atomic(path, json.dumps(data, indent=indent, default=str, ensure_ascii=False) + "\n")


def save_npy_atomic(path: str | os.PathLike, array: Any) -> Path:
    """``np.save(..., allow_pickle=False)`` to ``path`` atomically (a C-contiguous copy if needed)."""
    import numpy as np

    with atomic_open(path, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
    return Path(path)


def _repair_tail(path: Path) -> None:
    """Makes ``path`` end with a newline before an append: a last line that parses as JSON only
    lacks its newline (it is kept and terminated); one that does not is torn (it is cut off)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
    data = path.read_bytes()
    start = data.rfind(b"\n") + 1
    try:
        json.loads(data[start:])
        complete = True
    except ValueError:
        complete = False
    with path.open("r+b") as handle:
        if complete:
            handle.seek(0, os.SEEK_END)
            handle.write(b"\n")
        else:
            handle.truncate(start)
        handle.flush()
        os.fsync(handle.fileno())


def append_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Appends ``records`` as JSON lines in one write (flushed, fsynced); returns how many."""
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    if not lines:
        return 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _repair_tail(path)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(lines)
        handle.flush()
        os.fsync(handle.fileno())
    return lines.count("\n")


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, Any]]:
    """``(line number, record)`` for every non-blank line of ``path`` (``[]`` when it does not exist).

    A last line without a newline that does not parse is the line a killed writer was writing:
    it is skipped. Any other line that does not parse raises ``ValueError`` naming file and line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except ValueError as error:
            if number == len(lines) and not line.endswith("\n"):
                break  # torn by a kill; redone on resume
            raise ValueError(f"{path}:{number}: not valid JSON ({error})") from None
    return records


LOCK_NAME = ".mllm_dr.lock"


class FolderInUse(RuntimeError):
    """Another process holds the folder's lock (:func:`exclusive_lock`)."""


@contextlib.contextmanager
def exclusive_lock(folder: str | os.PathLike, purpose: str) -> Iterator[Path]:
    """Holds ``folder/.mllm_dr.lock`` for the ``with`` block, so that two runs never append to one
    output folder at once; raises :class:`FolderInUse` (naming folder, purpose and the holder's pid)
    at once when another process holds it. The lock is released when the process ends, however it
    ends (an OS file lock, through the ``filelock`` package); the file itself stays and is harmless."""
    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = ""
        with contextlib.suppress(OSError):
            holder = (folder / (LOCK_NAME + ".owner")).read_text(encoding="utf-8").strip()
        raise FolderInUse(
            f"{folder} is in use by another {purpose}{f' ({holder})' if holder else ''}: wait for it to finish, "
            "or use another output folder"
        ) from None
    try:
        with contextlib.suppress(OSError):
            write_text_atomic(folder / (LOCK_NAME + ".owner"), f"pid {os.getpid()}\n")
        yield path
    finally:
        lock.release()
