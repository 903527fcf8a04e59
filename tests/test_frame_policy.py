"""The frame policy runs exactly once on every path: the frames that reach each LQ-former are the same
whether a raw file goes straight to the model (prediction) or through the feature cache (training
batches, stage 2's precomputed LQ-former outputs, evaluation), for every policy, with different
settings per modality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from corpus_fixtures import EDAIC_SPLITS, edaic_folder, write_edaic

import modeling_mllm_dr
from mllm_dr.checkpoints import export_adapter
from mllm_dr.commands import evaluate, predict
from mllm_dr.data import CorpusArguments, MllmDrCollator, load_splits, tokenize_rows
from mllm_dr.testing import build_tiny, tiny_lqformer
from mllm_dr.training import precompute_modality_embeddings
from processing_mllm_dr import apply_frame_policy, prompt_mode

AUDIO_FRAMES, VIDEO_FRAMES = 41, 29
# The same policy in both modalities, with settings that differ between them (the video LQ-former
# once took truncate_frames / pool_size from the audio config).
POLICIES = {
    "uniform": ({"frame_policy": "uniform", "max_frames": 7}, {"frame_policy": "uniform", "max_frames": 5}),
    "truncate_maxpool": (
        {"frame_policy": "truncate_maxpool", "truncate_frames": 30, "pool_size": 3},
        {"frame_policy": "truncate_maxpool", "truncate_frames": 20, "pool_size": 2},
    ),
    "none": ({"frame_policy": "none"}, {"frame_policy": "none"}),
}
EXPECTED_FRAMES = {"uniform": (7, 5), "truncate_maxpool": (10, 10), "none": (AUDIO_FRAMES, VIDEO_FRAMES)}


def exact_in_float16(rng: np.random.Generator, frames: int, dim: int) -> np.ndarray:
    """Values a float16 cache stores without rounding, so that every path can be compared exactly."""
    return (rng.integers(-64, 64, size=(frames, dim)) / 8).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("frames") / "edaic"
    write_edaic(root)
    rng = np.random.default_rng(0)
    for pids in EDAIC_SPLITS.values():
        for pid in pids:
            features = edaic_folder(root, pid) / "features"
            np.save(features / f"{pid}_HuBERT.npy", exact_in_float16(rng, AUDIO_FRAMES, 768))
            scipy.io.savemat(features / f"{pid}_CNN_ResNet.mat", {"feature": exact_in_float16(rng, VIDEO_FRAMES, 2048)})
    return root


class Recorder:
    """Records the real frames each LQ-former receives, per modality, in call order."""

    def __init__(self, model) -> None:
        self.frames: dict[str, list[np.ndarray]] = {"audio": [], "video": []}
        self.model = model

    def __call__(self, module, features, mask):
        modality = "audio" if module.config.feature_dim == 768 else "video"
        mask = torch.ones(features.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
        for row, keep in zip(features, mask):
            if bool(keep.any()):
                self.frames[modality].append(row[keep].detach().float().numpy().copy())


@pytest.fixture
def record(monkeypatch):
    """Patches LQFormer.forward to report its inputs to a Recorder (returned by the fixture)."""
    recorder = Recorder(None)
    original = modeling_mllm_dr.LQFormer.forward

    def forward(self, features, feature_mask=None):
        recorder(self, features, feature_mask)
        return original(self, features, feature_mask)

    monkeypatch.setattr(modeling_mllm_dr.LQFormer, "forward", forward)
    return recorder


def raw_reduced(path: Path, modality: str, settings: dict) -> np.ndarray:
    """The expected frames: the raw file shortened once by ``settings``."""
    from mllm_dr.data import read_feature_file

    raw = read_feature_file(path)
    return apply_frame_policy(raw, settings["frame_policy"], settings.get("max_frames", 7000),
                              settings.get("truncate_frames", 21000), settings.get("pool_size", 3))


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_path_feeds_the_same_frames(policy, corpus, backbone_dir, tmp_path, record):
    audio_settings, video_settings = POLICIES[policy]
    model, processor = build_tiny(
        backbone_dir, audio_config=tiny_lqformer(768, **audio_settings), video_config=tiny_lqformer(2048, **video_settings)
    )
    export = export_adapter(model, processor, tmp_path / "model", str(backbone_dir), None, {"stage": 1, "mode": "features"})
    pid = EDAIC_SPLITS["test"][0]
    files = {
        "audio": edaic_folder(corpus, pid) / "features" / f"{pid}_HuBERT.npy",
        "video": edaic_folder(corpus, pid) / "features" / f"{pid}_CNN_ResNet.mat",
    }
    expected = {
        "audio": raw_reduced(files["audio"], "audio", audio_settings),
        "video": raw_reduced(files["video"], "video", video_settings),
    }
    assert (expected["audio"].shape[0], expected["video"].shape[0]) == EXPECTED_FRAMES[policy]

    def frames_of_the_participant() -> dict[str, np.ndarray]:
        """The recorded frames equal to the participant's (each path sees it at least once)."""
        got = {}
        for modality in ("audio", "video"):
            matches = [f for f in record.frames[modality] if f.shape == expected[modality].shape
                       and np.array_equal(f, expected[modality])]
            got[modality] = len(matches)
            record.frames[modality].clear()
        return got

    # 1. prediction: the raw files go straight to the model
    transcript = edaic_folder(corpus, pid) / f"{pid}_Transcript.csv"
    predict.main(["--model", str(export), "--transcript", str(transcript), "--audio", str(files["audio"]),
                  "--video", str(files["video"]), "--output_dir", str(tmp_path / "report"), "--greedy",
                  "--max_new_tokens", "1"])
    assert all(count >= 1 for count in frames_of_the_participant().values())

    # 2. training batches: raw file -> feature cache (float16) -> collator -> model
    corpus_args = CorpusArguments(data_dir=str(corpus), dataset_format="edaic")
    loaded = load_splits(corpus_args, ("test",), frames=processor, cache_dir=tmp_path / "cache")
    rows = [r for r in loaded["test"] if r["participant_id"] == pid]
    assert rows[0]["audio_cache"] and rows[0]["video_cache"]
    mode = prompt_mode(1, True, True)
    tokenized = tokenize_rows(loaded["test"].filter(lambda r: r["participant_id"] == pid), processor, mode,
                              with_targets=True, with_rationale=False)
    batch = MllmDrCollator(processor, mode, with_rationale=False)(list(tokenized)[:2])
    with torch.no_grad():
        model(**batch)
    assert frames_of_the_participant() == {"audio": 2, "video": 2}

    # 3. stage 2's LQ-former outputs, computed once per participant from the cache
    precompute_modality_embeddings(model, processor, rows, ["audio", "video"])
    assert frames_of_the_participant() == {"audio": 1, "video": 1}

    # 4. evaluation: its own rows and cache, through the shared generation loop
    evaluate.main(["--model", str(export), "--data_dir", str(corpus), "--dataset_format", "edaic", "--split", "test",
                   "--output_dir", str(tmp_path / "eval"), "--feature_cache_dir", str(tmp_path / "eval_cache"),
                   "--greedy", "--max_new_tokens", "1", "--n_bootstrap", "0"])
    assert all(count >= 1 for count in frames_of_the_participant().values())


def test_a_cache_built_with_another_policy_is_refused(corpus, backbone_dir, tmp_path):
    model, processor = build_tiny(backbone_dir, audio_config=tiny_lqformer(768, max_frames=7),
                                  video_config=tiny_lqformer(2048, max_frames=5))
    other, _ = build_tiny(backbone_dir, audio_config=tiny_lqformer(768, max_frames=9),
                          video_config=tiny_lqformer(2048, max_frames=5))
    corpus_args = CorpusArguments(data_dir=str(corpus), dataset_format="edaic")
    loaded = load_splits(corpus_args, ("test",), frames=other.config, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"shortened with .*'max_frames': 9.* uses .*'max_frames': 7.*rebuild the cache"):
        MllmDrCollator(processor, "features", with_rationale=False)([loaded["test"][0]])
