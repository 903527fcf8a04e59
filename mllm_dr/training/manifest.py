"""What a training run records about itself in ``run_manifest.json``: code, versions, seeds,
arguments, data fingerprints, truncated transcripts (the card is ``mllm_dr.cards``)."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from pathlib import Path
from typing import Any

import datasets

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def git_commit() -> str | None:
    """HEAD of the checkout this package runs from (an editable install); None for an installed wheel."""
    if not (PACKAGE_ROOT / "pyproject.toml").is_file():
        return None
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PACKAGE_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("mllm-dr", "torch", "transformers", "peft", "accelerate", "datasets", "evaluate", "safetensors", "numpy"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def file_fingerprint(path: str | Path | None) -> str | None:
    """SHA-256 of a file's bytes (None when there is no file)."""
    if path is None or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def truncation_summary(rows: datasets.Dataset, uses_transcript: bool) -> dict[str, Any]:
    """How many participants' transcripts exceed the token budget, and by how many tokens each (from
    ``tokenize_rows``' counts; only the participants that were cut are listed)."""
    if not uses_transcript or "transcript_truncated" not in rows.column_names:
        return {"participants": 0, "truncated": 0, "max_cut_tokens": 0, "cut_tokens": {}}
    cut: dict[str, int] = {}
    for pid, tokens in zip(rows["participant_id"], rows["transcript_truncated"], strict=True):
        cut[str(pid)] = max(cut.get(str(pid), 0), int(tokens))
    return {
        "participants": len(cut),
        "truncated": sum(tokens > 0 for tokens in cut.values()),
        "max_cut_tokens": max(cut.values(), default=0),
        "cut_tokens": {pid: tokens for pid, tokens in sorted(cut.items()) if tokens > 0},
    }
