"""The feature cache: each distinct feature sequence of a dataset (a participant's file, or a CMDC
item's question files) read once, shortened by its modality's frame policy, cast, and stored as a
memory-mappable ``.npy``; the rows then point at it.

This is where the frame policy runs for training and evaluation data (``reduce_frames`` of the
model's processor or config); :func:`mllm_dr.data.row_features` hands the cached frames to the
processor as already reduced, so the policy is applied exactly once, as on the prediction path
(raw file -> processor).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from processing_mllm_dr import MODALITIES, reduce_frames

from ..io import save_npy_atomic
from .features import open_sequence
from .report import Broken, LoadReport, Notes, Problem, check_on_error, natural_key
from .tables import replace_columns

logger = logging.getLogger("mllm_dr.data")

CACHE_FORMAT = 2  # 2: one file per feature sequence (files concatenated, then the frame policy)


def frame_settings_of(frames: Any) -> dict[str, dict[str, Any]]:
    """``{modality: frame policy settings}`` of an ``MllmDrProcessor`` or an ``MllmDrConfig``."""
    if hasattr(frames, "frame_settings"):
        return {m: frames.frame_settings(m) for m in MODALITIES}
    if all(hasattr(frames, f"{m}_config") for m in MODALITIES):
        return {m: getattr(frames, f"{m}_config").frame_settings() for m in MODALITIES}
    raise TypeError(f"expected an MllmDrProcessor or an MllmDrConfig for the frame policies, got {type(frames).__name__}")


def cache_path_for(
    sources: Iterable[str | os.PathLike], cache_dir: str | os.PathLike, settings: Mapping[str, Any]
) -> Path:
    """The cache file of a feature sequence: its name hashes (each source's absolute path, size and
    mtime, the settings), so an edited source or other settings give a new file and an unchanged one
    is found again."""
    described = []
    for source in sources:
        source = Path(os.path.abspath(source))
        stat = source.stat()
        described.append({"path": str(source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    key = json.dumps({"sources": described, "format": CACHE_FORMAT, **settings}, sort_keys=True)
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]
    return Path(cache_dir) / f"{Path(described[0]['path']).stem}-{digest}.npy"


def _require_files(sources: tuple[str, ...]) -> None:
    missing = [s for s in sources if not Path(s).is_file()]
    if missing:
        raise Broken(missing[0], "missing file")


def reduced_frames(sources: tuple[str, ...], settings: Mapping[str, Any]) -> np.ndarray:
    """A feature sequence's frames after its frame policy, checked finite (raises :class:`Broken`;
    call :func:`_require_files` first)."""
    reduced = np.asarray(reduce_frames(open_sequence(list(sources)), settings))
    finite = np.isfinite(reduced)
    if not finite.all():
        bad = int((~finite).any(axis=1).sum())
        raise Broken(sources[0], f"{bad} frame(s) contain NaN or inf")
    return reduced


def _convert(sources: tuple[str, ...], destination: Path, settings: Mapping[str, Any], dtype: np.dtype) -> None:
    reduced = reduced_frames(sources, settings)
    with np.errstate(over="ignore"):  # reported just below, with the file's name
        out = reduced.astype(dtype)
    overflow = np.isinf(out) & np.isfinite(reduced)
    if overflow.any():
        raise Broken(
            sources[0],
            f"values up to {float(np.abs(reduced[overflow]).max()):.4g} overflow {dtype.name}; use dtype='float32'",
        )
    save_npy_atomic(destination, out)


def _sequence_users(dataset_dict: datasets.DatasetDict) -> dict[tuple[str, tuple[str, ...]], set[str]]:
    """``{(modality, source files): participants}``: each distinct feature sequence, and who uses it."""
    users: dict[tuple[str, tuple[str, ...]], set[str]] = defaultdict(set)
    for split in dataset_dict.values():
        for pid, audio, video in zip(split["participant_id"], split["audio_files"], split["video_files"], strict=True):
            for modality, files in (("audio", audio), ("video", video)):
                if files:
                    users[(modality, tuple(files))].add(pid)
    return users


def _for_each_sequence(
    users: Mapping[tuple[str, tuple[str, ...]], set[str]],
    work: Callable[[str, tuple[str, ...]], None],
    on_error: str,
    report: LoadReport,
    progress: bool | None,
    desc: str,
) -> set[str]:
    """Runs ``work(modality, sources)`` once per sequence; a :class:`Broken` one raises naming its
    participants (``on_error="raise"``) or records them as skipped. Returns the skipped participants."""
    from tqdm.auto import tqdm

    failed: set[str] = set()
    disable = None if progress is None else not progress  # None: only on a terminal
    for modality, sources in tqdm(sorted(users), desc=desc, unit="sequence", disable=disable):
        try:
            work(modality, sources)
        except Broken as error:
            who = sorted(users[(modality, sources)], key=natural_key)
            if on_error == "raise":
                raise ValueError(f"participant(s) {', '.join(who)}: {error.path}: {error.problem}") from None
            for pid in who:
                report.skipped.append(Problem(pid, error.path, error.problem))
            failed.update(who)
    return failed


def drop_participants(dataset_dict: datasets.DatasetDict, participants: set[str]) -> datasets.DatasetDict:
    """``dataset_dict`` without the rows of ``participants``."""
    if not participants:
        return dataset_dict
    out = {}
    for name, split in dataset_dict.items():
        keep = [i for i, pid in enumerate(split["participant_id"]) if pid not in participants]
        out[name] = split.select(keep) if len(keep) != len(split) else split
    return datasets.DatasetDict(out)


def check_feature_sequences(
    dataset_dict: datasets.DatasetDict,
    frames: Any,
    *,
    on_error: str = "raise",
    progress: bool | None = None,
    return_report: bool = False,
) -> datasets.DatasetDict | tuple[datasets.DatasetDict, LoadReport]:
    """For corpora read without a cache: reads every feature sequence the rows reference once,
    through its modality's frame policy (``frames``: the model's processor or config), and checks
    that it is readable and finite, so that a broken file stops the run (``on_error="raise"``) or
    drops its participants (``"skip"``, recorded) before training or evaluation starts rather than
    in the middle of it."""
    check_on_error(on_error)
    policy = frame_settings_of(frames)
    report = LoadReport("feature check")
    users = _sequence_users(dataset_dict)

    def check(modality: str, sources: tuple[str, ...]) -> None:
        _require_files(sources)
        reduced_frames(sources, policy[modality])

    failed = _for_each_sequence(users, check, on_error, report, progress, "feature check")
    report.notes.append(f"{len(users)} feature sequence(s) checked: readable and finite after the frame policy")
    if report.skipped:
        logger.warning("%s", report.summary())
    result = drop_participants(dataset_dict, failed)
    return (result, report) if return_report else result


def build_feature_cache(
    dataset_dict: datasets.DatasetDict,
    cache_dir: str | os.PathLike,
    frames: Any,
    *,
    dtype: str = "float16",
    on_error: str = "raise",
    progress: bool | None = None,
    return_report: bool = False,
) -> datasets.DatasetDict | tuple[datasets.DatasetDict, LoadReport]:
    """Converts every feature sequence the rows reference ONCE into ``cache_dir`` and adds the columns
    ``audio_cache`` / ``video_cache`` (the cached file, None for a missing modality) and
    ``audio_cache_policy`` / ``video_cache_policy`` (the frame policy it was shortened with, JSON).

    ``frames`` is the model's ``MllmDrProcessor`` (or ``MllmDrConfig``): each modality's frame policy
    comes from it. Reading a 600 MB ``.mat`` or a 30k-row CSV for each of 8 items every epoch is too
    slow; a cached file holds the policy's output in ``dtype`` and is read memory-mapped. Files are
    written atomically and skipped when already present, so an interrupted build resumes. A sequence
    that cannot be converted (unreadable, NaN/inf frames, overflow) raises (``on_error="raise"``) or
    drops every participant that references it (``"skip"``, recorded in the report). Old cache files
    are never deleted (delete ``cache_dir`` to reclaim space).
    """
    check_on_error(on_error)
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"dtype must be a floating type, got {dtype}")
    policy = frame_settings_of(frames)
    settings = {modality: {**value, "dtype": dtype.str} for modality, value in policy.items()}  # the cache key
    policies = {modality: json.dumps(value, sort_keys=True) for modality, value in policy.items()}  # what rows record
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    report, notes = LoadReport("feature cache"), Notes()

    users = _sequence_users(dataset_dict)
    targets: dict[tuple[str, tuple[str, ...]], str] = {}
    written = 0

    def convert(modality: str, sources: tuple[str, ...]) -> None:
        nonlocal written
        _require_files(sources)
        destination = cache_path_for(sources, cache_dir, settings[modality])
        if not destination.is_file():
            _convert(sources, destination, settings[modality], dtype)
            written += 1
        targets[(modality, sources)] = str(destination.resolve())

    failed = _for_each_sequence(users, convert, on_error, report, progress, "feature cache")
    notes.add(f"{written} sequence(s) converted, {len(targets) - written} already cached in {cache_dir}")

    out = {}
    text = datasets.Value("string")
    for name, split in drop_participants(dataset_dict, failed).items():
        rows = split.select_columns(["audio_files", "video_files"]).to_list()
        columns = {}
        for modality in MODALITIES:
            sources = [tuple(row[f"{modality}_files"]) for row in rows]
            columns[f"{modality}_cache"] = ([targets[(modality, files)] if files else None for files in sources], text)
            columns[f"{modality}_cache_policy"] = ([policies[modality]] * len(split), text)
        out[name] = replace_columns(split, columns)
    report.notes.extend(notes.lines())
    logger.log(logging.WARNING if report.skipped else logging.INFO, "%s", report.summary())
    result = datasets.DatasetDict(out)
    return (result, report) if return_report else result
