"""Loaders for the real on-disk layouts of E-DAIC-WOZ, DAIC-WOZ and CMDC, and a per-file feature cache.

Neither corpus can be downloaded (both need a signed licence), so the loaders follow the published
layouts (``/work/shared/reference/datasets.md``) and read every file defensively: anything broken is
reported naming participant, file and problem, and ``on_error`` decides whether that raises
(``"raise"``, default) or leaves the participant out with a logged summary (``"skip"``). Nothing is
dropped silently.

Every loader returns a :class:`datasets.DatasetDict` with splits ``train``, ``dev`` and ``test`` and ONE
ROW PER (participant, PHQ item) with the columns of :data:`ROW_FEATURES`. Rows only *reference* feature
files (absolute paths); arrays are never copied into rows. :func:`build_feature_cache` converts each
referenced file once (frame policy applied, cast to float16) into a memory-mappable ``.npy`` and
:func:`load_cached_features` reads them back lazily.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from configuration_mllm_dr import FRAME_POLICIES
from processing_mllm_dr import PHQ8_ITEMS, PHQ9_ITEMS, PhqItem, apply_frame_policy
from rationales import load_rationales

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
ON_ERROR = ("raise", "skip")

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
CACHE_COLUMNS = ("audio_cache", "video_cache")

# Expected feature widths (frames x dim). ``None`` anywhere means "do not check".
AUDIO_DIM = 768  # HuBERT-base; the authors' own E-DAIC features were 1024 (HuBERT-large)
RESNET_DIM = 2048  # E-DAIC <ID>_CNN_ResNet.mat
EDAIC_OPENFACE_DIM = 49  # 6 pose + 8 gaze + 17 AU_r + 18 AU_c after dropping frame/timestamp/confidence/success
CMDC_OPENFACE_DIM = 709  # 714 OpenFace 2.x columns minus frame, face_id, timestamp, confidence, success
OPENFACE_META_COLUMNS = ("frame", "face_id", "timestamp", "confidence", "success")

# E-DAIC (and, if extracted into the same place, DAIC-WOZ) feature files relative to a participant folder.
EDAIC_AUDIO_PATTERN = "features/{id}_HuBERT.npy"
EDAIC_VISUALS: dict[str, tuple[str | None, int | None]] = {
    "resnet": ("features/{id}_CNN_ResNet.mat", RESNET_DIM),
    "openface": ("features/{id}_OpenFace2.1.0_Pose_gaze_AUs.csv", EDAIC_OPENFACE_DIM),
    "none": (None, None),
}

# CMDC: per-question files inside HC/HCxx and MDD/MDDxx. The audio feature name is ours (the corpus ships
# only Q<n>.wav): whatever extracts HuBERT features per question must write Q<n>_HuBERT.npy beside the wav.
CMDC_TRANSCRIPT_PATTERN = "Q{q}.txt"
CMDC_AUDIO_PATTERN = "Q{q}_HuBERT.npy"
CMDC_VIDEO_PATTERN = "Q{q}.csv"
CMDC_LABELS_CSV = "labels.csv"
CMDC_ID_COLUMN = "subject_id"
CMDC_ITEM_COLUMNS = tuple(f"PHQ9_{i}" for i in range(1, 10))
CMDC_TOTAL_COLUMN = "PHQ9_Total"
CMDC_GENDER_COLUMN = "gender"
CMDC_QUESTION_MAP = Path(__file__).resolve().parent / "data" / "cmdc_question_map.json"
CMDC_GROUP_SIZES = {"HC": 52, "MDD": 26}
# The authors' fixed split: train HC01-40 + MDD01-20, test HC41-52 + MDD21-26 (no dev set).
CMDC_AUTHORS_TRAIN = {"HC": range(1, 41), "MDD": range(1, 21)}
CMDC_NUM_FOLDS = 5

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
_MISSING_VALUES = {"", "nan", "na", "n/a", "none", "null"}
_CACHE_FORMAT = 1


# --------------------------------------------------------------------------------------------- reporting
@dataclass(frozen=True)
class Problem:
    """One broken-data finding: which participant, which file, what is wrong."""

    participant_id: str
    path: str
    problem: str

    def __str__(self) -> str:
        return f"participant {self.participant_id}: {self.path}: {self.problem}"


@dataclass
class LoadReport:
    """What a loader left out (``skipped``) and what it noticed without leaving anything out (``notes``)."""

    corpus: str
    skipped: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def skipped_participants(self) -> list[str]:
        return sorted({p.participant_id for p in self.skipped}, key=_natural_key)

    def summary(self) -> str:
        lines = [f"{self.corpus}: {len(self.skipped_participants)} participant(s) skipped, {len(self.notes)} note(s)"]
        lines += [f"  skipped {problem}" for problem in self.skipped]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


class _Broken(Exception):
    """Internal: a participant-level data problem found in ``path``."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class _Notes:
    """Groups repetitive notes ("no video for 33 subjects") into one line each, so logs stay readable."""

    def __init__(self) -> None:
        self.grouped: dict[str, list[str]] = defaultdict(list)
        self.single: list[str] = []

    def add(self, message: str, participant_id: str | None = None) -> None:
        if participant_id is None:
            self.single.append(message)
        else:
            self.grouped[message].append(participant_id)

    def lines(self) -> list[str]:
        out = list(self.single)
        for message, ids in self.grouped.items():
            ids = sorted(set(ids), key=_natural_key)
            shown = ", ".join(ids[:20]) + (f", ... ({len(ids) - 20} more)" if len(ids) > 20 else "")
            out.append(f"{message}: {len(ids)} participant(s): {shown}")
        return out


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def _fail(report: LoadReport, on_error: str, participant_id: str, error: _Broken) -> None:
    problem = Problem(participant_id, error.path, error.problem)
    if on_error == "raise":
        raise ValueError(str(problem)) from None
    report.skipped.append(problem)


def _finish(report: LoadReport, notes: _Notes) -> None:
    report.notes.extend(notes.lines())
    if report.skipped or report.notes:
        logger.warning("%s", report.summary())


