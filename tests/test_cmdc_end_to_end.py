"""CMDC end to end with documented flags only: a 6-subject synthetic CMDC-layout corpus (709-d
OpenFace video, 768-d HuBERT audio, no dev split) trains stage 1 and stage 2 and evaluates; the
LQ-formers' widths come from the data, and a trained model refuses data of another width."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from mllm_dr.commands import evaluate, train
from mllm_dr.data import CorpusArguments, hold_out_dev, load_cmdc, load_splits
from mllm_dr.synthetic import make_synthetic_cmdc
from mllm_dr.training import ModelArguments, build_config_overrides
from mllm_dr.training.stages import FeatureWidth
from training_fixtures import TINY_OVERRIDES, common_args

# The tiny sizes without feature_dim: the widths must come from the data.
SIZES = json.loads(TINY_OVERRIDES)
for _key in ("audio_config", "video_config"):
    SIZES[_key].pop("feature_dim")


def cmdc_args(data: Path, **extra: str) -> list[str]:
    return common_args(data, steps=2, **{"--dataset_format": "cmdc", "--model_overrides": json.dumps(SIZES), **extra})


@pytest.fixture(scope="module")
def cmdc_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cmdc") / "corpus"
    make_synthetic_cmdc(root, 6, seed=0, seconds=0.4)
    return root


class Messages(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def stage1(cmdc_corpus, backbone_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    """A stage-1 run with the default flags (no dev split: no dev evaluation) and what it logged."""
    out = tmp_path_factory.mktemp("cmdc_runs") / "s1"
    messages = Messages()
    logging.getLogger("mllm_dr.train").addHandler(messages)
    try:
        flags = ["--stage", "1", "--backbone", str(backbone_dir), "--output_dir", str(out)]
        code = train.main([*flags, *cmdc_args(cmdc_corpus)])
    finally:
        logging.getLogger("mllm_dr.train").removeHandler(messages)
    assert code == 0
    return out, messages.lines


def test_synthetic_cmdc_layout_reads_with_the_loader(cmdc_corpus, tmp_path):
    data, report = load_cmdc(cmdc_corpus, return_report=True, rationales_path=cmdc_corpus / "rationales.jsonl")
    assert {s: sorted(set(data[s]["participant_id"])) for s in data} == {
        "train": ["HC01", "HC02", "HC03", "MDD01"], "dev": [], "test": ["HC41", "MDD21"],
    }
    assert not report.skipped and len(data["train"]) == 4 * 9
    row = next(r for r in data["train"] if r["participant_id"] == "HC01" and r["item_index"] == 1)
    assert row["transcript"].startswith("Q4: ") and "\nQ6: " in row["transcript"]  # the paper's item-1 questions
    assert [Path(f).name for f in row["video_files"]] == ["Q4.csv", "Q6.csv"]
    assert row["rationale"].startswith("(Synthetic template rationale.)")
    assert any("no video files" in note and "HC03" in note for note in report.notes)  # a missing modality
    again = tmp_path / "again"
    make_synthetic_cmdc(again, 6, seed=0, seconds=0.4)
    for path in sorted(p for p in cmdc_corpus.rglob("*") if p.is_file()):
        assert (again / path.relative_to(cmdc_corpus)).read_bytes() == path.read_bytes(), path


def test_cmdc_trains_both_stages_without_a_dev_split_and_evaluates(cmdc_corpus, stage1, tmp_path, caplog):
    stage1, messages = stage1
    logged = [line for line in messages if "has no dev split" in line]
    assert logged and "without dev evaluation" in logged[0] and "--dev_fraction" in logged[0]
    manifest = json.loads((stage1 / "run_manifest.json").read_text())
    assert manifest["data"]["dev_source"] == "none" and manifest["data"]["dev_samples"] == 0
    assert not any("eval_loss" in entry for entry in manifest["log_history"])
    assert manifest["data"]["feature_widths"] == {"audio": 768, "video": 709}
    config = json.loads((stage1 / "config.json").read_text())
    assert config["video_config"]["feature_dim"] == 709 and config["audio_config"]["feature_dim"] == 768
    assert manifest["global_step"] == 2

    # Stage 2 holds out half of the train subjects as dev (participant-disjoint) and evaluates on them.
    out = tmp_path / "s2"
    flags = cmdc_args(cmdc_corpus, **{"--rationales": str(cmdc_corpus / "rationales.jsonl"), "--dev_fraction": "0.5"})
    with caplog.at_level(logging.INFO, logger="mllm_dr.data"):
        assert train.main(["--stage", "2", "--init_from", str(stage1), "--output_dir", str(out), *flags]) == 0
    data = json.loads((out / "run_manifest.json").read_text())["data"]
    assert data["dev_source"] == "held_out_fraction" and data["dev_held_out"]
    held_out = len(data["dev_held_out"])
    assert data["dev_samples"] == 9 * held_out and data["train_samples"] == 9 * (4 - held_out)
    assert "eval_loss" in json.loads((out / "run_manifest.json").read_text())["final_metrics"]
    assert any("held out" in record.getMessage() for record in caplog.records)

    code = evaluate.main([
        "--model", str(out / "merged"), "--data_dir", str(cmdc_corpus), "--dataset_format", "cmdc", "--split", "test",
        "--output_dir", str(tmp_path / "eval"), "--max_new_tokens", "8", "--batch_size", "9", "--n_bootstrap", "0",
    ])  # fmt: skip
    assert code in (0, None)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert json.dumps(metrics)  # written
    predictions = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 2 * 9


def test_init_from_refuses_data_of_another_width(stage1, tmp_path):
    stage1, _messages = stage1
    # The per-question 768-d visual vectors (Q<n>.npy) instead of the 709-d OpenFace frames the model learnt on.
    other = tmp_path / "cmdc768"
    make_synthetic_cmdc(other, 6, seed=0, seconds=0.4)
    for folder in [*other.glob("HC/*"), *other.glob("MDD/*")]:
        for q in range(1, 13):
            np.save(folder / f"Q{q}.npy", np.zeros((1, 768), np.float32))
    vectors = json.dumps({"video_pattern": "Q{q}.npy", "video_dim": 768})
    flags = cmdc_args(other, **{"--rationales": str(other / "rationales.jsonl"), "--corpus_kwargs": vectors})
    with pytest.raises(SystemExit) as refused:
        train.main(["--stage", "2", "--init_from", str(stage1), "--output_dir", str(tmp_path / "s2"), *flags])
    message = str(refused.value)
    assert "video frames 709 wide" in message and "768 wide" in message and "participant HC01" in message
    assert "Q1.npy" in message or "Q4.npy" in message


def test_feature_dim_given_against_the_data_is_refused():
    given = json.dumps({"video_config": {"feature_dim": 2048}})
    widths = {"video": FeatureWidth(709, "/data/CMDC/HC/HC01/Q1.csv", "HC01")}
    with pytest.raises(ValueError, match=r"feature_dim 2048.*709 wide \(participant HC01: /data/CMDC/HC/HC01/Q1.csv\)"):
        build_config_overrides(ModelArguments(model_overrides=given), widths)
    overrides = build_config_overrides(ModelArguments(preset="paper"), widths)  # the paper preset's 2048 gives way
    assert overrides["video_config"].feature_dim == 709 and overrides["audio_config"].feature_dim == 768


def test_dev_fraction_is_participant_disjoint_seeded_and_stratified(cmdc_corpus):
    args = CorpusArguments(data_dir=str(cmdc_corpus), dataset_format="cmdc", dev_fraction=0.5)
    corpus = load_splits(args, ("train", "dev", "test"))
    train_ids, dev_ids = set(corpus["train"]["participant_id"]), set(corpus["dev"]["participant_id"])
    assert corpus.dev_source == "held_out_fraction" and sorted(dev_ids) == corpus.dev_participants
    assert dev_ids and not train_ids & dev_ids and train_ids | dev_ids == {"HC01", "HC02", "HC03", "MDD01"}
    assert set(corpus["dev"]["split"]) == {"dev"} and set(corpus["test"]["participant_id"]) == {"HC41", "MDD21"}
    # MDD01 is the only train subject at PHQ-9 >= 10: its stratum keeps it in train.
    assert "MDD01" in train_ids
    assert load_splits(args, ("dev",)).dev_participants == corpus.dev_participants  # the same draw in every command
    assert load_splits(CorpusArguments(data_dir=str(cmdc_corpus), dataset_format="cmdc"), ("dev",)).dev_source == "none"
    with pytest.raises(ValueError, match="without a dev split: this one has one"):
        hold_out_dev(corpus.data, 0.5)
    with pytest.raises(ValueError, match="holds out no participant"):
        hold_out_dev({"train": corpus["train"].select(range(9))}, 0.5)
