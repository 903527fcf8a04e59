"""Reading label and split tables defensively, and the row schema every loader produces."""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from processing_mllm_dr import PhqItem

from .report import Broken, LoadReport, Notes, finish, natural_key

SPLITS = ("train", "dev", "test")

ROW_FEATURES = datasets.Features(
    {
        "participant_id": datasets.Value("string"),
        "item_index": datasets.Value("int64"),
        "item_name": datasets.Value("string"),
        "transcript": datasets.Value("string"),
        "label": datasets.Value("int64"),
        "total": datasets.Value("int64"),
        "rationale": datasets.Value("string"),
        "audio_files": datasets.List(datasets.Value("string")),
        "video_files": datasets.List(datasets.Value("string")),
        "split": datasets.Value("string"),
        "gender": datasets.Value("string"),
        "corpus": datasets.Value("string"),
    }
)
_MISSING_VALUES = {"", "nan", "na", "n/a", "none", "null"}


def norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def canon_pid(value: str) -> str:
    """``" 300 "``/``"300.0"`` -> ``"300"``: ids written by spreadsheets or pandas still match folders."""
    value = value.strip()
    if re.fullmatch(r"\d+\.0*", value):
        return value.split(".")[0]
    return value


def existing_dir(data_dir: str | os.PathLike) -> Path:
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise ValueError(f"corpus folder {root} does not exist or is not a folder")
    return root


def parse_score(value: str | None, what: str, low: int, high: int, path: str | os.PathLike) -> int | None:
    """An integer score in ``[low, high]``; blank/NaN is ``None`` (unlabelled), anything else is broken."""
    if value is None or value.strip().lower() in _MISSING_VALUES:
        return None
    try:
        number = float(value)
    except ValueError:
        raise Broken(path, f"{what} is not a number: {value!r}") from None
    if not number.is_integer():
        raise Broken(path, f"{what} is not an integer: {value!r}")
    if not low <= int(number) <= high:
        raise Broken(path, f"{what} = {int(number)} is outside {low}-{high}")
    return int(number)


