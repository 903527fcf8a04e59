"""The DAIC family: E-DAIC-WOZ (AVEC 2019) and the original DAIC-WOZ (AVEC 2017).

Both keep one ``<ID>_P`` folder per participant, under ``data/`` or the corpus root (some copies
nest ``<ID>_P/<ID>_P``): :func:`participant_folders` is the one place that finds them, for the
loaders and for the HuBERT extractor alike.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import datasets

from processing_mllm_dr import PHQ8_ITEMS

from .features import feature_reference
from .report import Broken, LoadReport, Notes, check_on_error, fail, natural_key
from .tables import (
    SPLITS,
    Table,
    existing_dir,
    finish_load,
    find_column,
    norm,
    note_total_mismatch,
    parse_score,
    participant_rows,
    read_table,
    split_membership,
)
from .transcripts import daic_transcript, edaic_transcript

# Expected feature widths (frames x dim). ``None`` anywhere means "do not check".
AUDIO_DIM = 768  # HuBERT-base; the authors' own E-DAIC features were 1024 (HuBERT-large)
RESNET_DIM = 2048  # E-DAIC <ID>_CNN_ResNet.mat
EDAIC_OPENFACE_DIM = 49  # 6 pose + 8 gaze + 17 AU_r + 18 AU_c after dropping frame/timestamp/confidence/success

# Feature files relative to a participant folder ({id} = participant id). The audio file is what
# the HuBERT extractor writes (mllm-dr-extract-features); the visual ones ship with E-DAIC.
AUDIO_PATTERN = "features/{id}_HuBERT.npy"
VISUALS: dict[str, tuple[str | None, int | None]] = {
    "resnet": ("features/{id}_CNN_ResNet.mat", RESNET_DIM),
    "openface": ("features/{id}_OpenFace2.1.0_Pose_gaze_AUs.csv", EDAIC_OPENFACE_DIM),
    "none": (None, None),
}
WAV_PATTERN = "{id}_AUDIO.wav"

# PHQ-8 item columns are matched by name, not position (detailed_lables.csv's order is unverified).
_ITEM_SYNONYMS: dict[str, int] = {
    "nointerest": 1, "interest": 1, "anhedonia": 1,
    "depressed": 2, "depression": 2, "down": 2,
    "sleep": 3, "sleeping": 3,
    "tired": 4, "energy": 4, "fatigue": 4,
    "appetite": 5,
    "failure": 6,
    "concentrating": 7, "concentration": 7,
    "moving": 8, "psychomotor": 8, "movement": 8,
}  # fmt: skip
_PHQ8_COLUMN = re.compile(r"phq8([1-8])?([a-z]+)")


# --------------------------------------------------------------------------------------------- folders
def participant_folders(root: str | os.PathLike) -> dict[str, list[Path]]:
    """Participant id -> the levels of its ``<ID>_P`` folder, outermost first (``[<ID>_P]``, or
    ``[<ID>_P, <ID>_P/<ID>_P]`` for a nested copy; the last is the participant folder).

    Folders are looked for under ``root/data`` and ``root`` (``data/`` wins on a clash); a ``root``
    that is itself a participant folder stands for itself.
    """
    root = Path(root)
    found: dict[str, Path] = {}
    if root.name.endswith("_P") and ((root / root.name).is_dir() or not any(root.glob("*_P/"))):
        found[root.name[:-2]] = root
    else:
        for base in (root / "data", root):
            if base.is_dir():
                for folder in sorted(base.glob("*_P")):
                    if folder.is_dir():
                        found.setdefault(folder.name[:-2], folder)
    levels: dict[str, list[Path]] = {}
    for pid in sorted(found, key=natural_key):
        chain = [found[pid]]
        while (chain[-1] / chain[0].name).is_dir():
            chain.append(chain[-1] / chain[0].name)
        levels[pid] = chain
    return levels


def _participant_dir(folders: dict[str, list[Path]], root: Path, participant_id: str, listed_in: Path) -> Path:
    if participant_id not in folders:
        raise Broken(
            listed_in,
            f"participant is listed here but has no folder {participant_id}_P (looked in {root / 'data'} and {root})",
        )
    return folders[participant_id][-1]


def _note_unlisted_folders(folders: dict[str, list[Path]], listed: Iterable[str], notes: Notes) -> None:
    """Participant folders that no split file lists are left out: say so (a mislabelled copy shows here)."""
    listed = set(listed)
    for pid, chain in folders.items():
        if pid not in listed:
            notes.add(f"<ID>_P folder under {chain[0].parent} listed in no split file, left out", pid)


# --------------------------------------------------------------------------------------------- labels
def _find_label_file(root: Path, name: str) -> Path | None:
    """Labels live in ``labels/`` in some copies and at the root in others."""
    for folder in (root / "labels", root):
        if (folder / name).is_file():
            return folder / name
    return None


def _require_label_file(root: Path, name: str) -> Path:
    path = _find_label_file(root, name)
    if path is None:
        raise ValueError(f"{root}: label file {name} not found (looked in {root / 'labels'} and {root})")
    return path


def _phq8_item_columns(table: Table) -> dict[int, str]:
    """Matches the eight PHQ-8 item columns by name (``PHQ_8NoInterest``, ``PHQ8_NoInterest``,
    ``PHQ8_1_NoInterest``, ``PHQ8_8_Psychomotor`` ...); an incomplete or ambiguous set is an error."""
    found: dict[int, list[str]] = defaultdict(list)
    for column in table.header:
        match = _PHQ8_COLUMN.fullmatch(norm(column))
        if not match or match.group(2) not in _ITEM_SYNONYMS:
            continue
        item = _ITEM_SYNONYMS[match.group(2)]
        if match.group(1) is not None and int(match.group(1)) != item:
            raise ValueError(
                f"{table.path}: column {column!r} names PHQ-8 item {item} but is numbered {match.group(1)}"
            )
        found[item].append(column)
    missing = [f"{i} ({PHQ8_ITEMS[i - 1].name})" for i in range(1, 9) if i not in found]
    twice = {i: cols for i, cols in found.items() if len(cols) > 1}
    if missing or twice:
        raise ValueError(
            f"{table.path}: expected one column per PHQ-8 item (e.g. PHQ8_1_NoInterest ... PHQ8_8_Psychomotor); "
            f"missing items: {missing or 'none'}; ambiguous: {twice or 'none'}; header: {table.header}"
        )
    return {item: cols[0] for item, cols in found.items()}


def _visual(visual: str, video_pattern: str | None, video_dim: int | None) -> tuple[str | None, int | None]:
    if visual not in VISUALS:
        raise ValueError(f"visual must be one of {sorted(VISUALS)}, got {visual!r}")
    default_pattern, default_dim = VISUALS[visual]
    return (video_pattern if video_pattern is not None else default_pattern, video_dim if video_dim is not None else default_dim)


def _gender(table: Table, row: dict[str, str]) -> str | None:
    column = find_column(table.header, ["Gender"])
    return (row.get(column) or "").strip() or None if column else None


def _load_participants(
    corpus: str,
    root: Path,
    tables: dict[str, Table],
    transcript_of: Callable[[Path, str], str],
    labels_of: Callable[[str, Table, dict[str, str]], tuple[dict[int, int | None], int | None]],
    features: dict[str, Any],
    *,
    on_error: str,
    rationales_path: str | os.PathLike | None,
    report: LoadReport,
    notes: Notes,
    return_report: bool,
    note_unlabelled: bool,
):
    """The participant loop both DAIC-family loaders share: split membership, folder, transcript,
    labels (``labels_of``), total, feature files, rows; a broken participant goes to ``on_error``."""
    membership = split_membership(tables)
    folders = participant_folders(root)
    _note_unlisted_folders(folders, membership, notes)
    rows: list[dict[str, Any]] = []
    for pid in sorted(membership, key=natural_key):
        split = membership[pid][0]
        table = tables[split]
        try:
            if len(membership[pid]) > 1:
                raise Broken(table.path, f"participant is listed in several split files: {membership[pid]}")
            table_row = table.row(pid) or {}
            folder = _participant_dir(folders, root, pid, table.path)
            transcript = transcript_of(folder, pid)
            labels, total = labels_of(pid, table, table_row)
            if total is None and all(v is not None for v in labels.values()):
                total = sum(labels.values())
            audio = feature_reference(
                folder, features["audio_pattern"], pid, features["audio_dim"], features["require_audio"], "audio", notes
            )
            video = feature_reference(
                folder, features["video_pattern"], pid, features["video_dim"], features["require_video"], "video", notes
            )
        except Broken as error:
            fail(report, on_error, pid, error)
            continue
        if note_unlabelled and all(v is None for v in labels.values()):
            notes.add(f"no item labels ({split} split)", pid)
        note_total_mismatch(labels, total, pid, notes)
        rows += participant_rows(
            participant_id=pid, items=PHQ8_ITEMS, transcript=lambda _i, t=transcript: t, labels=labels, total=total,
            audio=lambda _i, a=audio: list(a), video=lambda _i, v=video: list(v), split=split,
            gender=_gender(table, table_row), corpus=corpus,
        )  # fmt: skip
    return finish_load(rows, rationales_path, report, notes, return_report)


# --------------------------------------------------------------------------------------------- E-DAIC-WOZ
def load_edaic(
    data_dir: str | os.PathLike,
    *,
    visual: str = "resnet",
    on_error: str = "raise",
    rationales_path: str | os.PathLike | None = None,
    audio_pattern: str | None = AUDIO_PATTERN,
    video_pattern: str | None = None,
    audio_dim: int | None = AUDIO_DIM,
    video_dim: int | None = None,
    require_audio: bool = False,
    require_video: bool = False,
    return_report: bool = False,
) -> datasets.DatasetDict | tuple[datasets.DatasetDict, LoadReport]:
    """E-DAIC-WOZ (AVEC 2019): one row per (participant, PHQ-8 item).

    Splits from ``{train,dev,test}_split.csv``; item labels from ``Detailed_PHQ8_Labels.csv`` (train+dev)
    and ``detailed_lables.csv`` (sic, all splits, the only source of test item labels; without it test
    labels are ``None``); totals from ``PHQ_Score``. Labels may sit at the root or in ``labels/``,
    participant folders in ``data/`` or the root, possibly nested ``<ID>_P/<ID>_P``.

    ``visual``: ``"resnet"`` (``features/<ID>_CNN_ResNet.mat``, 2048-d), ``"openface"`` (the OpenFace 2.1
    CSV, 49-d) or ``"none"``; ``video_pattern``/``video_dim`` override it (``{id}`` is the participant id).
    A missing feature file gives an empty ``*_files`` list (noted in the report) unless
    ``require_audio``/``require_video``, which make it broken data. ``on_error``: ``"raise"`` stops at the
    first broken participant (ValueError naming participant, file, problem); ``"skip"`` leaves it out and
    logs a summary. ``return_report=True`` also returns the :class:`LoadReport`.
    """
    check_on_error(on_error)
    video_pattern, video_dim = _visual(visual, video_pattern, video_dim)
    root = existing_dir(data_dir)
    report, notes = LoadReport("edaic"), Notes()

    key = ["Participant_ID", "Participant"]
    split_tables = {split: read_table(_require_label_file(root, f"{split}_split.csv"), key) for split in SPLITS}
    item_sources: list[tuple[Table, dict[int, str]]] = []
    for name in ("Detailed_PHQ8_Labels.csv", "detailed_lables.csv"):
        path = _find_label_file(root, name)
        if path is None:
            consequence = "test-set item labels" if name == "detailed_lables.csv" else "train/dev item labels"
            notes.add(f"{name} not found in {root / 'labels'} or {root}: {consequence} are None; totals from PHQ_Score")
            continue
        table = read_table(path, key)
        item_sources.append((table, _phq8_item_columns(table)))

    def labels_of(pid: str, split_table: Table, split_row: dict[str, str]):
        labels: dict[int, int | None] = {item.index: None for item in PHQ8_ITEMS}
        total_column = find_column(split_table.header, ["PHQ_Score", "PHQ8_Score"]) or ""
        total = parse_score(split_row.get(total_column), "PHQ_Score", 0, 24, split_table.path)
        for table, columns in item_sources:
            label_row = table.row(pid)
            if label_row is None:
                continue
            for item, column in columns.items():
                value = parse_score(label_row[column], f"item label {column}", 0, 3, table.path)
                if value is None:
                    continue
                if labels[item] is None:
                    labels[item] = value
                elif labels[item] != value:
                    notes.add(
                        "item labels differ between Detailed_PHQ8_Labels.csv and detailed_lables.csv "
                        "(Detailed_PHQ8_Labels.csv kept)",
                        pid,
                    )
            if total is None:
                column = find_column(table.header, ["PHQ_8Total", "PHQ8_Total", "PHQ8_Score"])
                if column:
                    total = parse_score(label_row[column], column, 0, 24, table.path)
        return labels, total

    return _load_participants(
        "edaic", root, split_tables, lambda folder, pid: edaic_transcript(folder / f"{pid}_Transcript.csv"), labels_of,
        dict(audio_pattern=audio_pattern, video_pattern=video_pattern, audio_dim=audio_dim, video_dim=video_dim,
             require_audio=require_audio, require_video=require_video),
        on_error=on_error, rationales_path=rationales_path, report=report, notes=notes, return_report=return_report,
        note_unlabelled=True,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------- DAIC-WOZ
def load_daic_woz(
    data_dir: str | os.PathLike,
    *,
    visual: str = "none",
    on_error: str = "raise",
    rationales_path: str | os.PathLike | None = None,
    audio_pattern: str | None = AUDIO_PATTERN,
    video_pattern: str | None = None,
    audio_dim: int | None = AUDIO_DIM,
    video_dim: int | None = None,
    require_audio: bool = False,
    require_video: bool = False,
    return_report: bool = False,
) -> datasets.DatasetDict | tuple[datasets.DatasetDict, LoadReport]:
    """The original DAIC-WOZ (AVEC 2017, sessions 300-492): one row per (participant, PHQ-8 item).

    Splits and train/dev item labels from ``train_split_Depression_AVEC2017.csv`` /
    ``dev_split_Depression_AVEC2017.csv``; the test split and its totals from ``full_test_split.csv``
    (falling back to ``test_split_Depression_AVEC2017.csv``, without totals); test item labels are
    ``None`` (DAIC-WOZ never released them). Transcripts ``<ID>_TRANSCRIPT.csv`` are tab-separated.
    DAIC-WOZ ships no HuBERT/ResNet/OpenFace-2 features: point ``audio_pattern``/``video_pattern``
    (relative to ``<ID>_P``, ``{id}`` = participant id) at what you extracted; ``visual`` accepts the
    E-DAIC names for features written under the E-DAIC names. Other arguments as :func:`load_edaic`.
    Sessions 300-492 are also in E-DAIC: never mix the two (see :func:`concatenate_corpora`).
    """
    check_on_error(on_error)
    video_pattern, video_dim = _visual(visual, video_pattern, video_dim)
    root = existing_dir(data_dir)
    report, notes = LoadReport("daic"), Notes()

    key = ["Participant_ID", "Participant"]
    test_path = _find_label_file(root, "full_test_split.csv")
    if test_path is None:
        test_path = _require_label_file(root, "test_split_Depression_AVEC2017.csv")
        notes.add(f"full_test_split.csv not found: test totals are None (read {test_path.name})")
    tables = {
        "train": read_table(_require_label_file(root, "train_split_Depression_AVEC2017.csv"), key),
        "dev": read_table(_require_label_file(root, "dev_split_Depression_AVEC2017.csv"), key),
        "test": read_table(test_path, key),
    }
    item_columns = {tables[split].path: _phq8_item_columns(tables[split]) for split in ("train", "dev")}

    def labels_of(pid: str, table: Table, label_row: dict[str, str]):
        labels: dict[int, int | None] = {item.index: None for item in PHQ8_ITEMS}
        for item, column in item_columns.get(table.path, {}).items():
            labels[item] = parse_score(label_row[column], f"item label {column}", 0, 3, table.path)
        total_column = find_column(table.header, ["PHQ8_Score", "PHQ_Score", "PHQ8_Total"])
        return labels, parse_score(label_row.get(total_column or ""), total_column or "total", 0, 24, table.path)

    return _load_participants(
        "daic", root, tables, lambda folder, pid: daic_transcript(folder / f"{pid}_TRANSCRIPT.csv"), labels_of,
        dict(audio_pattern=audio_pattern, video_pattern=video_pattern, audio_dim=audio_dim, video_dim=video_dim,
             require_audio=require_audio, require_video=require_video),
        on_error=on_error, rationales_path=rationales_path, report=report, notes=notes, return_report=return_report,
        note_unlabelled=False,
    )  # fmt: skip
