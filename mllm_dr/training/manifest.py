"""What a training run records about itself: ``run_manifest.json`` (code, versions, seeds,
arguments, data fingerprints, truncated transcripts) and the checkpoint's model card."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from collections.abc import Mapping
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


def truncation_summary(rows: datasets.Dataset, uses_transcript: bool) -> dict[str, int]:
    """How many participants' transcripts exceed the token budget (from ``tokenize_rows``' counts)."""
    if not uses_transcript or "transcript_truncated" not in rows.column_names:
        return {"participants": 0, "truncated": 0}
    cut: dict[str, int] = {}
    for pid, tokens in zip(rows["participant_id"], rows["transcript_truncated"], strict=True):
        cut[str(pid)] = max(cut.get(str(pid), 0), int(tokens))
    return {"participants": len(cut), "truncated": sum(tokens > 0 for tokens in cut.values())}


def model_card(
    stage: int,
    base_model: str,
    dataset_format: str,
    split_sizes: Mapping[str, int],
    metrics: Mapping[str, Any] | None,
    mode: str,
) -> str:
    """README.md for a checkpoint. Built from names and numbers only: it never holds training text."""
    metric_lines = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in (metrics or {}).items())
    metrics_block = (
        f"| metric | value |\n|---|---|\n{metric_lines}" if metric_lines else "No metrics were measured for this checkpoint."
    )
    sizes = ", ".join(f"{k}: {v} samples" for k, v in split_sizes.items())
    return f"""---
library_name: transformers
base_model: {base_model}
tags: [mllm-dr, depression-recognition, explainability, research-only]
---

# MLlm-DR checkpoint (stage {stage})

An MLlm-DR model (LQ-formers over pre-extracted audio/visual features, a causal LM with LoRA, and
a multi-head attention aggregation score head) for explainable PHQ item scoring.

- **Base model:** `{base_model}`
- **Training stage:** {stage} ({"LQ-former alignment, LLM frozen" if stage == 1 else "LoRA + score head, LQ-formers frozen"})
- **Prompt mode:** `{mode}`
- **Data:** `{dataset_format}` corpus ({sizes}). No transcript or rationale text is included here.

## Metrics

{metrics_block}

## Intended use and limitations

Research use only. **This is not a diagnostic device** and must not be used to diagnose, screen or
treat anyone. Scores and rationales can be wrong, biased by the small training corpora
(E-DAIC-WOZ: 275 participants, CMDC: 78), and sensitive to recording conditions. Weights trained
on licensed corpora may be subject to those corpora's licence terms: check before sharing.

Load with:

```python
from transformers import AutoModel, AutoProcessor
model = AutoModel.from_pretrained("<this folder>", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("<this folder>", trust_remote_code=True)
```
"""
