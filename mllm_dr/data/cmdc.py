"""CMDC (Chinese Multimodal Depression Corpus): 52 healthy controls (``HC/HCxx``) and 26 patients
(``MDD/MDDxx``), one answer per interview question (``Q<n>.txt``/``.wav``/``.csv``), PHQ-9 labels.

:func:`subject_folders` and :func:`index_questions` are the one place that finds subjects and their
per-question files, for the loader and for the HuBERT extractor alike.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets

from processing_mllm_dr import PHQ9_ITEMS

from .features import checked_feature
from .report import Broken, LoadReport, Notes, check_on_error, fail, natural_key
from .tables import (
    existing_dir,
    find_column,
    finish_load,
    note_total_mismatch,
    parse_score,
    participant_rows,
    read_table,
)
from .transcripts import plain_text

AUDIO_DIM = 768
OPENFACE_DIM = 709  # 714 OpenFace 2.x columns minus frame, face_id, timestamp, confidence, success

# Per-question files inside a subject folder. The audio feature name is ours (the corpus ships only
# Q<n>.wav): the HuBERT extractor (mllm-dr-extract-features) writes Q<n>_HuBERT.npy beside the wav.
TRANSCRIPT_PATTERN = "Q{q}.txt"
WAV_PATTERN = "Q{q}.wav"
AUDIO_PATTERN = "Q{q}_HuBERT.npy"
VIDEO_PATTERN = "Q{q}.csv"
LABELS_CSV = "labels.csv"
ID_COLUMN = "subject_id"
ITEM_COLUMNS = tuple(f"PHQ9_{i}" for i in range(1, 10))
TOTAL_COLUMN = "PHQ9_Total"
GENDER_COLUMN = "gender"
QUESTION_MAP = Path(__file__).resolve().parent / "cmdc_question_map.json"
GROUP_SIZES = {"HC": 52, "MDD": 26}
# The authors' fixed split: train HC01-40 + MDD01-20, test HC41-52 + MDD21-26 (no dev set).
AUTHORS_TRAIN = {"HC": range(1, 41), "MDD": range(1, 21)}
NUM_FOLDS = 5

_CMDC_ID = re.compile(r"(hc|mdd)[\s_-]*0*(\d+)", re.IGNORECASE)
_QUESTION_FILE = re.compile(r"q0*(\d+)(.*)", re.IGNORECASE | re.DOTALL)
_IRREGULAR = re.compile(r"[\s\-_~()]+")


def cmdc_subject_id(name: str) -> str | None:
    """``"hc1"``, ``"HC_01"``, ``"MDD-7"`` -> ``"HC01"``, ``"MDD07"``; ``None`` for anything else."""
    match = _CMDC_ID.fullmatch(name.strip())
    if not match:
        return None
    return f"{match.group(1).upper()}{int(match.group(2)):02d}"


def _cmdc_group(subject_id: str) -> tuple[str, int]:
    match = _CMDC_ID.fullmatch(subject_id.strip())
    if match is None:
        raise ValueError(f"{subject_id!r} is not a CMDC subject id (HC<n> or MDD<n>)")
    return match.group(1).upper(), int(match.group(2))


def cmdc_protocol_split(
    subject_ids: Iterable[str], split: str = "authors", dev_fraction: float = 0.0
) -> dict[str, str]:
    """Subject id -> ``"train"``/``"dev"``/``"test"`` for a CMDC protocol (ids outside it are absent).

    ``"authors"``: train HC01-40 + MDD01-20, test HC41-52 + MDD21-26. ``"fold1"``..``"fold5"``:
    subject HCn/MDDn is in test fold ``(n - 1) % 5 + 1`` (stratified by group, a function of the id
    alone, so a missing subject never shifts the others); train = the other four folds. With 52 HC +
    26 MDD the test folds hold 11+6, 11+5, 10+5, 10+5, 10+5 subjects. ``dev_fraction`` > 0 moves the
    highest-numbered ``round(fraction * n)`` of each group's ``n`` train ids to dev (at least one stays
    in train); the default is an empty dev, as in the authors' protocol.
    """
    if not 0.0 <= dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be in [0, 1), got {dev_fraction}")
    fold = None
    if split != "authors":
        match = re.fullmatch(r"fold([1-9][0-9]*)", split)
        if not match or not 1 <= int(match.group(1)) <= NUM_FOLDS:
            raise ValueError(f"CMDC split must be 'authors' or 'fold1'..'fold{NUM_FOLDS}', got {split!r}")
        fold = int(match.group(1))
    assignment: dict[str, str] = {}
    for subject in subject_ids:
        group, number = _cmdc_group(subject)
        subject = f"{group}{number:02d}"
        if not 1 <= number <= GROUP_SIZES[group]:
            continue
        in_test = (number - 1) % NUM_FOLDS + 1 == fold if fold else number not in AUTHORS_TRAIN[group]
        assignment[subject] = "test" if in_test else "train"
    if dev_fraction > 0:
        for group in GROUP_SIZES:
            train = sorted((s for s, v in assignment.items() if v == "train" and s.startswith(group)), key=natural_key)
            size = min(len(train) - 1, round(dev_fraction * len(train)))  # train keeps one subject per group
            for subject in train[len(train) - size :] if size > 0 else []:
                assignment[subject] = "dev"
    return assignment


def load_question_map(source: str | os.PathLike | Mapping | None = None) -> dict[int, list[int]]:
    """CMDC item -> question numbers. ``None`` reads the shipped ``cmdc_question_map.json`` (package
    data of ``mllm_dr.data``); a path reads that file; a mapping is used directly. Accepts
    ``{"items": {"1": {"questions": [4, 6]}, ...}}`` (the shipped form) or plain ``{"1": [4, 6], ...}``.
    An empty list means "whole interview"."""
    where = "question map"
    if source is None or isinstance(source, (str, os.PathLike)):
        path = Path(source) if source is not None else QUESTION_MAP
        where = str(path)
        try:
            source = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: cannot read the CMDC question map ({error})") from None
    items = source.get("items", source) if isinstance(source, Mapping) else None
    if not isinstance(items, Mapping):
        raise TypeError(f"{where}: expected an object of item -> questions, got {type(source).__name__}")
    mapping: dict[int, list[int]] = {}
    for key, value in items.items():
        if not str(key).isdigit() or not 1 <= int(key) <= 9:
            raise ValueError(f"{where}: item key {key!r} is not a PHQ-9 item number 1-9")
        questions = value.get("questions", []) if isinstance(value, Mapping) else value
        if not isinstance(questions, list) or any(
            isinstance(q, bool) or not isinstance(q, int) or q < 1 for q in questions
        ):
            raise ValueError(
                f"{where}: item {key}: questions must be a list of question numbers >= 1, got {questions!r}"
            )
        mapping[int(key)] = list(questions)
    return mapping


# --------------------------------------------------------------------------------------------- folders and files
def subject_folders(root: str | os.PathLike, notes: Notes | None = None) -> dict[str, Path]:
    """Subject id (``HC01`` ...) -> its folder under ``root/HC`` or ``root/MDD``; folder names match
    leniently (``hc1``, ``HC_01``); anything else, and a second folder of one subject, is noted."""
    root = Path(root)
    notes = notes if notes is not None else Notes()
    folders: dict[str, Path] = {}
    for group in GROUP_SIZES:
        group_dir = root / group
        if not group_dir.is_dir():
            notes.add(f"{group_dir} not found: no {group} subjects")
            continue
        for folder in sorted(group_dir.iterdir()):
            subject = cmdc_subject_id(folder.name) if folder.is_dir() else None
            if subject is None or not subject.startswith(group):
                if folder.is_dir():
                    notes.add(f"{folder}: not a {group}<number> subject folder, ignored")
                continue
            if subject in folders:
                notes.add(f"{folder}: second folder for {subject}, ignored (using {folders[subject]})")
                continue
            folders[subject] = folder
    return folders


def question_suffix(pattern: str, what: str) -> str:
    """``"Q{q}_HuBERT.npy"`` -> ``"_HuBERT.npy"`` (per-question file names all start with ``Q{q}``)."""
    if not pattern.startswith("Q{q}"):
        raise ValueError(f"{what} must start with 'Q{{q}}' (e.g. 'Q{{q}}_HuBERT.npy'), got {pattern!r}")
    return pattern[len("Q{q}") :]


def index_questions(
    folder: Path, suffixes: Mapping[str, str], subject: str, notes: Notes
) -> dict[str, dict[int, Path]]:
    """Per kind (e.g. ``transcript``/``audio``/``video``): question number -> file. Names match
    leniently (``Q4-.txt``, ``q04.TXT``, ``Q4 _HuBERT.npy``); an exact name wins; every lenient or
    ignored match is reported."""
    candidates: dict[tuple[str, int], list[tuple[bool, Path]]] = defaultdict(list)
    wanted = {kind: _IRREGULAR.sub("", suffix).lower() for kind, suffix in suffixes.items()}
    for path in sorted(folder.iterdir()):
        match = _QUESTION_FILE.fullmatch(path.name)
        if not match or not path.is_file():
            continue
        question, rest = int(match.group(1)), match.group(2)
        for kind, suffix in suffixes.items():
            if rest == suffix:
                candidates[(kind, question)].append((True, path))
            elif _IRREGULAR.sub("", rest).lower() == wanted[kind]:
                candidates[(kind, question)].append((False, path))
    index: dict[str, dict[int, Path]] = {kind: {} for kind in suffixes}
    for (kind, question), found in sorted(candidates.items()):
        found.sort(key=lambda item: (not item[0], item[1].name))
        exact, chosen = found[0]
        index[kind][question] = chosen
        if not exact:
            notes.add(f"{subject}: matched irregular clip name {chosen.name} as Q{question}{suffixes[kind]}")
        for _exact, other in found[1:]:
            notes.add(f"{subject}: ignored {other.name} (Q{question}{suffixes[kind]} already matched by {chosen.name})")
    return index


# --------------------------------------------------------------------------------------------- the loader
def load_cmdc(
    data_dir: str | os.PathLike,
    *,
    labels_csv: str | os.PathLike = LABELS_CSV,
    id_column: str = ID_COLUMN,
    item_columns: Sequence[str] = ITEM_COLUMNS,
    total_column: str | None = TOTAL_COLUMN,
    gender_column: str | None = GENDER_COLUMN,
    question_map: str | os.PathLike | Mapping | None = None,
    split: str = "authors",
    fold: int | None = None,
    dev_fraction: float = 0.0,
    audio_pattern: str | None = AUDIO_PATTERN,
    video_pattern: str | None = VIDEO_PATTERN,
    audio_dim: int | None = AUDIO_DIM,
    video_dim: int | None = OPENFACE_DIM,
    require_audio: bool = False,
    require_video: bool = False,
    on_error: str = "raise",
    rationales_path: str | os.PathLike | None = None,
    return_report: bool = False,
) -> datasets.DatasetDict | tuple[datasets.DatasetDict, LoadReport]:
    """CMDC: one row per (subject, PHQ-9 item), ids ``HC01``..``HC52``, ``MDD01``..``MDD26``.

    Labels: ``labels_csv`` (relative to ``data_dir`` or absolute) with a subject-id column ``id_column``
    (``HC01``/``hc1``/``MDD_07`` all match) and nine item columns ``item_columns`` (scores 0-3, PHQ-9
    order); ``total_column`` is optional (else the item sum); ``gender_column`` optional. Column names
    match case- and space-insensitively.

    Each item's transcript holds only the questions ``question_map`` assigns to it (``"Q4: ...\\nQ6: ..."``)
    and its audio/video files are those questions' files; an item with no questions (or none present)
    falls back to the whole interview. Per-question files: ``Q<n>.txt``, audio ``audio_pattern``
    (default ``Q{q}_HuBERT.npy``, 768-d), video ``video_pattern`` (default the OpenFace ``Q{q}.csv``,
    709-d; ``"Q{q}.npy"`` with ``video_dim=768`` selects the per-question vectors). Subjects without video
    keep empty ``video_files`` (a missing modality) unless ``require_video``.

    ``split``: ``"authors"`` or ``"fold1"``..``"fold5"`` (``fold=k`` is the same as ``split=f"fold{k}"``),
    see :func:`cmdc_protocol_split`; dev is empty unless ``dev_fraction`` > 0.
    """
    check_on_error(on_error)
    if fold is not None:
        split = f"fold{int(fold)}"
    if len(item_columns) != 9:
        raise ValueError(f"item_columns must name the nine PHQ-9 item columns in order, got {len(item_columns)}")
    suffixes = {"transcript": question_suffix(TRANSCRIPT_PATTERN, "transcript pattern")}
    if audio_pattern is not None:
        suffixes["audio"] = question_suffix(audio_pattern, "audio_pattern")
    if video_pattern is not None:
        suffixes["video"] = question_suffix(video_pattern, "video_pattern")
    if len({_IRREGULAR.sub("", s).lower() for s in suffixes.values()}) != len(suffixes):
        raise ValueError(f"transcript, audio and video file names must differ, got {suffixes}")
    root = existing_dir(data_dir)
    mapping = load_question_map(question_map)
    report, notes = LoadReport("cmdc"), Notes()
    folders = subject_folders(root, notes)

    labels_path = Path(labels_csv).expanduser()
    if not labels_path.is_absolute() and ((root / labels_path).is_file() or not labels_path.is_file()):
        labels_path = root / labels_path  # relative: inside data_dir first, then the working directory
    if not labels_path.is_file():
        raise ValueError(
            f"{labels_path}: CMDC label file not found. Expected a CSV with a subject-id column {id_column!r} "
            f"(HC01 ... MDD26) and PHQ-9 item columns {list(item_columns)} (0-3); pass labels_csv=, id_column=, "
            "item_columns= to match yours"
        )
    table = read_table(labels_path, [id_column], canon=cmdc_subject_id)
    columns = [find_column(table.header, [name]) for name in item_columns]
    if None in columns:
        missing = [name for name, col in zip(item_columns, columns, strict=True) if col is None]
        raise ValueError(f"{labels_path}: item column(s) {missing} not found (header: {table.header})")
    total_col = find_column(table.header, [total_column]) if total_column else None
    gender_col = find_column(table.header, [gender_column]) if gender_column else None
    unmatched = [pid for pid in table.order if cmdc_subject_id(pid) is None]
    if unmatched:
        notes.add(f"{labels_path}: ids not of the form HC<n>/MDD<n>, ignored: {unmatched[:20]}")

    protocol_ids = [f"{g}{n:02d}" for g, size in GROUP_SIZES.items() for n in range(1, size + 1)]
    assignment = cmdc_protocol_split(sorted(set(protocol_ids) | set(folders), key=natural_key), split, dev_fraction)
    for subject in sorted(set(folders) - set(assignment), key=natural_key):
        notes.add(f"{folders[subject]}: outside the {split} protocol (HC01-52, MDD01-26), left out")
    for subject in assignment:
        if subject not in folders:
            notes.add(f"subject of the {split} protocol without a folder under {root} (left out)", subject)

    items_without_questions = [i for i in range(1, 10) if not mapping.get(i)]
    if items_without_questions:
        notes.add(f"CMDC items {items_without_questions} have no mapped questions: scored from the whole interview")

    rows: list[dict[str, Any]] = []
    for subject in sorted(assignment, key=natural_key):
        if subject not in folders:
            continue
        folder = folders[subject]
        try:
            label_row = table.row(subject)
            if label_row is None:
                raise Broken(labels_path, f"subject folder {folder} has no row in the label file")
            labels = {
                i: parse_score(label_row[col], f"item label {col}", 0, 3, labels_path)
                for i, col in enumerate(columns, start=1)
            }
            total = parse_score(label_row[total_col], total_col, 0, 27, labels_path) if total_col else None
            if total is None and all(v is not None for v in labels.values()):
                total = sum(labels.values())
            files = index_questions(folder, suffixes, subject, notes)
            texts = {q: plain_text(path) for q, path in files["transcript"].items()}
            if not texts:
                raise Broken(folder, "no Q<n>.txt transcripts")
            audio = {q: checked_feature(p, audio_dim, "audio") for q, p in files.get("audio", {}).items()}
            video = {q: checked_feature(p, video_dim, "video") for q, p in files.get("video", {}).items()}
            for modality, found, required, pattern in (
                ("audio", audio, require_audio, audio_pattern),
                ("video", video, require_video, video_pattern),
            ):
                if pattern is None:
                    continue
                lacking = sorted(q for q in texts if q not in found)
                if lacking and required:
                    raise Broken(folder / pattern.format(q=lacking[0]), f"missing {modality} feature file")
                if len(lacking) == len(texts):
                    notes.add(f"no {modality} files {pattern} (missing modality, empty {modality}_files)", subject)
                elif lacking:
                    notes.add(f"{subject}: no {modality} file for question(s) {lacking}")
        except Broken as error:
            fail(report, on_error, subject, error)
            continue
        note_total_mismatch(labels, total, subject, notes)
        questions: dict[int, list[int]] = {}
        for item in PHQ9_ITEMS:
            mapped = mapping.get(item.index) or []
            present = [q for q in mapped if q in texts]
            if len(present) < len(mapped):
                fallback = "" if present else ": whole interview used"
                absent = [f"Q{q}" for q in mapped if q not in texts]
                mapped_names = [f"Q{q}" for q in mapped]
                notes.add(
                    f"{subject}: item {item.index} maps to {mapped_names} but {absent} have no transcript{fallback}"
                )
            questions[item.index] = present or sorted(texts)
        gender = (label_row.get(gender_col) or "").strip() or None if gender_col else None
        rows += participant_rows(
            participant_id=subject,
            items=PHQ9_ITEMS,
            transcript=lambda i, t=texts, qs=questions: "\n".join(f"Q{q}: {t[q]}" for q in qs[i]),
            labels=labels,
            total=total,
            audio=lambda i, a=audio, qs=questions: [a[q] for q in qs[i] if q in a],
            video=lambda i, v=video, qs=questions: [v[q] for q in qs[i] if q in v],
            split=assignment[subject],
            gender=gender,
            corpus="cmdc",
        )
    return finish_load(rows, rationales_path, report, notes, return_report)
