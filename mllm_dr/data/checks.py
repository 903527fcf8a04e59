"""Checks of the rows a run will use, before any model is built: every training or validation row
has an item label (and, for stage 2, a rationale written for that label); a required modality is
present; and the data's fingerprint, which a resumed run compares with its checkpoint's.

Each finding is a :class:`~mllm_dr.data.report.Problem` naming participant, item and file;
``on_error="raise"`` refuses them all in one message, ``"skip"`` leaves the rows (or the
participant) out and records them in the report that the run's outputs carry.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import datasets

from .report import LoadReport, Problem, check_on_error, natural_key

SHOWN = 5


def refuse_or_record(problems: Sequence[Problem], on_error: str, report: LoadReport, what: str) -> None:
    """``on_error="raise"``: one ``ValueError`` listing the problems (the first few in full);
    ``"skip"``: each recorded in ``report``."""
    if not problems:
        return
    if on_error == "raise":
        shown = "; ".join(str(p) for p in problems[:SHOWN]) + (f"; ... ({len(problems) - SHOWN} more)" if len(problems) > SHOWN else "")
        raise ValueError(
            f"{len(problems)} {what}: {shown}. Fix the data, or pass --on_error skip to leave them out "
            "(recorded in the run's outputs)"
        )
    report.skipped.extend(problems)


def drop(dataset_dict: datasets.DatasetDict, problems: Iterable[Problem]) -> datasets.DatasetDict:
    """``dataset_dict`` without the rows the problems name: a participant's item, or (``item_index``
    ``None``) every row of the participant."""
    participants, items = set(), set()
    for problem in problems:
        if problem.item_index is None:
            participants.add(problem.participant_id)
        else:
            items.add((problem.participant_id, problem.item_index))
    if not participants and not items:
        return dataset_dict
    out = {}
    for name, split in dataset_dict.items():
        keys = zip(split["participant_id"], split["item_index"], strict=True)
        keep = [i for i, (pid, item) in enumerate(keys) if pid not in participants and (pid, int(item)) not in items]
        out[name] = split.select(keep) if len(keep) != len(split) else split
    return datasets.DatasetDict(out)


def target_problems(
    dataset_dict: datasets.DatasetDict, *, with_rationale: bool, labels_source: str, rationales_source: str | None
) -> list[Problem]:
    """Rows that cannot be trained or validated on: no item label (a participant with none at all is
    one participant-level problem), and with ``with_rationale`` no rationale, or a rationale whose
    recorded label (``rationale_label``, set by :func:`~mllm_dr.data.attach_rationales`) is not the
    row's label."""
    problems: list[Problem] = []
    where_rationale = rationales_source or "the rows' rationale column"
    for split in dataset_dict.values():
        if not len(split):
            continue
        names = [c for c in ("participant_id", "item_index", "label", "rationale", "rationale_label") if c in split.column_names]
        columns = split.select_columns(names).to_dict()
        n = len(split)
        rationales = columns.get("rationale", [None] * n)
        written_for = columns.get("rationale_label", [None] * n)
        by_participant: dict[str, list[Problem]] = defaultdict(list)
        unlabelled: dict[str, int] = defaultdict(int)
        rows: dict[str, int] = defaultdict(int)
        for pid, item, label, rationale, recorded in zip(
            columns["participant_id"], columns["item_index"], columns["label"], rationales, written_for, strict=True
        ):
            item = int(item)
            rows[pid] += 1
            if label is None:
                unlabelled[pid] += 1
                by_participant[pid].append(Problem(pid, labels_source, "no item label", item))
                continue
            if not with_rationale:
                continue
            if not rationale:
                by_participant[pid].append(
                    Problem(pid, where_rationale, "no rationale (stage-2 targets are rationale + score)", item)
                )
            elif recorded is not None and recorded != label:
                by_participant[pid].append(
                    Problem(pid, where_rationale, f"rationale written for label {recorded}, the corpus label is {label}", item)
                )
        for pid in sorted(by_participant, key=natural_key):
            if unlabelled[pid] == rows[pid]:
                problems.append(Problem(pid, labels_source, f"no item labels (all {rows[pid]} items unlabelled)"))
            else:
                problems.extend(by_participant[pid])
    return problems


def participants_without(dataset_dict: datasets.DatasetDict, modality: str) -> list[str]:
    """Participants whose rows have no feature file of ``modality`` (empty ``{modality}_files``)."""
    ids = set()
    for split in dataset_dict.values():
        if f"{modality}_files" in split.column_names:
            columns = split.select_columns(["participant_id", f"{modality}_files"]).to_dict()
            ids.update(pid for pid, files in zip(columns["participant_id"], columns[f"{modality}_files"]) if not files)
    return sorted(ids, key=natural_key)


def modality_problems(dataset_dict: datasets.DatasetDict, required: Sequence[str], where: str) -> list[Problem]:
    """Participants without a feature file of a ``required`` modality."""
    return [
        Problem(pid, where, f"no {modality} feature file (--require_modalities {modality})")
        for modality in required for pid in participants_without(dataset_dict, modality)
    ]  # fmt: skip


def checked(
    dataset_dict: datasets.DatasetDict, problems: Sequence[Problem], on_error: str, report: LoadReport, what: str
) -> datasets.DatasetDict:
    """``problems`` refused (``"raise"``) or recorded in ``report`` and their rows dropped (``"skip"``)."""
    check_on_error(on_error)
    refuse_or_record(problems, on_error, report, what)
    return drop(dataset_dict, problems)


FINGERPRINT_COLUMNS = ("participant_id", "item_index", "label", "rationale", "transcript")


def data_fingerprint(splits: dict[str, datasets.Dataset]) -> str:
    """A content hash of what a run trains and validates on: per split, each row's participant,
    item, label, rationale and transcript, and the names and sizes of its feature files (not their
    paths, so a moved corpus keeps its fingerprint). A resumed run compares it with its checkpoint's."""
    digest = hashlib.sha256()
    sizes: dict[str, int | None] = {}

    def described(files: Sequence[str] | None) -> list[Any]:
        out = []
        for path in files or ():
            if path not in sizes:
                sizes[path] = os.path.getsize(path) if os.path.isfile(path) else None
            out.append([os.path.basename(path), sizes[path]])
        return out

    for name in sorted(splits):
        split = splits[name]
        names = [c for c in (*FINGERPRINT_COLUMNS, "audio_files", "video_files") if c in split.column_names]
        columns = split.select_columns(names).to_dict() if len(split) else {c: [] for c in names}
        digest.update(json.dumps({"split": name, "columns": names}).encode())
        for i in range(len(split)):
            row = [columns[c][i] if not c.endswith("_files") else described(columns[c][i]) for c in names]
            digest.update(json.dumps(row, ensure_ascii=False, default=str).encode("utf-8"))
            digest.update(b"\n")
    return digest.hexdigest()[:16]
