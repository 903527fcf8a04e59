"""Where a result came from: the code's commit, the installed versions, a file's fingerprint.
Shared by the training manifest and prediction reports (importing it loads neither peft nor torch)."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from pathlib import Path

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