def read_rows(
    path: Path, delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header (names stripped) and ``(line, fields)`` rows; blank lines dropped, trailing empty fields
    beyond the header trimmed (spreadsheet exports add them). Raggedness is left to the caller, who
    knows whom to blame."""
    if not path.is_file():
        raise Broken(path, "missing file")
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
            try:
                header = [name.strip() for name in next(reader)]
            except StopIteration:
                raise Broken(path, "empty file (no header)") from None
            rows = []
            for fields in reader:
                if not any(f.strip() for f in fields):
                    continue
                while len(fields) > len(header) and not fields[-1].strip():
                    fields = fields[:-1]
                rows.append((reader.line_num, fields))
    except UnicodeDecodeError as error:
        raise Broken(path, f"not UTF-8 text ({error})") from None
    except csv.Error as error:
        raise Broken(path, f"malformed CSV ({error})") from None
    return header, rows


def ragged(line: int, fields: list[str], header: list[str]) -> str:
    return f"ragged CSV: line {line} has {len(fields)} fields, the header has {len(header)}"


def find_column(header: Sequence[str], names: Iterable[str]) -> str | None:
    wanted = [norm(name) for name in names]
    by_norm = {norm(column): column for column in header}
    for name in wanted:
        if name in by_norm:
            return by_norm[name]
    return None


@dataclass
class Table:
    """A label/split CSV keyed by participant id; rows that are ragged or duplicated are kept as problems
    of that participant (``bad``), not of the whole file."""

    path: Path
    header: list[str]
    rows: dict[str, dict[str, str]]
    order: list[str]
    bad: dict[str, str]

    def row(self, participant_id: str) -> dict[str, str] | None:
        if participant_id in self.bad:
            raise Broken(self.path, self.bad[participant_id])
        return self.rows.get(participant_id)


def read_table(path: Path, key_names: Sequence[str], canon: Callable[[str], str | None] = canon_pid) -> Table:
    try:
        header, raw = read_rows(path)
    except Broken as error:
        raise ValueError(str(error)) from None
    key = find_column(header, key_names)
    if key is None:
        raise ValueError(f"{path}: no participant id column (expected one of {list(key_names)}; header: {header})")
    key_index = header.index(key)
    rows: dict[str, dict[str, str]] = {}
    order: list[str] = []
    bad: dict[str, str] = {}
    for line, fields in raw:
        raw_id = fields[key_index].strip() if len(fields) > key_index else ""
        if not raw_id:
            raise ValueError(f"{path}: line {line}: empty participant id in column {key!r}")
        pid = canon(raw_id) or raw_id
        if pid in rows or pid in bad:
            bad[pid] = f"participant appears more than once (again at line {line})"
            rows.pop(pid, None)
            continue
        order.append(pid)
        if len(fields) != len(header):
            bad[pid] = ragged(line, fields, header)
            continue
        rows[pid] = dict(zip(header, fields, strict=True))
    return Table(path, header, rows, order, bad)


def split_membership(tables: Mapping[str, Table]) -> dict[str, list[str]]:
    """Participant id -> the split files that list it (more than one is broken data)."""
    membership: dict[str, list[str]] = defaultdict(list)
    for split, table in tables.items():
        for pid in table.order:
            membership[pid].append(split)
    return membership


def note_total_mismatch(labels: Mapping[int, int | None], total: int | None, pid: str, notes: Notes) -> None:
    known = [v for v in labels.values() if v is not None]
    if total is not None and len(known) == len(labels) and sum(known) != total:
        notes.add("item scores do not add up to the PHQ total (both kept as given)", pid)


def participant_rows(
    *,
    participant_id: str,
    items: Sequence[PhqItem],
    transcript: Callable[[int], str],
    labels: Mapping[int, int | None],
    total: int | None,
    audio: Callable[[int], list[str]],
    video: Callable[[int], list[str]],
    split: str,
    gender: str | None,
    corpus: str,
) -> list[dict[str, Any]]:
    """One row of :data:`ROW_FEATURES` per item of one participant."""
    return [
        {
            "participant_id": participant_id,
            "item_index": item.index,
            "item_name": item.name,
            "transcript": transcript(item.index),
            "label": labels.get(item.index),
            "total": total,
            "rationale": None,
            "audio_files": audio(item.index),
            "video_files": video(item.index),
            "split": split,
            "gender": gender,
            "corpus": corpus,
        }
        for item in items
    ]


def to_dataset_dict(rows: list[dict[str, Any]]) -> datasets.DatasetDict:
    rows = sorted(rows, key=lambda r: (SPLITS.index(r["split"]), natural_key(r["participant_id"]), r["item_index"]))
    out = {}
    for split in SPLITS:
        selected = [row for row in rows if row["split"] == split]
        columns = {name: [row[name] for row in selected] for name in ROW_FEATURES}
        out[split] = datasets.Dataset.from_dict(columns, features=ROW_FEATURES)
    return datasets.DatasetDict(out)


def replace_columns(dataset: datasets.Dataset, columns: Mapping[str, tuple[Sequence[Any], Any]]) -> datasets.Dataset:
    """``dataset`` with ``columns`` (name -> (values, feature)) set, in place of any of the same name
    (kept in their position) or appended. The new fingerprint hashes the old one and the values'
    bytes: ``add_column`` would pickle every value to hash it, which costs far more than the work."""
    digest = hashlib.sha256(str(dataset._fingerprint).encode())
    for name, (values, _feature) in columns.items():
        digest.update(name.encode())
        for value in values:
            digest.update(repr(value).encode("utf-8"))
            digest.update(b"\0")
    base = digest.hexdigest()[:16]
    order = dataset.column_names
    present = [name for name in columns if name in order]
    if present:
        dataset = dataset.remove_columns(present, new_fingerprint=f"{base}-removed")
    for name, (values, feature) in columns.items():
        dataset = dataset.add_column(name, list(values), feature=feature, new_fingerprint=f"{base}-{name}")
    if present:
        dataset = dataset.select_columns([*order, *[n for n in columns if n not in order]], new_fingerprint=f"{base}-order")
    return dataset


def finish_load(
    rows: list[dict[str, Any]],
    rationales_path: str | os.PathLike | None,
    report: LoadReport,
    notes: Notes,
    return_report: bool,
) -> datasets.DatasetDict | tuple[datasets.DatasetDict, LoadReport]:
    """A loader's last step: the rows as a ``DatasetDict``, rationales attached, the report logged."""
    from .rationales import attach_rationales

    data = to_dataset_dict(rows)
    if rationales_path is not None:
        data = attach_rationales(data, rationales_path, notes)
    finish(report, notes)
    return (data, report) if return_report else data
