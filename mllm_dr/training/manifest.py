"""What a training run records about itself in ``run_manifest.json``: code, versions, seeds,
arguments, data fingerprints, truncated transcripts (the card is ``mllm_dr.cards``)."""

from __future__ import annotations

from typing import Any

import datasets

from ..provenance import PACKAGE_ROOT, file_fingerprint, git_commit, package_versions  # noqa: F401  (re-exported)


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
