"""Issue 12, evaluation and inference: no resumed evaluation mixes two models or two labellings,
duplicates never count twice, a folder's own code never runs unasked, what was left out is recorded,
and damaged inputs get one line naming the file.

Everything runs on a tiny untrained checkpoint (its random head marked trained, so that every item
gets a non-zero score) and a tiny prepared corpus; no training."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from training_fixtures import make_prepared_corpus

from mllm_dr.checkpoints import check_weight_files, export_adapter
from mllm_dr.commands import evaluate as ev
from mllm_dr.commands import predict
from mllm_dr.inference import load_model, model_fingerprint
from mllm_dr.io import exclusive_lock
from mllm_dr.testing import build_tiny

BIN = Path(sys.executable).parent
TEST_SPLIT = {"train": 3, "dev": 1, "test": 4}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_prepared_corpus(tmp_path_factory.mktemp("faults_corpus"), TEST_SPLIT, items=(1, 2))


@pytest.fixture(scope="module")
def clean_eval(checkpoint, corpus, tmp_path_factory) -> Path:
    """One finished evaluation, copied by each test that damages it."""
    out = tmp_path_factory.mktemp("faults_eval") / "eval"
    evaluate(checkpoint, corpus, out)
    return out


def eval_args(model: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--data_dir", str(corpus), "--dataset_format", "prepared", "--split", "test",
            "--output_dir", str(out), "--max_new_tokens", "4", "--batch_size", "4", "--n_bootstrap", "0",
            "--device", "cpu", *extra]  # fmt: skip


def evaluate(model: Path, corpus: Path, out: Path, *extra: str) -> dict:
    ev.main(eval_args(model, corpus, out, *extra))
    return json.loads((out / "metrics.json").read_text())


def scores(out: Path) -> dict:
    return {k: v for k, v in json.loads((out / "metrics.json").read_text()).items() if k != "throughput"}


def resumable_copy(clean_eval: Path, out: Path) -> Path:
    """A finished evaluation without its metrics: the next run re-reads its predictions."""
    shutil.copytree(clean_eval, out)
    (out / "metrics.json").unlink()
    return out / "predictions.jsonl"


def cli(tool: str, *arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(cwd / "modules")}
    return subprocess.run([str(BIN / tool), *arguments], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def one_line_refusal(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stderr.strip().splitlines()[-1]


def set_level(corpus: Path, participant: str, level: int) -> None:
    """Relabels ``participant`` in the prepared corpus, in place: every item ``level``, the total their sum."""
    import datasets

    splits = datasets.load_from_disk(str(corpus))
    rows = {name: split.to_list() for name, split in splits.items()}
    del splits
    for split_rows in rows.values():
        mine = [row for row in split_rows if row["participant_id"] == participant]
        for row in mine:
            row["label"], row["total"] = level, level * len(mine)
    staged = corpus.with_name(corpus.name + ".new")
    datasets.DatasetDict({name: datasets.Dataset.from_list(r) for name, r in rows.items()}).save_to_disk(str(staged))
    shutil.rmtree(corpus)
    staged.rename(corpus)


# ------------------------------------------------------------------ 2: one model, one labelling
def test_fingerprint_hashes_every_weight_byte(checkpoint, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(checkpoint, model)
    before = model_fingerprint(model)
    (model / "checkpoint-4").mkdir()
    (model / "checkpoint-4" / "optimizer.pt").write_bytes(b"resume state")
    with exclusive_lock(model, "test"):
        assert model_fingerprint(model) == before  # resume checkpoints and lock files are not the model
    weights = model / "model.safetensors"
    state = load_file(str(weights))
    name = next(n for n, t in state.items() if t.dtype == torch.float32 and t.numel() > 1)
    state[name] = state[name] + 1e-3
    save_file(state, str(weights), metadata={"format": "pt"})
    assert model_fingerprint(model) != before  # same names, same sizes, same JSON: other bytes


def test_resume_with_a_retrained_model_is_refused(checkpoint, corpus, clean_eval, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(checkpoint, model)
    out = tmp_path / "eval"
    evaluate(model, corpus, out)
    (out / "metrics.json").unlink()
    weights = model / "model.safetensors"
    state = load_file(str(weights))
    state = {k: (v + 1e-3 if v.dtype == torch.float32 else v) for k, v in state.items()}  # "retrained in place"
    save_file(state, str(weights), metadata={"format": "pt"})
    before = (out / "predictions.jsonl").read_text()
    with pytest.raises(SystemExit, match=r"different settings \(model\)"):
        evaluate(model, corpus, out)
    assert (out / "predictions.jsonl").read_text() == before and not (out / "metrics.json").exists()


def test_resume_after_the_labels_changed_is_refused(checkpoint, tmp_path):
    corpus = make_prepared_corpus(tmp_path / "corpus", TEST_SPLIT, items=(1, 2))
    out = tmp_path / "eval"
    evaluate(checkpoint, corpus, out)
    (out / "metrics.json").unlink()
    first = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    participant, old = first["participant_id"], first["label"]
    new = (old + 1) % 4
    set_level(corpus, participant, new)
    with pytest.raises(SystemExit) as refused:
        evaluate(checkpoint, corpus, out)
    message = str(refused.value)
    assert "\n" not in message and f"{out / 'predictions.jsonl'}:1" in message
    assert f"participant {participant}, item {first['item_index']}" in message
    assert f"label was {old}" in message and f"now says {new}" in message and "new --output_dir" in message
    assert not (out / "metrics.json").exists()


# ------------------------------------------------------------------ 3: duplicates and concurrent runs
def test_a_duplicated_line_counts_once_and_a_conflicting_one_is_refused(checkpoint, corpus, clean_eval, tmp_path):
    predictions = resumable_copy(clean_eval, tmp_path / "dup")
    lines = predictions.read_text().splitlines(keepends=True)
    predictions.write_text("".join(lines + [lines[2]]))
    evaluate(checkpoint, corpus, predictions.parent)
    assert scores(predictions.parent) == scores(clean_eval)

    predictions = resumable_copy(clean_eval, tmp_path / "conflict")
    conflicting = {**json.loads(lines[2]), "score": json.loads(lines[2])["score"] + 1.0}
    predictions.write_text("".join(lines) + json.dumps(conflicting) + "\n")
    duplicate = rf"{predictions}:{len(lines) + 1}: .* already predicted differently on line 3"
    with pytest.raises(SystemExit, match=duplicate):
        evaluate(checkpoint, corpus, predictions.parent)


def test_a_second_evaluation_into_a_folder_in_use_is_refused(checkpoint, corpus, tmp_path):
    out = tmp_path / "eval"
    with exclusive_lock(out, "evaluation"):
        with pytest.raises(SystemExit, match=f"{out} is in use by another evaluation"):
            evaluate(checkpoint, corpus, out)
    assert sorted(p.name for p in out.iterdir()) == [".mllm_dr.lock", ".mllm_dr.lock.owner"]
    evaluate(checkpoint, corpus, out)  # the lock files left behind do not make the folder "not empty"
    assert (out / "metrics.json").is_file()


# ------------------------------------------------------------------ 8: no code from the folder runs unasked
def test_a_checkpoints_own_code_never_runs_without_the_flag(checkpoint, corpus, tmp_path):
    model = tmp_path / "foreign"
    shutil.copytree(checkpoint, model)
    marker = tmp_path / "ran"
    with (model / "modeling_mllm_dr.py").open("a") as handle:
        handle.write(f"\nopen({str(marker)!r}, 'w').write('the checkpoint ran its own code')\n")
    done = cli("mllm-dr-evaluate", *eval_args(model, corpus, tmp_path / "eval"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not marker.exists()
    warning = next(line for line in done.stderr.splitlines() if line.startswith("warning:"))
    assert "modeling_mllm_dr.py differ" in warning and "installed package's code is used" in warning
    assert "configuration_mllm_dr.py" not in warning
    for command in (ev, predict):
        assert "--trust_remote_code" in command.build_parser().format_help()


def test_adapter_exports_load_with_the_installed_classes(backbone_dir, tmp_path, capsys):
    model, processor = build_tiny(backbone_dir, max_transcript_tokens=32)
    adapter = export_adapter(model, processor, tmp_path / "adapter", base_model=str(backbone_dir))
    marker = tmp_path / "ran"
    for name in ("modeling_mllm_dr.py", "configuration_mllm_dr.py", "processing_mllm_dr.py"):
        (adapter / name).write_text(f"open({str(marker)!r}, 'w').write('ran')\nraise SystemExit('folder code ran')\n")
    loaded = load_model(adapter)
    assert type(loaded.model).__module__ == "modeling_mllm_dr" and not marker.exists()
    assert "processing_mllm_dr.py differ" in capsys.readouterr().err


def test_a_config_that_is_not_mllm_drs_is_named(backbone_dir, corpus, tmp_path):
    with pytest.raises(SystemExit, match=rf"{backbone_dir / 'config.json'}: model_type 'llama' is not MLlm-DR's"):
        evaluate(backbone_dir, corpus, tmp_path / "eval")
    assert not (tmp_path / "eval").exists()


# ------------------------------------------------------------------ 9: what was left out is recorded
def test_skipped_participants_and_missing_modalities_are_recorded(checkpoint, tmp_path):
    import datasets

    corpus = make_prepared_corpus(tmp_path / "corpus", TEST_SPLIT, items=(1, 2))
    test = datasets.load_from_disk(str(corpus))["test"]
    participants = sorted(set(test["participant_id"]))
    without_video = sorted({r["participant_id"] for r in test if not r["video_files"]})
    assert without_video  # make_prepared_corpus leaves every third participant without video
    broken = next(p for p in participants if p not in without_video)
    audio = Path(next(r["audio_files"][0] for r in test if r["participant_id"] == broken))
    audio.write_bytes(b"")  # an interrupted copy
    out = tmp_path / "eval"
    metrics = evaluate(checkpoint, corpus, out, "--on_error", "skip")
    manifest = json.loads((out / "manifest.json").read_text())
    for left_out in (manifest["data"]["left_out"], metrics["left_out"]):
        assert [(s["participant_id"], s["path"]) for s in left_out["skipped"]] == [(broken, str(audio))]
        assert left_out["missing_modality"] == {"audio": [], "video": without_video}
    report = (out / "report.md").read_text()
    assert f"- participant {broken}: `{audio}`: empty file" in report
    assert f"Scored without video features (no video file): {', '.join(without_video)}." in report
    # a model-free baseline uses no modality: none is listed
    assert evaluate(checkpoint, corpus, tmp_path / "mean", "--train_mean", "--on_error", "skip")["left_out"][
        "missing_modality"
    ] == {}


# ------------------------------------------------------------------ 11: one line naming the file
def test_truncated_weights_are_named_before_loading(checkpoint, corpus, tmp_path):
    model = tmp_path / "truncated"
    shutil.copytree(checkpoint, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"{weights}: not a readable safetensors file"):
        check_weight_files(model)
    with pytest.raises(SystemExit, match=f"{weights}: not a readable safetensors file"):
        evaluate(model, corpus, tmp_path / "eval")
    assert not (tmp_path / "eval").exists()
    transcript = tmp_path / "900_Transcript.csv"
    transcript.write_text("Start_Time,End_Time,Text,Confidence\n0.1,2.0,hello,0.9\n")
    done = cli("mllm-dr-predict", "--model", str(model), "--transcript", str(transcript), "--output_dir",
               str(tmp_path / "report"), "--device", "cpu", cwd=tmp_path)  # fmt: skip
    assert str(weights) in one_line_refusal(done)


def test_a_torn_middle_line_is_named_and_a_torn_last_line_is_redone(checkpoint, corpus, clean_eval, tmp_path):
    predictions = resumable_copy(clean_eval, tmp_path / "middle")
    lines = predictions.read_text().splitlines(keepends=True)
    predictions.write_text("".join([lines[0], lines[1][: len(lines[1]) // 2] + "\n", *lines[2:]]))
    with pytest.raises(SystemExit, match=f"{predictions}:2: not valid JSON"):
        evaluate(checkpoint, corpus, predictions.parent)

    predictions = resumable_copy(clean_eval, tmp_path / "last")
    predictions.write_text("".join(lines[:-1]) + lines[-1][:20])  # a killed write
    evaluate(checkpoint, corpus, predictions.parent)
    redone = predictions.read_text().splitlines(keepends=True)
    assert redone[:-1] == lines[:-1] and len(redone) == len(lines)  # the torn record was dropped and redone once
    assert {k: json.loads(redone[-1])[k] for k in ("participant_id", "item_index")} == {
        k: json.loads(lines[-1])[k] for k in ("participant_id", "item_index")
    }


def test_predict_names_a_pickled_or_unreadable_feature_file(checkpoint, tmp_path):
    transcript = tmp_path / "900_Transcript.csv"
    transcript.write_text("Start_Time,End_Time,Text,Confidence\n0.1,2.0,hello,0.9\n")
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    for modality, bad in (("--audio", pickled), ("--video", empty)):
        with pytest.raises(SystemExit, match=rf"{modality}: {bad}: "):
            predict.main(["--model", str(checkpoint), "--transcript", str(transcript), modality, str(bad),
                          "--output_dir", str(tmp_path / "report"), "--device", "cpu"])  # fmt: skip
    assert not (tmp_path / "report").exists()


# ------------------------------------------------------------------ issue 13: every refusal before generation
def never(what: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{what} ran although the run had to be refused first")

    return refuse


def relabel(corpus: Path, split: str, keep_labels: int) -> None:
    """Removes the item labels and totals of all but the first ``keep_labels`` participants of ``split``."""
    import datasets

    splits = datasets.load_from_disk(str(corpus))
    rows = {name: part.to_list() for name, part in splits.items()}
    del splits
    keep = sorted({r["participant_id"] for r in rows[split]})[:keep_labels]
    for row in rows[split]:
        if row["participant_id"] not in keep:
            row["label"], row["total"] = None, None
    staged = corpus.with_name(corpus.name + ".new")
    datasets.DatasetDict({name: datasets.Dataset.from_list(r) for name, r in rows.items()}).save_to_disk(str(staged))
    shutil.rmtree(corpus)
    staged.rename(corpus)


@pytest.mark.parametrize("labelled", [0, 1])
def test_too_few_labelled_participants_are_refused_before_the_model_loads(checkpoint, tmp_path, monkeypatch, labelled):
    from mllm_dr.inference import generation

    corpus = make_prepared_corpus(tmp_path / "corpus", {"train": 2, "test": 3}, items=(1, 2))
    relabel(corpus, "test", labelled)
    monkeypatch.setattr(ev, "load_model", never("load_model"))
    monkeypatch.setattr(generation, "generate_items", never("generation"))
    for extra in ((), ("--train_mean",)):
        with pytest.raises(SystemExit) as refused:
            evaluate(checkpoint, corpus, tmp_path / "eval", *extra)
        message = str(refused.value)
        assert "\n" not in message and f"{corpus}: split 'test'" in message
        assert f"{labelled} of 3 participant(s) have a known PHQ total" in message and "at least 2" in message
        assert not (tmp_path / "eval").exists()


def test_participants_dropped_by_the_feature_check_are_counted_before_generating(checkpoint, tmp_path, monkeypatch):
    import datasets

    from mllm_dr.inference import generation

    corpus = make_prepared_corpus(tmp_path / "corpus", {"train": 2, "test": 2}, items=(1, 2))
    first = datasets.load_from_disk(str(corpus))["test"][0]
    Path(first["audio_files"][0]).write_bytes(b"")  # one of the two is skipped when its features are read
    monkeypatch.setattr(generation, "generate_items", never("generation"))
    with pytest.raises(SystemExit, match=r"split 'test' has no rows|1 of 1 participant\(s\) have a known PHQ total"):
        evaluate(checkpoint, corpus, tmp_path / "eval", "--on_error", "skip")
    assert not (tmp_path / "eval").exists()


def test_a_train_mean_baseline_without_train_labels_is_refused_before_writing(tmp_path):
    corpus = make_prepared_corpus(tmp_path / "corpus", {"train": 2, "test": 2}, items=(1, 2))
    relabel(corpus, "train", 0)
    with pytest.raises(SystemExit, match="the train-mean baseline needs item labels in the train split"):
        evaluate(tmp_path / "no_model", corpus, tmp_path / "eval", "--train_mean")
    assert not (tmp_path / "eval").exists()  # no manifest left behind that a rerun would have to match


def test_broken_features_found_while_generating_are_one_line(checkpoint, tmp_path, monkeypatch):
    from mllm_dr.inference import generation

    corpus = make_prepared_corpus(tmp_path / "corpus", {"train": 2, "test": 2}, items=(1, 2))
    monkeypatch.setattr(generation, "generate_items", lambda *a, **k: (_ for _ in ()).throw(ValueError("x.npy: NaN")))
    with pytest.raises(SystemExit, match=r"^error: x.npy: NaN \(the items done so far are kept: rerun to resume\)$"):
        evaluate(checkpoint, corpus, tmp_path / "eval")
