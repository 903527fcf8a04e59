"""``rationales.jsonl``: the one schema that the distiller and the synthetic generator write and
training reads, and the one routine that attaches rationales to dataset rows.

One JSON object per line::

    {"participant_id": "302", "item_index": 3, "item_name": "Sleep", "label": 2,
     "rationale": "<the text after 'Evaluation Reason:', without the prefix>",
     "teacher": "gpt-4o", "prompt_version": "table1-v1"}

A key ``(participant_id, item_index)`` appears once. Failures go to ``rationales.failures.jsonl``
beside it, never into ``rationales.jsonl``. Appends are line-atomic (:func:`mllm_dr.io.append_jsonl`),
so a killed run loses at most the line being written and a resumed run appends only missing keys.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets

from processing_mllm_dr import REASON_PREFIX

from ..io import append_jsonl, read_jsonl
from .report import Notes
from .tables import replace_columns

logger = logging.getLogger("mllm_dr.data")

REQUIRED_FIELDS = ("participant_id", "item_index", "item_name", "label", "rationale", "teacher", "prompt_version")


@dataclass(frozen=True)
class Rationale:
    participant_id: str
    item_index: int
    item_name: str
    label: int
    rationale: str
    teacher: str
    prompt_version: str

    @property
    def key(self) -> tuple[str, int]:
        return (self.participant_id, self.item_index)

    @classmethod
    def from_dict(cls, record: dict[str, Any], where: str = "record") -> Rationale:
        """Validates one record; errors name the place (file:line) and the field."""
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        missing = [name for name in REQUIRED_FIELDS if name not in record]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}")
        participant_id = record["participant_id"]
        if not isinstance(participant_id, str) or not participant_id:
            raise ValueError(f"{where}: participant_id must be a non-empty string, got {participant_id!r}")
        item_index = record["item_index"]
        if isinstance(item_index, bool) or not isinstance(item_index, int) or not 1 <= item_index <= 9:
            raise ValueError(f"{where}: item_index must be an integer 1-9, got {item_index!r}")
        label = record["label"]
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 3:
            raise ValueError(f"{where}: label must be an integer 0-3, got {label!r}")
        rationale = record["rationale"]
        if not isinstance(rationale, str) or not rationale.strip():
            raise ValueError(f"{where}: rationale must be a non-empty string")
        if rationale.lstrip().startswith(REASON_PREFIX):
            raise ValueError(f"{where}: rationale must not start with {REASON_PREFIX!r} (store the text after it)")
        for name in ("item_name", "teacher", "prompt_version"):
            if not isinstance(record[name], str) or not record[name]:
                raise ValueError(f"{where}: {name} must be a non-empty string")
        return cls(**{name: record[name] for name in REQUIRED_FIELDS})


def failures_path(path: str | Path) -> Path:
    """``rationales.jsonl`` -> ``rationales.failures.jsonl`` (beside it)."""
    path = Path(path)
    stem = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.name
    return path.with_name(stem + ".failures.jsonl")


def iter_rationales(path: str | Path) -> Iterator[Rationale]:
    """Reads and validates every line; a torn last line (a killed writer) is ignored, anything
    else malformed raises naming file and line."""
    for number, record in read_jsonl(path):
        yield Rationale.from_dict(record, f"{path}:{number}")


def load_rationales(path: str | Path) -> dict[tuple[str, int], Rationale]:
    """All records keyed by ``(participant_id, item_index)``; a duplicated key is an error."""
    if not Path(path).is_file():
        raise ValueError(f"{path}: rationales file not found")
    records: dict[tuple[str, int], Rationale] = {}
    lines: dict[tuple[str, int], int] = {}
    for number, raw in read_jsonl(path):
        record = Rationale.from_dict(raw, f"{path}:{number}")
        if record.key in records:
            raise ValueError(
                f"{path}:{number}: participant {record.participant_id}, item {record.item_index} is already on line "
                f"{lines[record.key]} (mllm-dr-distill keeps one record per item and repairs identical duplicates)"
            )
        records[record.key] = record
        lines[record.key] = number
    return records


class RationaleWriter:
    """Appends records to ``rationales.jsonl`` (and failures beside it), skipping keys already there.

    >>> writer = RationaleWriter("out/rationales.jsonl")
    >>> writer.has("302", 3)
    >>> writer.write(Rationale(...))
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.failures = failures_path(self.path)
        self.done: set[tuple[str, int]] = set(load_rationales(self.path)) if self.path.exists() else set()

    def has(self, participant_id: str, item_index: int) -> bool:
        return (participant_id, item_index) in self.done

    def write(self, record: Rationale | dict[str, Any]) -> bool:
        """Appends one valid record; returns False (writes nothing) when its key is already there."""
        if not isinstance(record, Rationale):
            record = Rationale.from_dict(dict(record))
        if record.key in self.done:
            return False
        append_jsonl(self.path, [asdict(record)])
        self.done.add(record.key)
        return True

    def write_failure(self, participant_id: str, item_index: int, reason: str, **extra: Any) -> None:
        """Records a failure in ``rationales.failures.jsonl`` (never in ``rationales.jsonl``)."""
        append_jsonl(self.failures, [{"participant_id": participant_id, "item_index": item_index, "reason": reason, **extra}])


def write_rationales(path: str | Path, records: Iterable[Rationale | dict[str, Any]]) -> int:
    """Appends ``records`` (skipping existing keys); returns how many were written."""
    writer = RationaleWriter(path)
    return sum(writer.write(record) for record in records)


def attach_rationales(
    dataset_dict: datasets.DatasetDict, path: str | os.PathLike, notes: Notes | None = None
) -> datasets.DatasetDict:
    """Sets each row's ``rationale`` from ``path`` where a record exists for its (participant, item),
    keeping the row's own otherwise, and ``rationale_label`` to the label the record was written for
    (``None`` without a record), which training checks against the row's label. Records written for
    another label than the row's, and labelled rows left without a rationale, are noted (in
    ``notes``, or logged)."""
    records = load_rationales(path)
    own_notes = notes is None
    notes = Notes() if notes is None else notes
    out, used, missing = {}, 0, 0
    for name, split in dataset_dict.items():
        keys = zip(split["participant_id"], split["item_index"], strict=True)
        found = [records.get((str(pid), int(item))) for pid, item in keys]
        existing = split["rationale"] if "rationale" in split.column_names else [None] * len(split)
        values = [record.rationale if record is not None else own for record, own in zip(found, existing)]
        for record, label, pid in zip(found, split["label"], split["participant_id"], strict=True):
            if record is not None and label is not None and record.label != label:
                notes.add(f"{path}: rationale written for a different label than the corpus's", str(pid))
        used += sum(record is not None for record in found)
        missing += sum(label is not None and not value for label, value in zip(split["label"], values))
        written_for = [record.label if record is not None else None for record in found]
        out[name] = replace_columns(
            split,
            {"rationale": (values, datasets.Value("string")), "rationale_label": (written_for, datasets.Value("int64"))},
        )
    if missing:
        notes.add(f"{path}: {used} row(s) got a rationale; {missing} labelled row(s) have none")
    if own_notes:
        for line in notes.lines():
            logger.warning("%s", line)
    return datasets.DatasetDict(out)


__all__ = [
    "Rationale",
    "RationaleWriter",
    "REQUIRED_FIELDS",
    "attach_rationales",
    "failures_path",
    "iter_rationales",
    "load_rationales",
    "write_rationales",
]
