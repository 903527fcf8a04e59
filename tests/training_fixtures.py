"""A tiny 'prepared' corpus (a saved datasets folder with .npy features) and tiny model overrides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mllm_dr.testing import AUDIO_DIM, VIDEO_DIM

TINY_LQFORMER = {
    "num_query_tokens": 4, "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2,
    "intermediate_size": 48, "dropout": 0.0, "projector_hidden_size": 40, "max_frames": 64,
}
TINY_OVERRIDES = json.dumps(
    {
        "audio_config": {**TINY_LQFORMER, "feature_dim": AUDIO_DIM},
        "video_config": {**TINY_LQFORMER, "feature_dim": VIDEO_DIM},
        "score_head_num_heads": 4,
        "score_head_hidden_size": 16,
    }
)
PHRASES = {0: "I feel fine", 1: "sometimes low", 2: "often low", 3: "low every day"}


def make_prepared_corpus(root: Path, participants: dict[str, int] | None = None, items=(1, 2), seed: int = 0) -> Path:
    """``participants``: {split: count}. Item label = a per-participant level; the transcript says it."""
    import datasets

    participants = participants or {"train": 6, "dev": 2, "test": 2}
    rng = np.random.default_rng(seed)
    features_dir = root / "features"
    features_dir.mkdir(parents=True, exist_ok=True)
    splits = {}
    number = 300
    for split, count in participants.items():
        rows = []
        for _ in range(count):
            pid = str(number)
            number += 1
            level = int(rng.integers(0, 4))
            audio = rng.standard_normal((int(rng.integers(5, 12)), AUDIO_DIM)).astype(np.float32) + level
            np.save(features_dir / f"{pid}_audio.npy", audio)
            has_video = number % 3 != 0
            if has_video:
                video = rng.standard_normal((int(rng.integers(4, 9)), VIDEO_DIM)).astype(np.float32)
                np.save(features_dir / f"{pid}_video.npy", video)
            for item in items:
                rows.append(
                    {
                        "participant_id": pid,
                        "item_index": item,
                        "item_name": ["NoInterest", "Depressed", "Sleep"][item - 1],
                        "transcript": f"hello. {PHRASES[level]}. thanks",
                        "label": level,
                        "total": level * len(items),
                        "rationale": f"The participant says {PHRASES[level]}.",
                        "audio_files": [str(features_dir / f"{pid}_audio.npy")],
                        "video_files": [str(features_dir / f"{pid}_video.npy")] if has_video else [],
                        "split": split,
                    }
                )
        splits[split] = datasets.Dataset.from_list(rows)
    path = root / "prepared"
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path


def common_args(data: Path, steps: int = 4, **extra: str) -> list[str]:
    """Flags of a few-step tiny training run on ``data`` (a prepared corpus); ``extra`` overrides."""
    args = {
        "--data_dir": str(data),
        "--dataset_format": "prepared",
        "--model_overrides": TINY_OVERRIDES,
        "--per_device_train_batch_size": "2",
        "--per_device_eval_batch_size": "4",
        "--max_steps": str(steps),
        "--use_cpu": "true",
        "--report_to": "none",
        "--logging_steps": "1",
        "--max_transcript_tokens": "32",
        "--disable_tqdm": "true",
        "--seed": "7",
    }
    args.update(extra)
    return [item for pair in args.items() for item in pair]
