"""Training under broken data and damaged checkpoints (issue 12): each fault is refused before any
training step with participant / item / file named, or skipped and recorded in run_manifest.json;
what training exported survives a failing final evaluation; a resume checks its checkpoint and
its data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from training_fixtures import TINY_OVERRIDES, make_prepared_corpus

from mllm_dr.commands import train
from mllm_dr.data import load_edaic
from mllm_dr.testing import AUDIO_DIM
from mllm_dr.training import MllmDrTrainer

ROOT = Path(__file__).resolve().parents[1]


def args_for(data: Path, out: Path, *extra: str, steps: int = 2) -> list[str]:
    return [
        "--data_dir", str(data), "--dataset_format", "prepared", "--model_overrides", TINY_OVERRIDES,
        "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4", "--max_steps", str(steps),
        "--use_cpu", "true", "--report_to", "none", "--max_transcript_tokens", "32", "--disable_tqdm", "true",
        "--seed", "7", "--eval_strategy", "no", "--save_strategy", "no", "--output_dir", str(out), *extra,
    ]  # fmt: skip


def stage1(backbone: Path, data: Path, out: Path, *extra: str, steps: int = 2) -> list[str]:
    return ["--stage", "1", "--backbone", str(backbone), *args_for(data, out, *extra, steps=steps)]


def text_stage2(backbone: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--stage", "2", "--backbone", str(backbone), "--text_only", *args_for(data, out, *extra)]


def edited(source: Path, destination: Path, edit) -> Path:
    """A copy of a prepared corpus with ``edit(split name, row) -> row`` applied to every row."""
    data = datasets.load_from_disk(str(source))
    changed = {name: datasets.Dataset.from_list([edit(name, dict(row)) for row in split]) for name, split in data.items()}
    datasets.DatasetDict(changed).save_to_disk(str(destination))
    return destination


def manifest(out: Path) -> dict:
    return json.loads((out / "run_manifest.json").read_text())


def no_training_happened(out: Path) -> bool:
    return not out.exists() or not any(p.name.startswith("checkpoint-") or p.name == "merged" for p in out.iterdir())


def refused_then_skipped(command, backbone: Path, data: Path, root: Path, match: str) -> dict:
    """``command`` (stage1 / text_stage2) is refused with ``match`` before any training, then runs
    with ``--on_error skip``; returns that run's ``run_manifest.json`` data section."""
    with pytest.raises(SystemExit, match=match):
        train.main(command(backbone, data, root / "raise"))
    assert no_training_happened(root / "raise")
    train.main(command(backbone, data, root / "skip", "--on_error", "skip"))
    return manifest(root / "skip")["data"]


@pytest.fixture
def corpus(tmp_path) -> Path:
    return make_prepared_corpus(tmp_path / "corpus", {"train": 4, "dev": 2, "test": 1})


def first_train_participant(data: Path) -> str:
    return datasets.load_from_disk(str(data))["train"][0]["participant_id"]


# --- class 1: a labelled row without a rationale; class 13: a rationale written for another label
def test_row_without_rationale_is_refused_naming_it_or_skipped_and_recorded(backbone_dir, corpus, tmp_path):
    pid = first_train_participant(corpus)
    damaged = edited(corpus, tmp_path / "damaged", lambda _s, r: {**r, "rationale": None} if (r["participant_id"], r["item_index"]) == (pid, 2) else r)
    data = refused_then_skipped(text_stage2, backbone_dir, damaged, tmp_path, rf"participant {pid}, item 2: .*no rationale")
    assert [(s["participant_id"], s.get("item_index")) for s in data["left_out"]["skipped"]] == [(pid, 2)]
    assert data["skipped_items"] == 1
    assert (tmp_path / "skip" / "merged" / "model.safetensors").is_file()


def test_rationale_written_for_another_label_is_refused(backbone_dir, corpus, tmp_path):
    data = datasets.load_from_disk(str(corpus))
    rows = [r for split in ("train", "dev") for r in data[split]]
    path = tmp_path / "rationales.jsonl"
    with path.open("w") as handle:
        for i, r in enumerate(rows):
            label = (r["label"] + 1) % 4 if i == 0 else r["label"]
            handle.write(json.dumps({
                "participant_id": r["participant_id"], "item_index": r["item_index"], "item_name": r["item_name"],
                "label": label, "rationale": "The participant talks about it.", "teacher": "t", "prompt_version": "v",
            }) + "\n")  # fmt: skip
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=rf"participant {rows[0]['participant_id']}, item {rows[0]['item_index']}: "
                       rf"{path}: rationale written for label \d, the corpus label is {rows[0]['label']}"):
        train.main(text_stage2(backbone_dir, corpus, out, "--rationales", str(path)))
    assert no_training_happened(out)


def test_a_failing_final_evaluation_keeps_the_exports(backbone_dir, corpus, tmp_path, monkeypatch):
    def broken_evaluate(self, *args, **kwargs):
        raise RuntimeError("dev batch exploded")

    monkeypatch.setattr(MllmDrTrainer, "evaluate", broken_evaluate)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="final dev evaluation failed .*dev batch exploded.*exports in"):
        train.main(text_stage2(backbone_dir, corpus, out))
    assert (out / "merged" / "model.safetensors").is_file() and (out / "adapter" / "README.md").is_file()
    assert "dev batch exploded" in manifest(out)["final_dev_eval_error"]


