"""Where a result came from: the code's commit, the installed versions, a file's fingerprint.
Shared by the training manifest and prediction reports (importing it loads neither peft nor torch)."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


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


def transcript_cuts(cuts: Iterable[tuple[Any, int]], budget: int | None = None) -> dict[str, Any]:
    """How many participants' transcripts the token budget cut, and by how many tokens each, from
    (participant id, tokens cut) pairs (one per row; a participant's largest cut counts). The one
    summary of truncated transcripts in a training and an evaluation manifest; only the participants
    that were cut are listed."""
    cut: dict[str, int] = {}
    for pid, tokens in cuts:
        cut[str(pid)] = max(cut.get(str(pid), 0), int(tokens))
    summary = {} if budget is None else {"budget": budget}
    return {
        **summary,
        "participants": len(cut),
        "truncated": sum(tokens > 0 for tokens in cut.values()),
        "max_cut_tokens": max(cut.values(), default=0),
        "cut_tokens": {pid: tokens for pid, tokens in sorted(cut.items()) if tokens > 0},
    }