# --------------------------------------------------------------------------------------------- small helpers
def _natural_key(text: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(text)))


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _canon_pid(value: str) -> str:
    """``" 300 "``/``"300.0"`` -> ``"300"``: ids written by spreadsheets or pandas still match folders."""
    value = value.strip()
    if re.fullmatch(r"\d+\.0*", value):
        return value.split(".")[0]
    return value


def _abs(path: Path) -> str:
    return os.path.abspath(path)


def _existing_dir(data_dir: str | os.PathLike) -> Path:
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise ValueError(f"corpus folder {root} does not exist or is not a folder")
    return root


def _parse_score(value: str | None, what: str, low: int, high: int, path: str | os.PathLike) -> int | None:
    """An integer score in ``[low, high]``; blank/NaN is ``None`` (unlabelled), anything else is broken."""
    if value is None or value.strip().lower() in _MISSING_VALUES:
        return None
    try:
        number = float(value)
    except ValueError:
        raise _Broken(path, f"{what} is not a number: {value!r}") from None
    if not number.is_integer():
        raise _Broken(path, f"{what} is not an integer: {value!r}")
    if not low <= int(number) <= high:
        raise _Broken(path, f"{what} = {int(number)} is outside {low}-{high}")
    return int(number)


def _read_rows(
    path: Path, delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header (names stripped) and ``(line, fields)`` rows; blank lines dropped, trailing empty fields
    beyond the header trimmed (spreadsheet exports add them). Raggedness is left to the caller, who
    knows whom to blame."""
    if not path.is_file():
        raise _Broken(path, "missing file")
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
            try:
                header = [name.strip() for name in next(reader)]
            except StopIteration:
                raise _Broken(path, "empty file (no header)") from None
            rows = []
            for fields in reader:
                if not any(f.strip() for f in fields):
                    continue
                while len(fields) > len(header) and not fields[-1].strip():
                    fields = fields[:-1]
                rows.append((reader.line_num, fields))
    except UnicodeDecodeError as error:
        raise _Broken(path, f"not UTF-8 text ({error})") from None
    except csv.Error as error:
        raise _Broken(path, f"malformed CSV ({error})") from None
    return header, rows


def _ragged(line: int, fields: list[str], header: list[str]) -> str:
    return f"ragged CSV: line {line} has {len(fields)} fields, the header has {len(header)}"


def _find_column(header: Sequence[str], names: Iterable[str]) -> str | None:
    wanted = [_norm(name) for name in names]
    by_norm = {_norm(column): column for column in header}
    for name in wanted:
        if name in by_norm:
            return by_norm[name]
    return None


@dataclass
class _Table:
    """A label/split CSV keyed by participant id; rows that are ragged or duplicated are kept as problems
    of that participant (``bad``), not of the whole file."""

    path: Path
    header: list[str]
    rows: dict[str, dict[str, str]]
    order: list[str]
    bad: dict[str, str]

    def row(self, participant_id: str) -> dict[str, str] | None:
        if participant_id in self.bad:
            raise _Broken(self.path, self.bad[participant_id])
        return self.rows.get(participant_id)


def _read_table(path: Path, key_names: Sequence[str], canon: Callable[[str], str | None] = _canon_pid) -> _Table:
    try:
        header, raw = _read_rows(path)
    except _Broken as error:
        raise ValueError(str(error)) from None
    key = _find_column(header, key_names)
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
            bad[pid] = _ragged(line, fields, header)
            continue
        rows[pid] = dict(zip(header, fields, strict=True))
    return _Table(path, header, rows, order, bad)


def _phq8_item_columns(table: _Table) -> dict[int, str]:
    """Matches the eight PHQ-8 item columns by name (``PHQ_8NoInterest``, ``PHQ8_NoInterest``,
    ``PHQ8_1_NoInterest``, ``PHQ8_8_Psychomotor`` ...); an incomplete or ambiguous set is an error."""
    found: dict[int, list[str]] = defaultdict(list)
    for column in table.header:
        match = _PHQ8_COLUMN.fullmatch(_norm(column))
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


def _note_unlisted_folders(root: Path, listed: Iterable[str], notes: _Notes) -> None:
    """Participant folders that no split file lists are left out: say so (a mislabelled copy shows here)."""
    listed = set(listed)
    for base in (root / "data", root):
        if base.is_dir():
            for folder in base.glob("*_P"):
                if folder.is_dir() and folder.name[:-2] not in listed:
                    notes.add(f"<ID>_P folder under {base} listed in no split file, left out", folder.name[:-2])


def _participant_dir(root: Path, participant_id: str, listed_in: Path) -> Path:
    """``<root>/data/<ID>_P`` or ``<root>/<ID>_P``, descending into nested ``<ID>_P/<ID>_P`` copies."""
    name = f"{participant_id}_P"
    for base in (root / "data", root):
        folder = base / name
        if folder.is_dir():
            while (folder / name).is_dir():
                folder = folder / name
            return folder
    raise _Broken(
        listed_in, f"participant is listed here but has no folder {name} (looked in {root / 'data'} and {root})"
    )


# --------------------------------------------------------------------------------------------- feature files
def _feature_shape(path: Path) -> tuple[int | None, int]:
    """``(frames, dim)`` read cheaply: the ``.npy`` header (memory map), ``whosmat`` for ``.mat``, the
    header row for OpenFace CSVs (frames unknown there: ``None``)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as error:
            raise _Broken(path, f"not a plain numeric .npy array ({error})") from None
        shape = array.shape
        del array
        if len(shape) == 1:
            shape = (1, shape[0])
    elif suffix == ".mat":
        shape = _mat_shape(path)
    elif suffix in (".csv", ".txt"):
        try:
            with path.open("r", encoding="utf-8-sig", newline="") as handle:
                header = next(csv.reader(handle), [])
        except (UnicodeDecodeError, csv.Error) as error:
            raise _Broken(path, f"unreadable CSV header ({error})") from None
        columns = [c.strip() for c in header if c.strip().lower() not in OPENFACE_META_COLUMNS]
        if not columns:
            raise _Broken(path, "feature CSV has no feature columns in its header")
        shape = (None, len(columns))
    else:
        raise _Broken(path, f"unsupported feature file type {suffix!r} (expected .npy, .mat or OpenFace .csv)")
    if len(shape) != 2:
        raise _Broken(path, f"feature array must be 2-D (frames, dim), got shape {tuple(shape)}")
    if shape[0] == 0:
        raise _Broken(path, "feature array has no frames")
    return shape[0], int(shape[1])


def _mat_shape(path: Path) -> tuple[int, ...]:
    from scipy.io import whosmat

    try:
        variables = whosmat(str(path))
    except NotImplementedError:  # MATLAB v7.3 = HDF5
        h5py = _h5py_or_broken(path)
        with h5py.File(path, "r") as handle:
            if "feature" not in handle:
                raise _Broken(path, f"no variable 'feature' (found: {sorted(handle.keys())})") from None
            return tuple(reversed(handle["feature"].shape))  # MATLAB is column-major
    except (ValueError, OSError, TypeError) as error:
        raise _Broken(path, f"not a readable MATLAB .mat file ({error})") from None
    for name, shape, _cls in variables:
        if name == "feature":
            return tuple(shape)
    raise _Broken(path, f"no variable 'feature' (found: {[v[0] for v in variables]})")


def _h5py_or_broken(path: Path):
    try:
        import h5py
    except ImportError:
        raise _Broken(
            path,
            "MATLAB v7.3 (HDF5) file: install h5py to read it (pip install h5py), or re-save it with save(..., '-v7')",
        ) from None
    return h5py


def feature_shape(path: str | os.PathLike) -> tuple[int | None, int]:
    """``(frames, dim)`` of a feature file without reading its data (frames is ``None`` for CSV)."""
    try:
        return _feature_shape(Path(path))
    except _Broken as error:
        raise ValueError(str(error)) from None


def _open_feature(path: Path) -> np.ndarray:
    """The frames x dim array; ``.npy`` stays memory-mapped so a frame policy reads only what it keeps."""
    if not path.is_file():
        raise _Broken(path, "missing file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as error:
            raise _Broken(path, f"not a plain numeric .npy array (pickled objects are refused) ({error})") from None
    elif suffix == ".mat":
        array = _read_mat(path)
    elif suffix in (".csv", ".txt"):
        array = _read_openface_csv(path)
    else:
        raise _Broken(path, f"unsupported feature file type {suffix!r} (expected .npy, .mat or OpenFace .csv)")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise _Broken(path, f"feature array must be 2-D (frames, dim), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise _Broken(path, f"feature array must be real numbers, got dtype {array.dtype}")
    return array


def _read_mat(path: Path) -> np.ndarray:
    from scipy.io import loadmat

    try:
        content = loadmat(str(path), variable_names=["feature"])
    except NotImplementedError:
        h5py = _h5py_or_broken(path)
        with h5py.File(path, "r") as handle:
            if "feature" not in handle:
                raise _Broken(path, f"no variable 'feature' (found: {sorted(handle.keys())})") from None
            return np.asarray(handle["feature"][()]).T
    except (ValueError, OSError, TypeError) as error:
        raise _Broken(path, f"not a readable MATLAB .mat file ({error})") from None
    if "feature" not in content:
        raise _Broken(path, "no variable 'feature' in the .mat file")
    return np.asarray(content["feature"])


def _read_openface_csv(path: Path) -> np.ndarray:
    """numpy's C ``loadtxt`` (pandas is ~10x slower on 714 short columns); it refuses ragged rows itself."""
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            header = [name.strip() for name in next(csv.reader(handle), [])]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "input contained no data": reported below
                values = np.loadtxt(handle, delimiter=",", dtype=np.float32, ndmin=2)
    except UnicodeDecodeError as error:
        raise _Broken(path, f"not UTF-8 text ({error})") from None
    except ValueError as error:
        raise _Broken(path, f"ragged or non-numeric CSV (line numbers after the header line): {error}") from None
    keep = [i for i, name in enumerate(header) if name.lower() not in OPENFACE_META_COLUMNS]
    if values.shape[0] == 0 or not keep:
        raise _Broken(path, f"no feature values ({values.shape[0]} data rows, {len(keep)} feature columns)")
    if values.shape[1] != len(header):
        raise _Broken(path, f"ragged CSV: rows have {values.shape[1]} fields, the header has {len(header)}")
    return values[:, keep] if len(keep) < len(header) else values


def read_feature_file(path: str | os.PathLike) -> np.ndarray:
    """Reads one feature file as a float32 ``(frames, dim)`` array.

    ``.npy``: ``np.load(allow_pickle=False)`` (pickles are refused; a 1-D vector becomes one frame);
    ``.mat``: variable ``feature`` (MATLAB v7.3/HDF5 needs h5py); OpenFace ``.csv``: meta columns
    (frame, face_id, timestamp, confidence, success) dropped, header spaces stripped.
    """
    try:
        return np.asarray(_open_feature(Path(path)), dtype=np.float32)
    except _Broken as error:
        raise ValueError(str(error)) from None


def _checked_feature(path: Path, expected_dim: int | None, modality: str) -> str:
    _frames, dim = _feature_shape(path)
    if expected_dim is not None and dim != expected_dim:
        raise _Broken(path, f"wrong {modality} feature dimension: expected (frames, {expected_dim}), got width {dim}")
    return _abs(path)


def _feature_ref(
    folder: Path,
    pattern: str | None,
    participant_id: str,
    expected_dim: int | None,
    required: bool,
    modality: str,
    notes: _Notes,
) -> list[str]:
    """``[absolute path]`` of a participant-level feature file, ``[]`` when the modality is missing."""
    if pattern is None:
        return []
    path = folder / pattern.format(id=participant_id)
    if not path.is_file():
        if required:
            raise _Broken(path, f"missing {modality} feature file")
        notes.add(f"no {modality} feature file {pattern} (missing modality, empty {modality}_files)", participant_id)
        return []
    return [_checked_feature(path, expected_dim, modality)]


# --------------------------------------------------------------------------------------------- rows
def _rows_for(
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


def _attach_rationales(rows: list[dict[str, Any]], rationales_path: str | os.PathLike | None, notes: _Notes) -> None:
    if rationales_path is None:
        return
    records = load_rationales(rationales_path)
    used = 0
    for row in rows:
        record = records.get((row["participant_id"], row["item_index"]))
        if record is None:
            continue
        used += 1
        row["rationale"] = record.rationale
        if row["label"] is not None and record.label != row["label"]:
            notes.add(
                f"{rationales_path}: rationale written for a different label than the corpus's", row["participant_id"]
            )
    missing = sum(1 for row in rows if row["label"] is not None and row["rationale"] is None)
    if missing:
        notes.add(f"{rationales_path}: {used} row(s) got a rationale; {missing} labelled row(s) have none")


def _to_dataset_dict(rows: list[dict[str, Any]]) -> datasets.DatasetDict:
    rows = sorted(rows, key=lambda r: (SPLITS.index(r["split"]), _natural_key(r["participant_id"]), r["item_index"]))
    out = {}
    for split in SPLITS:
        selected = [row for row in rows if row["split"] == split]
        columns = {name: [row[name] for row in selected] for name in ROW_FEATURES}
        out[split] = datasets.Dataset.from_dict(columns, features=ROW_FEATURES)
    return datasets.DatasetDict(out)


def _split_membership(tables: Mapping[str, _Table]) -> dict[str, list[str]]:
    """Participant id -> the split files that list it (more than one is broken data)."""
    membership: dict[str, list[str]] = defaultdict(list)
    for split, table in tables.items():
        for pid in table.order:
            membership[pid].append(split)
    return membership


def _note_total_mismatch(labels: Mapping[int, int | None], total: int | None, pid: str, notes: _Notes) -> None:
    known = [v for v in labels.values() if v is not None]
    if total is not None and len(known) == len(labels) and sum(known) != total:
        notes.add("item scores do not add up to the PHQ total (both kept as given)", pid)


def _done(dataset_dict: datasets.DatasetDict, report: LoadReport, return_report: bool):
    return (dataset_dict, report) if return_report else dataset_dict


# --------------------------------------------------------------------------------------------- E-DAIC-WOZ
def _edaic_transcript(path: Path) -> str:
    """All ``Text`` fields joined by newlines (E-DAIC's ASR transcript has no speaker column)."""
    header, rows = _read_rows(path)
    text_column = _find_column(header, ["Text"])
    if text_column is None:
        raise _Broken(path, f"no Text column (expected Start_Time,End_Time,Text,Confidence; header: {header})")
    index = header.index(text_column)
    lines = []
    for line, fields in rows:
        if len(fields) != len(header):
            raise _Broken(path, _ragged(line, fields, header))
        if fields[index].strip():
            lines.append(fields[index].strip())
    if not lines:
        raise _Broken(path, "transcript has no text")
    return "\n".join(lines)


def load_edaic(
    data_dir: str | os.PathLike,
    *,
    visual: str = "resnet",
    on_error: str = "raise",
    rationales_path: str | os.PathLike | None = None,
    audio_pattern: str | None = EDAIC_AUDIO_PATTERN,
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
    _check_on_error(on_error)
    if visual not in EDAIC_VISUALS:
        raise ValueError(f"visual must be one of {sorted(EDAIC_VISUALS)}, got {visual!r}")
    default_pattern, default_dim = EDAIC_VISUALS[visual]
    video_pattern = video_pattern if video_pattern is not None else default_pattern
    video_dim = video_dim if video_dim is not None else default_dim
    root = _existing_dir(data_dir)
    report, notes = LoadReport("edaic"), _Notes()

    key = ["Participant_ID", "Participant"]
    split_tables = {split: _read_table(_require_label_file(root, f"{split}_split.csv"), key) for split in SPLITS}
    item_sources: list[tuple[_Table, dict[int, str]]] = []
    for name in ("Detailed_PHQ8_Labels.csv", "detailed_lables.csv"):
        path = _find_label_file(root, name)
        if path is None:
            consequence = "test-set item labels" if name == "detailed_lables.csv" else "train/dev item labels"
            notes.add(f"{name} not found in {root / 'labels'} or {root}: {consequence} are None; totals from PHQ_Score")
            continue
        table = _read_table(path, key)
        item_sources.append((table, _phq8_item_columns(table)))

    membership = _split_membership(split_tables)

    _note_unlisted_folders(root, membership, notes)
    rows: list[dict[str, Any]] = []
    for pid in sorted(membership, key=_natural_key):
        split = membership[pid][0]
        split_table = split_tables[split]
        try:
            if len(membership[pid]) > 1:
                raise _Broken(split_table.path, f"participant is listed in several split files: {membership[pid]}")
            split_row = split_table.row(pid) or {}
            folder = _participant_dir(root, pid, split_table.path)
            transcript = _edaic_transcript(folder / f"{pid}_Transcript.csv")
            labels: dict[int, int | None] = {item.index: None for item in PHQ8_ITEMS}
            total = _parse_score(
                split_row.get(_find_column(split_table.header, ["PHQ_Score", "PHQ8_Score"]) or ""),
                "PHQ_Score",
                0,
                24,
                split_table.path,
            )
            for table, columns in item_sources:
                label_row = table.row(pid)
                if label_row is None:
                    continue
                for item, column in columns.items():
                    value = _parse_score(label_row[column], f"item label {column}", 0, 3, table.path)
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
                    total_column = _find_column(table.header, ["PHQ_8Total", "PHQ8_Total", "PHQ8_Score"])
                    if total_column:
                        total = _parse_score(label_row[total_column], total_column, 0, 24, table.path)
            if total is None and all(v is not None for v in labels.values()):
                total = sum(labels.values())
            audio = _feature_ref(folder, audio_pattern, pid, audio_dim, require_audio, "audio", notes)
            video = _feature_ref(folder, video_pattern, pid, video_dim, require_video, "video", notes)
        except _Broken as error:
            _fail(report, on_error, pid, error)
            continue
        if all(v is None for v in labels.values()):
            notes.add(f"no item labels ({split} split)", pid)
        _note_total_mismatch(labels, total, pid, notes)
        gender_column = _find_column(split_table.header, ["Gender"])
        gender = (split_row.get(gender_column) or "").strip() or None if gender_column else None
        rows += _rows_for(
            participant_id=pid, items=PHQ8_ITEMS, transcript=lambda _i, t=transcript: t, labels=labels, total=total,
            audio=lambda _i, a=audio: list(a), video=lambda _i, v=video: list(v), split=split, gender=gender,
            corpus="edaic",
        )  # fmt: skip
    _attach_rationales(rows, rationales_path, notes)
    _finish(report, notes)
    return _done(_to_dataset_dict(rows), report, return_report)


def read_transcript(path: str | os.PathLike) -> str:
    """One interview's transcript as the text the model reads, whatever its format: an E-DAIC
    ``<ID>_Transcript.csv`` (``Start_Time,End_Time,Text,Confidence``), a DAIC-WOZ ``<ID>_TRANSCRIPT.csv``
    (tab-separated with speakers), or plain UTF-8 text (CMDC ``Q<n>.txt``, anything else)."""
    path = Path(path)
    try:
        first_line = path.read_text(encoding="utf-8-sig").split("\n", 1)[0]
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read the transcript ({error})") from None
    try:
        if "\t" in first_line and "speaker" in first_line.lower():
            return _daic_transcript(path)
        if path.suffix.lower() == ".csv" and "text" in first_line.lower():
            return _edaic_transcript(path)
        return _read_text(path)
    except _Broken as error:
        raise ValueError(str(error)) from None


# --------------------------------------------------------------------------------------------- DAIC-WOZ
DAIC_SPEAKERS = {"ellie": "Interviewer", "participant": "Participant"}


def _daic_transcript(path: Path) -> str:
    """``Interviewer: ...`` / ``Participant: ...`` lines; consecutive rows of one speaker are merged so the
    interviewer's questions stay visible as context without one line per utterance fragment."""
    header, rows = _read_rows(path, delimiter="\t", quoting=csv.QUOTE_NONE)
    speaker_column = _find_column(header, ["speaker"])
    value_column = _find_column(header, ["value"])
    if speaker_column is None or value_column is None:
        raise _Broken(path, f"expected tab-separated columns start_time, stop_time, speaker, value; header: {header}")
    s_index, v_index = header.index(speaker_column), header.index(value_column)
    turns: list[list[str]] = []
    for line, fields in rows:
        if len(fields) != len(header):
            raise _Broken(path, _ragged(line, fields, header))
        text = fields[v_index].strip()
        if not text:
            continue
        speaker = DAIC_SPEAKERS.get(fields[s_index].strip().lower(), fields[s_index].strip() or "Unknown")
        if turns and turns[-1][0] == speaker:
            turns[-1][1] += " " + text
        else:
            turns.append([speaker, text])
    if not turns:
        raise _Broken(path, "transcript has no text")
    return "\n".join(f"{speaker}: {text}" for speaker, text in turns)


def load_daic_woz(
    data_dir: str | os.PathLike,
    *,
    visual: str = "none",
    on_error: str = "raise",
    rationales_path: str | os.PathLike | None = None,
    audio_pattern: str | None = EDAIC_AUDIO_PATTERN,
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
    _check_on_error(on_error)
    if visual not in EDAIC_VISUALS:
        raise ValueError(f"visual must be one of {sorted(EDAIC_VISUALS)}, got {visual!r}")
    default_pattern, default_dim = EDAIC_VISUALS[visual]
    video_pattern = video_pattern if video_pattern is not None else default_pattern
    video_dim = video_dim if video_dim is not None else default_dim
    root = _existing_dir(data_dir)
    report, notes = LoadReport("daic"), _Notes()

    key = ["Participant_ID", "Participant"]
    test_path = _find_label_file(root, "full_test_split.csv")
    if test_path is None:
        test_path = _require_label_file(root, "test_split_Depression_AVEC2017.csv")
        notes.add(f"full_test_split.csv not found: test totals are None (read {test_path.name})")
    tables = {
        "train": _read_table(_require_label_file(root, "train_split_Depression_AVEC2017.csv"), key),
        "dev": _read_table(_require_label_file(root, "dev_split_Depression_AVEC2017.csv"), key),
        "test": _read_table(test_path, key),
    }
    item_columns = {split: _phq8_item_columns(tables[split]) for split in ("train", "dev")}
    membership = _split_membership(tables)

    _note_unlisted_folders(root, membership, notes)
    rows: list[dict[str, Any]] = []
    for pid in sorted(membership, key=_natural_key):
        split = membership[pid][0]
        table = tables[split]
        try:
            if len(membership[pid]) > 1:
                raise _Broken(table.path, f"participant is listed in several split files: {membership[pid]}")
            label_row = table.row(pid) or {}
            folder = _participant_dir(root, pid, table.path)
            transcript = _daic_transcript(folder / f"{pid}_TRANSCRIPT.csv")
            labels = {item.index: None for item in PHQ8_ITEMS}
            for item, column in item_columns.get(split, {}).items():
                labels[item] = _parse_score(label_row[column], f"item label {column}", 0, 3, table.path)
            total_column = _find_column(table.header, ["PHQ8_Score", "PHQ_Score", "PHQ8_Total"])
            total = _parse_score(label_row.get(total_column or ""), total_column or "total", 0, 24, table.path)
            if total is None and all(v is not None for v in labels.values()):
                total = sum(labels.values())
            audio = _feature_ref(folder, audio_pattern, pid, audio_dim, require_audio, "audio", notes)
            video = _feature_ref(folder, video_pattern, pid, video_dim, require_video, "video", notes)
        except _Broken as error:
            _fail(report, on_error, pid, error)
            continue
        _note_total_mismatch(labels, total, pid, notes)
        gender_column = _find_column(table.header, ["Gender"])
        gender = (label_row.get(gender_column) or "").strip() or None if gender_column else None
        rows += _rows_for(
            participant_id=pid, items=PHQ8_ITEMS, transcript=lambda _i, t=transcript: t, labels=labels, total=total,
            audio=lambda _i, a=audio: list(a), video=lambda _i, v=video: list(v), split=split, gender=gender,
            corpus="daic",
        )  # fmt: skip
    _attach_rationales(rows, rationales_path, notes)
    _finish(report, notes)
    return _done(_to_dataset_dict(rows), report, return_report)


# --------------------------------------------------------------------------------------------- CMDC
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
        if not match or not 1 <= int(match.group(1)) <= CMDC_NUM_FOLDS:
            raise ValueError(f"CMDC split must be 'authors' or 'fold1'..'fold{CMDC_NUM_FOLDS}', got {split!r}")
        fold = int(match.group(1))
    assignment: dict[str, str] = {}
    for subject in subject_ids:
        group, number = _cmdc_group(subject)
        subject = f"{group}{number:02d}"
        if not 1 <= number <= CMDC_GROUP_SIZES[group]:
            continue
        in_test = (number - 1) % CMDC_NUM_FOLDS + 1 == fold if fold else number not in CMDC_AUTHORS_TRAIN[group]
        assignment[subject] = "test" if in_test else "train"
    if dev_fraction > 0:
        for group in CMDC_GROUP_SIZES:
            train = sorted((s for s, v in assignment.items() if v == "train" and s.startswith(group)), key=_natural_key)
            size = min(len(train) - 1, round(dev_fraction * len(train)))  # train keeps one subject per group
            for subject in train[len(train) - size :] if size > 0 else []:
                assignment[subject] = "dev"
    return assignment


def load_question_map(source: str | os.PathLike | Mapping | None = None) -> dict[int, list[int]]:
    """CMDC item -> question numbers. ``None`` reads the shipped ``data/cmdc_question_map.json``; a path
    reads that file; a mapping is used directly. Accepts ``{"items": {"1": {"questions": [4, 6]}, ...}}``
    (the shipped form) or plain ``{"1": [4, 6], ...}``. An empty list means "whole interview"."""
    where = "question map"
    if source is None or isinstance(source, (str, os.PathLike)):
        path = Path(source) if source is not None else CMDC_QUESTION_MAP
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


def _index_questions(
    folder: Path, suffixes: Mapping[str, str], subject: str, notes: _Notes
) -> dict[str, dict[int, Path]]:
    """Per kind (``transcript``/``audio``/``video``): question number -> file. Names match leniently
    (``Q4-.txt``, ``q04.TXT``, ``Q4 _HuBERT.npy``); an exact name wins; every lenient or ignored match is
    reported."""
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


def _question_suffix(pattern: str, what: str) -> str:
    if not pattern.startswith("Q{q}"):
        raise ValueError(f"{what} must start with 'Q{{q}}' (e.g. 'Q{{q}}_HuBERT.npy'), got {pattern!r}")
    return pattern[len("Q{q}") :]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig").strip()
    except UnicodeDecodeError as error:
        raise _Broken(path, f"not UTF-8 text ({error})") from None


def load_cmdc(
    data_dir: str | os.PathLike,
    *,
    labels_csv: str | os.PathLike = CMDC_LABELS_CSV,
    id_column: str = CMDC_ID_COLUMN,
    item_columns: Sequence[str] = CMDC_ITEM_COLUMNS,
    total_column: str | None = CMDC_TOTAL_COLUMN,
    gender_column: str | None = CMDC_GENDER_COLUMN,
    question_map: str | os.PathLike | Mapping | None = None,
    split: str = "authors",
    fold: int | None = None,
    dev_fraction: float = 0.0,
    audio_pattern: str | None = CMDC_AUDIO_PATTERN,
    video_pattern: str | None = CMDC_VIDEO_PATTERN,
    audio_dim: int | None = AUDIO_DIM,
    video_dim: int | None = CMDC_OPENFACE_DIM,
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
    _check_on_error(on_error)
    if fold is not None:
        split = f"fold{int(fold)}"
    if len(item_columns) != 9:
        raise ValueError(f"item_columns must name the nine PHQ-9 item columns in order, got {len(item_columns)}")
    suffixes = {"transcript": _question_suffix(CMDC_TRANSCRIPT_PATTERN, "transcript pattern")}
    if audio_pattern is not None:
        suffixes["audio"] = _question_suffix(audio_pattern, "audio_pattern")
    if video_pattern is not None:
        suffixes["video"] = _question_suffix(video_pattern, "video_pattern")
    if len({_IRREGULAR.sub("", s).lower() for s in suffixes.values()}) != len(suffixes):
        raise ValueError(f"transcript, audio and video file names must differ, got {suffixes}")
    root = _existing_dir(data_dir)
    mapping = load_question_map(question_map)
    report, notes = LoadReport("cmdc"), _Notes()

    folders: dict[str, Path] = {}
    for group in CMDC_GROUP_SIZES:
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

    labels_path = Path(labels_csv).expanduser()
    if not labels_path.is_absolute() and ((root / labels_path).is_file() or not labels_path.is_file()):
        labels_path = root / labels_path  # relative: inside data_dir first, then the working directory
    if not labels_path.is_file():
        raise ValueError(
            f"{labels_path}: CMDC label file not found. Expected a CSV with a subject-id column {id_column!r} "
            f"(HC01 ... MDD26) and PHQ-9 item columns {list(item_columns)} (0-3); pass labels_csv=, id_column=, "
            "item_columns= to match yours"
        )
    table = _read_table(labels_path, [id_column], canon=cmdc_subject_id)
    columns = [_find_column(table.header, [name]) for name in item_columns]
    if None in columns:
        missing = [name for name, col in zip(item_columns, columns, strict=True) if col is None]
        raise ValueError(f"{labels_path}: item column(s) {missing} not found (header: {table.header})")
    total_col = _find_column(table.header, [total_column]) if total_column else None
    gender_col = _find_column(table.header, [gender_column]) if gender_column else None
    unmatched = [pid for pid in table.order if cmdc_subject_id(pid) is None]
    if unmatched:
        notes.add(f"{labels_path}: ids not of the form HC<n>/MDD<n>, ignored: {unmatched[:20]}")

    protocol_ids = [f"{g}{n:02d}" for g, size in CMDC_GROUP_SIZES.items() for n in range(1, size + 1)]
    assignment = cmdc_protocol_split(sorted(set(protocol_ids) | set(folders), key=_natural_key), split, dev_fraction)
    for subject in sorted(set(folders) - set(assignment), key=_natural_key):
        notes.add(f"{folders[subject]}: outside the {split} protocol (HC01-52, MDD01-26), left out")
    for subject in assignment:
        if subject not in folders:
            notes.add(f"subject of the {split} protocol without a folder under {root} (left out)", subject)

    items_without_questions = [i for i in range(1, 10) if not mapping.get(i)]
    if items_without_questions:
        notes.add(f"CMDC items {items_without_questions} have no mapped questions: scored from the whole interview")

    rows: list[dict[str, Any]] = []
    for subject in sorted(assignment, key=_natural_key):
        if subject not in folders:
            continue
        folder = folders[subject]
        try:
            label_row = table.row(subject)
            if label_row is None:
                raise _Broken(labels_path, f"subject folder {folder} has no row in the label file")
            labels = {
                i: _parse_score(label_row[col], f"item label {col}", 0, 3, labels_path)
                for i, col in enumerate(columns, start=1)
            }
            total = _parse_score(label_row[total_col], total_col, 0, 27, labels_path) if total_col else None
            if total is None and all(v is not None for v in labels.values()):
                total = sum(labels.values())
            files = _index_questions(folder, suffixes, subject, notes)
            texts = {q: _read_text(path) for q, path in files["transcript"].items()}
            if not texts:
                raise _Broken(folder, "no Q<n>.txt transcripts")
            audio = {q: _checked_feature(p, audio_dim, "audio") for q, p in files.get("audio", {}).items()}
            video = {q: _checked_feature(p, video_dim, "video") for q, p in files.get("video", {}).items()}
            for modality, found, required, pattern in (
                ("audio", audio, require_audio, audio_pattern),
                ("video", video, require_video, video_pattern),
            ):
                if pattern is None:
                    continue
                lacking = sorted(q for q in texts if q not in found)
                if lacking and required:
                    raise _Broken(folder / pattern.format(q=lacking[0]), f"missing {modality} feature file")
                if len(lacking) == len(texts):
                    notes.add(f"no {modality} files {pattern} (missing modality, empty {modality}_files)", subject)
                elif lacking:
                    notes.add(f"{subject}: no {modality} file for question(s) {lacking}")
        except _Broken as error:
            _fail(report, on_error, subject, error)
            continue
        _note_total_mismatch(labels, total, subject, notes)
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
        rows += _rows_for(
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
    _attach_rationales(rows, rationales_path, notes)
    _finish(report, notes)
    return _done(_to_dataset_dict(rows), report, return_report)


# --------------------------------------------------------------------------------------------- dispatch
LOADERS: dict[str, Callable[..., Any]] = {"edaic": load_edaic, "daic": load_daic_woz, "cmdc": load_cmdc}
_ALIASES = {"e-daic": "edaic", "e-daic-woz": "edaic", "edaic-woz": "edaic", "daic-woz": "daic", "daicwoz": "daic"}


def load_corpus(
    data_dir: str | os.PathLike, dataset_format: str, **kwargs: Any
) -> datasets.DatasetDict | tuple[datasets.DatasetDict, LoadReport]:
    """``dataset_format``: ``"edaic"``, ``"daic"`` or ``"cmdc"``; keyword arguments go to that loader."""
    name = _ALIASES.get(dataset_format.lower(), dataset_format.lower())
    if name not in LOADERS:
        raise ValueError(f"dataset_format must be one of {sorted(LOADERS)}, got {dataset_format!r}")
    return LOADERS[name](data_dir, **kwargs)


def concatenate_corpora(*dataset_dicts: datasets.DatasetDict) -> datasets.DatasetDict:
    """Split-wise concatenation of loaded corpora, refused when participant ids overlap: E-DAIC and
    DAIC-WOZ share sessions 300-492, and mixing them would put one person in train and test."""
    if not dataset_dicts:
        raise ValueError("concatenate_corpora needs at least one DatasetDict")
    seen: dict[str, int] = {}
    for position, dataset_dict in enumerate(dataset_dicts):
        ids = {pid for split in dataset_dict.values() for pid in split["participant_id"]}
        overlap = sorted((pid for pid in ids if pid in seen), key=_natural_key)
        if overlap:
            shown = ", ".join(overlap[:30]) + (" ..." if len(overlap) > 30 else "")
            raise ValueError(
                f"corpora #{seen[overlap[0]] + 1} and #{position + 1} share {len(overlap)} participant id(s): {shown}. "
                "E-DAIC-WOZ contains DAIC-WOZ sessions 300-492; mixing them leaks participants across splits. "
                "Use one of the two (or drop the shared sessions from one) before concatenating."
            )
        for pid in ids:
            seen[pid] = position
    names = [name for name in SPLITS if any(name in d for d in dataset_dicts)]
    names += sorted({name for d in dataset_dicts for name in d} - set(names))
    return datasets.DatasetDict(
        {name: datasets.concatenate_datasets([d[name] for d in dataset_dicts if name in d]) for name in names}
    )


# --------------------------------------------------------------------------------------------- feature cache
def _policy_settings(policy: str, max_frames: int, truncate_frames: int, pool_size: int) -> dict[str, Any]:
    """Only the settings a policy uses enter the cache key (changing pool_size never rebuilds uniform)."""
    if policy not in FRAME_POLICIES:
        raise ValueError(f"frame policy must be one of {FRAME_POLICIES}, got {policy!r}")
    if policy == "uniform":
        return {"policy": policy, "max_frames": int(max_frames)}
    if policy == "truncate_maxpool":
        return {"policy": policy, "truncate_frames": int(truncate_frames), "pool_size": int(pool_size)}
    return {"policy": policy}


def cache_path_for(source: str | os.PathLike, cache_dir: str | os.PathLike, settings: Mapping[str, Any]) -> Path:
    """The cache file of ``source``: its name hashes (absolute path, size, mtime, settings), so an edited
    source or other settings give a new file and an unchanged one is found again."""
    source = Path(os.path.abspath(source))
    stat = source.stat()
    key = json.dumps(
        {"path": str(source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "format": _CACHE_FORMAT, **settings},
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]
    return Path(cache_dir) / f"{source.stem}-{digest}.npy"


def _write_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Temp file in the same folder, fsync, ``os.replace``: a killed run never leaves a half-written cache file."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _convert(
    source: Path, destination: Path, settings: Mapping[str, Any], truncate_frames: int, pool_size: int, dtype: np.dtype
) -> None:
    array = _open_feature(source)
    reduced = apply_frame_policy(
        array,
        settings["policy"],
        settings.get("max_frames", 0),
        truncate_frames=truncate_frames,
        pool_size=pool_size,
    )
    reduced = np.asarray(reduced)
    with np.errstate(over="ignore"):  # reported just below, with the file's name
        out = reduced.astype(dtype)
    overflow = np.isinf(out) & np.isfinite(reduced)
    if overflow.any():
        raise _Broken(
            source,
            f"values up to {float(np.abs(reduced[overflow]).max()):.4g} overflow {dtype.name}; use dtype='float32'",
        )
    _write_npy_atomic(destination, np.ascontiguousarray(out))


def build_feature_cache(
    dataset_dict: datasets.DatasetDict,
    cache_dir: str | os.PathLike,
    *,
    audio_frame_policy: str = "uniform",
    audio_max_frames: int = 7000,
    video_frame_policy: str = "uniform",
    video_max_frames: int = 7000,
    truncate_frames: int = 21000,
    pool_size: int = 3,
    dtype: str = "float16",
    on_error: str = "raise",
    progress: bool | None = None,
    return_report: bool = False,
) -> datasets.DatasetDict | tuple[datasets.DatasetDict, LoadReport]:
    """Converts every referenced feature file ONCE into ``cache_dir`` and adds ``audio_cache`` /
    ``video_cache`` columns (lists parallel to ``audio_files`` / ``video_files``).

    Reading a 600 MB ``.mat`` or a 30k-row CSV for each of 8 items every epoch is too slow; a cached file
    holds the frame-policy output (``processing_mllm_dr.apply_frame_policy``) in ``dtype`` and is read
    memory-mapped by :func:`load_cached_features`. Files are written atomically (temp file + ``os.replace``)
    and skipped when already present, so an interrupted build resumes. A file that cannot be converted
    raises (``on_error="raise"``) or drops every participant that references it (``"skip"``, logged).
    Old cache files are never deleted (delete ``cache_dir`` to reclaim space).
    """
    _check_on_error(on_error)
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"dtype must be a floating type, got {dtype}")
    settings = {
        "audio": _policy_settings(audio_frame_policy, audio_max_frames, truncate_frames, pool_size),
        "video": _policy_settings(video_frame_policy, video_max_frames, truncate_frames, pool_size),
    }
    for value in settings.values():
        value["dtype"] = dtype.str
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    report, notes = LoadReport("feature cache"), _Notes()

    users: dict[tuple[str, str], set[str]] = defaultdict(set)
    for split in dataset_dict.values():
        for pid, audio, video in zip(split["participant_id"], split["audio_files"], split["video_files"], strict=True):
            for modality, files in (("audio", audio), ("video", video)):
                for source in files:
                    users[(modality, source)].add(pid)

    targets: dict[tuple[str, str], str] = {}
    failed: set[str] = set()
    jobs = sorted(users)
    try:
        from tqdm.auto import tqdm

        disable = None if progress is None else not progress  # None: only on a terminal
        jobs_iter: Iterable = tqdm(jobs, desc="feature cache", unit="file", disable=disable)
    except ImportError:
        jobs_iter = jobs
    written = 0
    for modality, source in jobs_iter:
        try:
            path = Path(source)
            if not path.is_file():
                raise _Broken(path, "missing file")
            destination = cache_path_for(path, cache_dir, settings[modality])
            if not destination.is_file():
                _convert(path, destination, settings[modality], truncate_frames, pool_size, dtype)
                written += 1
            targets[(modality, source)] = str(destination.resolve())
        except _Broken as error:
            who = sorted(users[(modality, source)], key=_natural_key)
            if on_error == "raise":
                raise ValueError(f"participant(s) {', '.join(who)}: {error.path}: {error.problem}") from None
            for pid in who:
                report.skipped.append(Problem(pid, error.path, error.problem))
            failed.update(who)
    notes.add(f"{written} file(s) converted, {len(targets) - written} already cached in {cache_dir}")

    out = {}
    for name, split in dataset_dict.items():
        split = split.remove_columns([c for c in CACHE_COLUMNS if c in split.column_names])
        if failed:
            keep = [i for i, pid in enumerate(split["participant_id"]) if pid not in failed]
            if len(keep) != len(split):
                split = split.select(keep)
        string_list = datasets.List(datasets.Value("string"))
        for column, modality, files_column in (
            ("audio_cache", "audio", "audio_files"),
            ("video_cache", "video", "video_files"),
        ):
            values = [[targets[(modality, s)] for s in files] for files in split[files_column]]
            split = split.add_column(column, values, feature=string_list)
        out[name] = split
    report.notes.extend(notes.lines())
    if report.skipped:
        logger.warning("%s", report.summary())
    else:
        logger.info("%s", report.summary())
    return _done(datasets.DatasetDict(out), report, return_report)


def load_cached_features(paths: Sequence[str | os.PathLike]) -> np.ndarray | None:
    """Memory-maps each cached ``.npy`` and concatenates them along frames (one file: the memory map
    itself, no copy); ``None`` for an empty list, i.e. a missing modality."""
    if not paths:
        return None
    arrays = []
    for path in paths:
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as error:
            raise ValueError(f"{path}: not a readable cached feature file ({error})") from None
        if array.ndim != 2:
            raise ValueError(f"{path}: cached features must be 2-D (frames, dim), got shape {array.shape}")
        if arrays and array.shape[1] != arrays[0].shape[1]:
            raise ValueError(f"{path}: feature width {array.shape[1]} differs from {paths[0]}'s {arrays[0].shape[1]}")
        arrays.append(array)
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)


__all__ = [
    "read_transcript",
    "AUDIO_DIM",
    "CMDC_OPENFACE_DIM",
    "EDAIC_OPENFACE_DIM",
    "RESNET_DIM",
    "ROW_FEATURES",
    "LoadReport",
    "Problem",
    "build_feature_cache",
    "cache_path_for",
    "cmdc_protocol_split",
    "cmdc_subject_id",
    "concatenate_corpora",
    "feature_shape",
    "load_cached_features",
    "load_cmdc",
    "load_corpus",
    "load_daic_woz",
    "load_edaic",
    "load_question_map",
    "read_feature_file",
]