# --- class 7: a participant without any item label
def test_participant_without_labels_is_refused_or_skipped(backbone_dir, corpus, tmp_path):
    pid = first_train_participant(corpus)
    damaged = edited(corpus, tmp_path / "damaged", lambda _s, r: {**r, "label": None, "total": None} if r["participant_id"] == pid else r)
    data = refused_then_skipped(stage1, backbone_dir, damaged, tmp_path, rf"participant {pid}: .*no item labels")
    assert data["skipped_participants"] == [pid]


# --- classes 5 and 6: NaN/inf features; empty or zero-filled feature files
@pytest.mark.parametrize("damage", ["nan", "inf", "empty", "zeros"])
def test_broken_feature_file_is_refused_before_training_or_skipped(backbone_dir, corpus, tmp_path, damage):
    pid = first_train_participant(corpus)
    path = corpus.parent / "features" / f"{pid}_audio.npy"
    if damage in ("nan", "inf"):
        array = np.load(path)
        array[1, 3] = np.nan if damage == "nan" else np.inf
        np.save(path, array)
    else:
        path.write_bytes(b"" if damage == "empty" else b"\0" * 512)
    data = refused_then_skipped(stage1, backbone_dir, corpus, tmp_path, rf"participant\(s\) {pid}: {path}: ")
    assert [(s["participant_id"], s["path"]) for s in data["left_out"]["skipped"]] == [(pid, str(path))]


@pytest.mark.parametrize("content", [b"", b"\0" * 256])
def test_empty_or_zeroed_mat_file_is_a_recorded_skip_not_a_scipy_error(tmp_path, content):
    from corpus_fixtures import edaic_folder, write_edaic

    root = tmp_path / "edaic"
    write_edaic(root)
    pid = load_edaic(root)["train"][0]["participant_id"]
    mat = next((edaic_folder(root, pid) / "features").glob("*.mat"))
    mat.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{pid}.*{mat.name}"):
        load_edaic(root)
    data, report = load_edaic(root, on_error="skip", return_report=True)
    assert pid in report.skipped_participants
    assert pid not in set(data["train"]["participant_id"])


# --- class 9: required modalities; what is left out is recorded
def test_require_modalities_makes_a_missing_file_broken_data(backbone_dir, corpus, tmp_path):
    data = datasets.load_from_disk(str(corpus))
    without = sorted({r["participant_id"] for s in ("train", "dev") for r in data[s] if not r["video_files"]})
    assert without, "the fixture has participants without video"
    out = tmp_path / "plain"
    train.main(stage1(backbone_dir, corpus, out))
    assert manifest(out)["data"]["left_out"]["missing_modality"]["video"] == without
    with pytest.raises(SystemExit, match=rf"participant {without[0]}: .*no video feature file"):
        train.main(stage1(backbone_dir, corpus, tmp_path / "raise", "--require_modalities", "audio,video"))
    out = tmp_path / "skip"
    train.main(stage1(backbone_dir, corpus, out, "--require_modalities", "video", "--on_error", "skip"))
    assert set(manifest(out)["data"]["skipped_participants"]) >= set(without)
    assert manifest(out)["data"]["left_out"]["missing_modality"]["video"] == []


# --- classes 11 and 13: resuming from a damaged checkpoint, or on other data
@pytest.fixture
def interrupted(backbone_dir, corpus, tmp_path) -> Path:
    out = tmp_path / "run"
    train.main(stage1(backbone_dir, corpus, out, "--save_strategy", "steps", "--save_steps", "2", steps=2))
    assert (out / "checkpoint-2" / "mllm_dr_data.json").is_file()
    return out


def run_cli(arguments: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *arguments], capture_output=True, text=True, env=env, timeout=600)


def test_resume_from_a_damaged_checkpoint_names_the_file(backbone_dir, corpus, interrupted):
    checkpoint = interrupted / "checkpoint-2"
    weights = checkpoint / "mllm_dr_trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    result = run_cli(stage1(backbone_dir, corpus, interrupted, "--resume_from_checkpoint", str(checkpoint), steps=4))
    assert result.returncode != 0
    assert str(weights) in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]

    (checkpoint / "trainer_state.json").unlink()
    with pytest.raises(SystemExit, match=rf"{checkpoint / 'trainer_state.json'}: missing"):
        train.main(stage1(backbone_dir, corpus, interrupted, "--resume_from_checkpoint", "last", steps=4))


def test_resume_on_changed_data_is_refused_unless_allowed(backbone_dir, corpus, interrupted, tmp_path):
    pid = first_train_participant(corpus)
    relabelled = edited(corpus, tmp_path / "relabelled", lambda _s, r: {**r, "label": (r["label"] + 1) % 4} if r["participant_id"] == pid else r)
    with pytest.raises(SystemExit, match=r"mllm_dr_data.json: the checkpoint was trained on other data"):
        train.main(stage1(backbone_dir, relabelled, interrupted, "--resume_from_checkpoint", "last", steps=4))
    train.main(stage1(backbone_dir, corpus, interrupted, "--resume_from_checkpoint", "last", steps=3))  # same data: resumes
    assert manifest(interrupted)["global_step"] == 3
    train.main(stage1(backbone_dir, relabelled, interrupted, "--resume_from_checkpoint", "last", "--allow_data_change", steps=4))
    assert manifest(interrupted)["global_step"] == 4
