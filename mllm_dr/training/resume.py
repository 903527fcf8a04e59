"""Resuming a training run: which checkpoint, whether it is whole, and whether it was written for
the same data.

Every checkpoint carries :data:`DATA_FILE` (the run's :func:`~mllm_dr.data.checks.data_fingerprint`);
a resume on other data (labels, rationales, transcripts or feature files changed, rows skipped
differently) is refused unless the user says ``--allow_data_change``.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint

from ..checkpoints import TRAINABLE_STATE_FILE, check_weight_files

logger = logging.getLogger("mllm_dr.train")

DATA_FILE = "mllm_dr_data.json"
TRAINER_STATE = "trainer_state.json"
LAST = ("last", "true")


def resolve_checkpoint(resume: str | None, output_dir: str) -> str | None:
    """``--resume_from_checkpoint``: a checkpoint folder, or ``last`` / ``true`` for the newest
    ``checkpoint-N`` in ``output_dir``."""
    if resume is None or resume.lower() == "false":
        return None
    if resume.lower() in LAST:
        last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if last is None:
            raise ValueError(f"--resume_from_checkpoint {resume}: {output_dir} holds no checkpoint-N folder")
        return last
    return resume


def check_checkpoint(path: str | Path) -> None:
    """A checkpoint that the Trainer can resume from: its state, the trainable weights (readable
    safetensors) and the optimizer/scheduler/RNG files (whole zip archives); raises ``ValueError``
    naming the file."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"--resume_from_checkpoint {path}: no such checkpoint folder")
    state = path / TRAINER_STATE
    if not state.is_file():
        raise ValueError(f"{state}: missing (not a complete training checkpoint: it was interrupted while saving?)")
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{state}: not valid JSON ({error}): the checkpoint is damaged") from None
    if not (path / TRAINABLE_STATE_FILE).is_file():
        raise ValueError(f"{path / TRAINABLE_STATE_FILE}: missing (not an MLlm-DR training checkpoint)")
    check_weight_files(path)
    for file in sorted(path.glob("*.pt")) + sorted(path.glob("*.pth")):
        if not zipfile.is_zipfile(file):
            raise ValueError(f"{file}: truncated or damaged (not a whole torch archive): resume from an earlier checkpoint")


def check_data(path: str | Path, fingerprint: str, allow_change: bool) -> None:
    """Refuses to resume ``path`` on data whose fingerprint differs from the one it was trained on,
    unless ``allow_change``."""
    recorded_file = Path(path) / DATA_FILE
    if not recorded_file.is_file():
        logger.warning("%s: no data fingerprint (a checkpoint from an older version): cannot check the data", path)
        return
    recorded = json.loads(recorded_file.read_text(encoding="utf-8")).get("data_fingerprint")
    if recorded == fingerprint:
        return
    if allow_change:
        logger.warning("resuming %s (trained on data %s) on different data %s (--allow_data_change)", path, recorded, fingerprint)
        return
    raise ValueError(
        f"{recorded_file}: the checkpoint was trained on other data (fingerprint {recorded}, now {fingerprint}: labels, "
        "rationales, transcripts, feature files or the skipped rows changed). Resume on the same data, start a new "
        "run, or pass --allow_data_change to continue on purpose"
    )
