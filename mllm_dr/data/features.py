"""The one reader of feature files: ``.npy`` (memory-mapped, never pickled), MATLAB ``.mat``
(variable ``feature``; v7.3/HDF5 through h5py) and OpenFace CSVs, plus the one function that gives a
dataset row's features to the model (:func:`row_features`: the feature cache's frames, or the raw
files' frames through the processor's frame policy)."""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .report import Broken, Notes

OPENFACE_META_COLUMNS = ("frame", "face_id", "timestamp", "confidence", "success")


def _h5py_or_broken(path: Path):
    try:
        import h5py
    except ImportError:
        raise Broken(
            path,
            "MATLAB v7.3 (HDF5) file: install h5py to read it (pip install h5py), or re-save it with save(..., '-v7')",
        ) from None
    return h5py


def _refuse_empty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise Broken(path, "empty file (0 bytes: an interrupted copy?)")


def _mat_errors() -> tuple[type[Exception], ...]:
    """What scipy raises for a damaged ``.mat`` (an empty or zero-filled file: ``MatReadError``)."""
    from scipy.io.matlab import MatReadError

    return (ValueError, OSError, TypeError, EOFError, MatReadError)


def _mat_shape(path: Path) -> tuple[int, ...]:
    from scipy.io import whosmat

    try:
        variables = whosmat(str(path))
    except NotImplementedError:  # MATLAB v7.3 = HDF5
        h5py = _h5py_or_broken(path)
        with h5py.File(path, "r") as handle:
            if "feature" not in handle:
                raise Broken(path, f"no variable 'feature' (found: {sorted(handle.keys())})") from None
            return tuple(reversed(handle["feature"].shape))  # MATLAB is column-major
    except _mat_errors() as error:
        raise Broken(path, f"not a readable MATLAB .mat file ({error})") from None
    for name, shape, _cls in variables:
        if name == "feature":
            return tuple(shape)
    raise Broken(path, f"no variable 'feature' (found: {[v[0] for v in variables]})")


