"""What a training run records about itself in ``run_manifest.json``: code, versions, seeds,
arguments, data fingerprints, truncated transcripts (the card is ``mllm_dr.cards``)."""

from __future__ import annotations

from typing import Any

import datasets

from ..provenance import PACKAGE_ROOT, file_fingerprint, git_commit, package_versions  # noqa: F401  (re-exported)
from ..provenance import transcript_cuts


def truncation_summary(rows: datasets.Dataset, uses_transcript: bool) -> dict[str, Any]:
    """How many participants' transcripts exceed the token budget, and by how many tokens each (from
    ``tokenize_rows``' counts; only the participants that were cut are listed)."""
    if not uses_transcript or "transcript_truncated" not in rows.column_names:
        return transcript_cuts(())
    return transcript_cuts(zip(rows["participant_id"], rows["transcript_truncated"], strict=True))
