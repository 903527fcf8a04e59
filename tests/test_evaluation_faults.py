"""Evaluation and prediction under faults (issue 12): a model retrained in place or labels changed
since the predictions were written, duplicated or torn prediction lines, a concurrent run, code in a
checkpoint folder, damaged weights, a foreign config, a pickled feature file; and what was left out
is recorded in every output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_training import common_args
from training_fixtures import make_prepared_corpus

from mllm_dr.commands import evaluate as ev
from mllm_dr.commands import predict, train
from mllm_dr.inference import model_fingerprint
from mllm_dr.io import exclusive_lock

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, backbone_dir):
    root = tmp_path_factory.mktemp("faults")
    corpus = make_prepared_corpus(root, {"train": 4, "dev": 2, "test": 4}, items=(1, 2))
    train.main(["--stage", "1", "--backbone", str(backbone_dir), "--output_dir", str(root / "s1"), *common_args(corpus, steps=2)])
    train.main(["--stage", "2", "--init_from", str(root / "s1"), "--output_dir", str(root / "s2"), *common_args(corpus, steps=2)])
    clean = root / "clean"
    run_eval(root / "s2", corpus, clean)
    return root, corpus, clean


def eval_args(model: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--data_dir", str(corpus), "--dataset_format", "prepared", "--split", "test",
            "--output_dir", str(out), "--max_new_tokens", "6", "--batch_size", "4", "--n_bootstrap", "0", "--greedy",
            *extra]  # fmt: skip


def run_eval(model: Path, corpus: Path, out: Path, *extra: str) -> dict:
    ev.main(eval_args(model, corpus, out, *extra))
    return json.loads((out / "metrics.json").read_text())


def scores(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "throughput"}


def resumable_copy(clean: Path, destination: Path) -> Path:
    shutil.copytree(clean, destination)
    (destination / "metrics.json").unlink()
    return destination


# --- class 2
def test_fingerprint_changes_with_any_weight_and_a_resume_refuses_the_other_model(setup, tmp_path):
    root, corpus, clean = setup
    model = tmp_path / "model"
    shutil.copytree(root / "s2" / "merged", model)
    before = model_fingerprint(model)
    state = load_file(str(model / "model.safetensors"))
    name = next(n for n, t in state.items() if t.dtype == torch.float32)
    state[name] = state[name] + 1e-3  # same names, same sizes
    save_file(state, str(model / "model.safetensors"), metadata={"format": "pt"})
    assert model_fingerprint(model) != before
    out = resumable_copy(clean, tmp_path / "eval")
    json_manifest = json.loads((out / "manifest.json").read_text())
    json_manifest["model"]["path"] = str(model)  # the same folder, retrained in place
    (out / "manifest.json").write_text(json.dumps(json_manifest))
    with pytest.raises(SystemExit, match=r"different settings \(model\)"):
        ev.main(eval_args(model, corpus, out))


def test_changed_labels_are_not_reused_on_resume(setup, tmp_path):
    root, corpus, _clean = setup
    data = datasets.load_from_disk(str(corpus))
    copy = tmp_path / "corpus"
    data.save_to_disk(str(copy))
    out = tmp_path / "eval"
    run_eval(root / "s2", copy, out)
    pid = data["test"][0]["participant_id"]
    relabelled = {name: split.map(lambda r: {**r, "label": (r["label"] + 1) % 4} if r["participant_id"] == pid else r)
                  for name, split in data.items()}  # fmt: skip
    shutil.rmtree(copy)
    datasets.DatasetDict(relabelled).save_to_disk(str(copy))
    (out / "metrics.json").unlink()
    with pytest.raises(SystemExit, match=rf"predictions.jsonl:\d+: participant {pid}, item 1 was predicted when its label was"):
        ev.main(eval_args(root / "s2", copy, out))


# --- class 3
def test_a_duplicated_line_counts_once_and_a_conflicting_one_is_refused(setup, tmp_path):
    root, corpus, clean = setup
    reference = scores(json.loads((clean / "metrics.json").read_text()))
    out = resumable_copy(clean, tmp_path / "dup")
    lines = (out / "predictions.jsonl").read_text().splitlines(keepends=True)
    (out / "predictions.jsonl").write_text("".join([*lines, lines[0]]))
    assert scores(run_eval(root / "s2", corpus, out)) == reference

    out = resumable_copy(clean, tmp_path / "conflict")
    record = json.loads(lines[0])
    record["score"] = 3 - record["score"]
    (out / "predictions.jsonl").write_text("".join([*lines, json.dumps(record) + "\n"]))
    with pytest.raises(SystemExit, match=rf"predictions.jsonl:{len(lines) + 1}: .* already predicted differently on line 1"):
        ev.main(eval_args(root / "s2", corpus, out))


def test_a_second_evaluation_into_a_locked_folder_is_refused(setup, tmp_path):
    root, corpus, _clean = setup
    out = tmp_path / "locked"
    code = "import sys, time; from mllm_dr.io import exclusive_lock\nwith exclusive_lock(sys.argv[1], 'evaluation'):\n    print('held', flush=True); time.sleep(120)\n"
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit, match="is in use by another evaluation"):
            ev.main(eval_args(root / "s2", corpus, out))
    finally:
        holder.kill()
        holder.wait()
    with exclusive_lock(out, "evaluation"):
        pass  # released with its holder; the lock files do not make the folder "not empty"
    run_eval(root / "s2", corpus, out)


# --- class 8
def test_checkpoint_code_runs_only_when_asked_and_a_difference_is_reported(setup, tmp_path, capsys):
    root, corpus, _clean = setup
    model = tmp_path / "model"
    shutil.copytree(root / "s2" / "merged", model)
    marker = tmp_path / "ran"
    with (model / "modeling_mllm_dr.py").open("a") as handle:
        handle.write(f"\nopen({str(marker)!r}, 'w').write('ran')\n")
    run_eval(model, corpus, tmp_path / "eval")
    assert not marker.exists()
    assert "modeling_mllm_dr.py differ(s) from the installed" in capsys.readouterr().err
    help_text = subprocess.run([sys.executable, str(ROOT / "evaluate_mllm_dr.py"), "--help"], capture_output=True, text=True).stdout
    assert "--trust_remote_code" in help_text


# --- class 9 (evaluation)
def test_missing_modality_and_skips_are_recorded_in_every_output(setup, tmp_path):
    root, corpus, clean = setup
    data = datasets.load_from_disk(str(corpus))
    without = sorted({r["participant_id"] for r in data["test"] if not r["video_files"]})
    assert without, "the fixture has test participants without video"
    manifest = json.loads((clean / "manifest.json").read_text())
    metrics = json.loads((clean / "metrics.json").read_text())
    assert manifest["data"]["left_out"]["missing_modality"]["video"] == without
    assert metrics["left_out"]["missing_modality"]["video"] == without
    assert f"Scored without video features (no video file): {', '.join(without)}" in (clean / "report.md").read_text()
    out = tmp_path / "skip"
    run_eval(root / "s2", corpus, out, "--require_modalities", "video", "--on_error", "skip")
    skipped = json.loads((out / "metrics.json").read_text())["left_out"]["skipped"]
    assert sorted(s["participant_id"] for s in skipped) == without
    assert "## Left out (--on_error skip)" in (out / "report.md").read_text()


# --- class 11 (inference)
def test_damaged_inputs_are_named_in_one_line(setup, tmp_path, backbone_dir):
    root, corpus, clean = setup
    model = tmp_path / "model"
    shutil.copytree(root / "s2" / "merged", model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(SystemExit, match=rf"{weights}: not a readable safetensors file"):
        ev.main(eval_args(model, corpus, tmp_path / "a"))
    with pytest.raises(SystemExit, match=rf"{backbone_dir / 'config.json'}: model_type 'llama' is not MLlm-DR's"):
        ev.main(eval_args(backbone_dir, corpus, tmp_path / "b"))

    out = resumable_copy(clean, tmp_path / "torn")
    lines = (out / "predictions.jsonl").read_text().splitlines(keepends=True)
    lines[1] = lines[1][:20] + "\n"
    (out / "predictions.jsonl").write_text("".join(lines))
    with pytest.raises(SystemExit, match=rf"{out / 'predictions.jsonl'}:2: not valid JSON"):
        ev.main(eval_args(root / "s2", corpus, out))

    transcript = tmp_path / "300_Transcript.csv"
    transcript.write_text("start_time\tstop_time\tspeaker\tvalue\n0\t1\tParticipant\tI sleep badly\n")
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    result = subprocess.run(
        [sys.executable, "-m", "mllm_dr.commands.predict", "--model", str(root / "s2"), "--transcript", str(transcript),
         "--audio", str(pickled), "--output_dir", str(tmp_path / "p")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0 and str(pickled) in result.stderr and "Traceback" not in result.stderr, result.stderr[-1500:]
    assert predict  # the command module imports