def _shape(path: Path) -> tuple[int | None, int]:
    """``(frames, dim)`` read cheaply: the ``.npy`` header (memory map), ``whosmat`` for ``.mat``, the
    header row for OpenFace CSVs (frames unknown there: ``None``)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        shape = open_feature(path).shape  # a memory map: only the header is read
    elif suffix == ".mat":
        _refuse_empty(path)
        shape = _mat_shape(path)
    elif suffix in (".csv", ".txt"):
        try:
            with path.open("r", encoding="utf-8-sig", newline="") as handle:
                header = next(csv.reader(handle), [])
        except (UnicodeDecodeError, csv.Error) as error:
            raise Broken(path, f"unreadable CSV header ({error})") from None
        columns = [c.strip() for c in header if c.strip().lower() not in OPENFACE_META_COLUMNS]
        if not columns:
            raise Broken(path, "feature CSV has no feature columns in its header")
        shape = (None, len(columns))
    else:
        raise Broken(path, f"unsupported feature file type {suffix!r} (expected .npy, .mat or OpenFace .csv)")
    if len(shape) != 2:
        raise Broken(path, f"feature array must be 2-D (frames, dim), got shape {tuple(shape)}")
    if shape[0] == 0:
        raise Broken(path, "feature array has no frames")
    return shape[0], int(shape[1])


def feature_shape(path: str | os.PathLike) -> tuple[int | None, int]:
    """``(frames, dim)`` of a feature file without reading its data (frames is ``None`` for CSV)."""
    try:
        return _shape(Path(path))
    except Broken as error:
        raise ValueError(str(error)) from None


def _read_mat(path: Path) -> np.ndarray:
    from scipy.io import loadmat

    try:
        content = loadmat(str(path), variable_names=["feature"])
    except NotImplementedError:
        h5py = _h5py_or_broken(path)
        with h5py.File(path, "r") as handle:
            if "feature" not in handle:
                raise Broken(path, f"no variable 'feature' (found: {sorted(handle.keys())})") from None
            return np.asarray(handle["feature"][()]).T
    except _mat_errors() as error:
        raise Broken(path, f"not a readable MATLAB .mat file ({error})") from None
    if "feature" not in content:
        raise Broken(path, "no variable 'feature' in the .mat file")
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
        raise Broken(path, f"not UTF-8 text ({error})") from None
    except ValueError as error:
        raise Broken(path, f"ragged or non-numeric CSV (line numbers after the header line): {error}") from None
    keep = [i for i, name in enumerate(header) if name.lower() not in OPENFACE_META_COLUMNS]
    if values.shape[0] == 0 or not keep:
        raise Broken(path, f"no feature values ({values.shape[0]} data rows, {len(keep)} feature columns)")
    if values.shape[1] != len(header):
        raise Broken(path, f"ragged CSV: rows have {values.shape[1]} fields, the header has {len(header)}")
    return values[:, keep] if len(keep) < len(header) else values


def open_feature(path: Path) -> np.ndarray:
    """The frames x dim array (raises :class:`Broken`); ``.npy`` stays memory-mapped so a frame policy
    reads only what it keeps."""
    if not path.is_file():
        raise Broken(path, "missing file")
    _refuse_empty(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        with path.open("rb") as handle:
            if handle.read(6) != b"\x93NUMPY":
                raise Broken(path, "not a .npy file (no NumPy header: a damaged or zero-filled copy?)")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise Broken(path, f"not a plain numeric .npy array (pickled objects are refused) ({error})") from None
    elif suffix == ".mat":
        array = _read_mat(path)
    elif suffix in (".csv", ".txt"):
        array = _read_openface_csv(path)
    else:
        raise Broken(path, f"unsupported feature file type {suffix!r} (expected .npy, .mat or OpenFace .csv)")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise Broken(path, f"feature array must be 2-D (frames, dim), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise Broken(path, f"feature array must be real numbers, got dtype {array.dtype}")
    return array


def open_sequence(paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """The frames of one or more feature files concatenated along frames (raises :class:`Broken`)."""
    arrays = []
    for path in paths:
        array = open_feature(Path(path))
        if arrays and array.shape[1] != arrays[0].shape[1]:
            raise Broken(path, f"feature width {array.shape[1]} differs from {paths[0]}'s {arrays[0].shape[1]}")
        arrays.append(array)
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)


def read_features(paths: Sequence[str | os.PathLike], as_float32: bool = False) -> np.ndarray | None:
    """The frames of one or more feature files, concatenated along frames (a CMDC item reads the
    files of its questions); ``None`` for an empty list, i.e. a missing modality.

    One ``.npy`` file comes back as its memory map (nothing is read until used); ``as_float32``
    returns a float32 array in memory. Raises ``ValueError`` naming the file.
    """
    if not paths:
        return None
    try:
        array = open_sequence(paths)
    except Broken as error:
        raise ValueError(str(error)) from None
    return np.asarray(array, dtype=np.float32) if as_float32 else array


def read_feature_file(path: str | os.PathLike) -> np.ndarray:
    """Reads one feature file as a float32 ``(frames, dim)`` array.

    ``.npy``: ``np.load(allow_pickle=False)`` (pickles are refused; a 1-D vector becomes one frame);
    ``.mat``: variable ``feature`` (MATLAB v7.3/HDF5 needs h5py); OpenFace ``.csv``: meta columns
    (frame, face_id, timestamp, confidence, success) dropped, header spaces stripped.
    """
    return read_features([path], as_float32=True)


def checked_feature(path: Path, expected_dim: int | None, modality: str) -> str:
    """``path`` as an absolute path after checking its width (raises :class:`Broken`)."""
    _frames, dim = _shape(path)
    if expected_dim is not None and dim != expected_dim:
        raise Broken(path, f"wrong {modality} feature dimension: expected (frames, {expected_dim}), got width {dim}")
    return os.path.abspath(path)


def feature_reference(
    folder: Path,
    pattern: str | None,
    participant_id: str,
    expected_dim: int | None,
    required: bool,
    modality: str,
    notes: Notes,
) -> list[str]:
    """``[absolute path]`` of a participant-level feature file, ``[]`` when the modality is missing."""
    if pattern is None:
        return []
    path = folder / pattern.format(id=participant_id)
    if not path.is_file():
        if required:
            raise Broken(path, f"missing {modality} feature file")
        notes.add(f"no {modality} feature file {pattern} (missing modality, empty {modality}_files)", participant_id)
        return []
    return [checked_feature(path, expected_dim, modality)]


# ----------------------------------------------------------------------------- rows -> model frames
def feature_key(row: Mapping[str, Any], modality: str) -> tuple[str, tuple[str, ...]]:
    """What identifies a row's feature sequence of ``modality``: its cache file once a cache was
    built, else its source files (a participant's items share it)."""
    if f"{modality}_cache" in row:
        cached = row[f"{modality}_cache"]
        return (modality, (cached,) if cached else ())
    return (modality, tuple(row.get(f"{modality}_files") or ()))


def row_features(row: Mapping[str, Any], modality: str, processor: Any) -> np.ndarray | None:
    """The frames of ``modality`` that reach the LQ-former for a dataset row, ``None`` when missing.

    Rows with a feature cache (:func:`mllm_dr.data.build_feature_cache`) hold frames the frame
    policy already shortened; the policy recorded with them must be the processor's. Rows without
    one read their source files and go through ``processor.reduce_frames`` here. Either way the
    policy runs once: pass the result to the processor with ``frames_reduced=True``.
    """
    if f"{modality}_cache" in row:
        path = row[f"{modality}_cache"]
        if not path:
            return None
        if not row.get(f"{modality}_cache_policy"):
            raise ValueError(
                f"participant {row.get('participant_id')}: the row names a {modality} cache file ({path}) but not "
                f"the frame policy its frames went through ({modality}_cache_policy): build the cache with "
                "mllm_dr.data.build_feature_cache"
            )
        recorded = json.loads(row[f"{modality}_cache_policy"])
        expected = processor.frame_settings(modality)
        if recorded != expected:
            raise ValueError(
                f"participant {row.get('participant_id')}: the {modality} feature cache {path} holds frames "
                f"shortened with {recorded}, the model's processor uses {expected}: rebuild the cache "
                "(build_feature_cache with this processor)"
            )
        return read_features([path])
    array = read_features(row.get(f"{modality}_files") or [])
    return None if array is None else processor.reduce_frames(modality, array)
