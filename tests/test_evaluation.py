"""Evaluation end to end on a tiny trained model, resume, refusals, baselines, aggregate; prediction."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score, mean_absolute_error, mean_squared_error
from training_fixtures import common_args, make_prepared_corpus

from mllm_dr.checkpoints import load_adapter_export
from mllm_dr.commands import evaluate as ev
from mllm_dr.commands import predict, train
from mllm_dr.data import read_features
from mllm_dr.inference import generate_with_shared_prefix, generation, model_fingerprint, shares_prefix

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, backbone_dir):
    root = tmp_path_factory.mktemp("eval")
    corpus = make_prepared_corpus(root, {"train": 6, "dev": 2, "test": 5}, items=(1, 2, 3))
    train.main(["--stage", "1", "--backbone", str(backbone_dir), "--output_dir", str(root / "s1"), *common_args(corpus, steps=2)])
    train.main(
        ["--stage", "2", "--init_from", str(root / "s1"), "--output_dir", str(root / "s2"), *common_args(corpus, steps=3)]
    )
    return root, corpus


def run_eval(model: Path, corpus: Path, out: Path, *extra: str) -> dict:
    ev.main(["--model", str(model), "--data_dir", str(corpus), "--dataset_format", "prepared", "--split", "test",
             "--output_dir", str(out), "--max_new_tokens", "12", "--batch_size", "4", "--n_bootstrap", "200", *extra])
    return json.loads((out / "metrics.json").read_text())


def ccc(pred, true):
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    cov = ((pred - pred.mean()) * (true - true.mean())).mean()
    return 2 * cov / (pred.var() + true.var() + (pred.mean() - true.mean()) ** 2)


def test_end_to_end_files_and_independent_recomputation(setup, tmp_path):
    root, corpus = setup
    out = tmp_path / "eval"
    metrics = run_eval(root / "s2", corpus, out)
    assert {"predictions.jsonl", "metrics.json", "manifest.json", "report.md", "totals_scatter.png",
            "confusion_matrix.png", "per_item_mae.png"} <= {p.name for p in out.iterdir()}
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 15
    required = {"participant_id", "item_index", "item_name", "generated_text", "parsed_score", "head_score", "score",
                "label", "fell_back"}
    assert all(required <= set(p) for p in predictions)
    for p in predictions:  # the head stands in exactly when the text breaks format
        assert p["fell_back"] == (p["parsed_score"] is None)
        expected = p["parsed_score"] if p["parsed_score"] is not None else min(max(p["head_score"], 0), 3)
        assert p["score"] == pytest.approx(expected)
    totals: dict[str, float] = {}
    truth: dict[str, float] = {}
    for p in predictions:
        totals[p["participant_id"]] = totals.get(p["participant_id"], 0.0) + p["score"]
        truth[p["participant_id"]] = p["total"]
    pids = sorted(totals)
    pred, true = [totals[k] for k in pids], [truth[k] for k in pids]
    assert metrics["ccc"] == pytest.approx(ccc(pred, true), abs=1e-9)
    assert metrics["mae"] == pytest.approx(mean_absolute_error(true, pred))
    assert metrics["rmse"] == pytest.approx(math.sqrt(mean_squared_error(true, pred)))
    assert metrics["f1"] == pytest.approx(f1_score(np.array(true) >= 10, np.array(pred) >= 10, zero_division=0))
    assert metrics["cutoff"] == 10
    assert metrics["format_failure_rate"] == pytest.approx(sum(p["parsed_score"] is None for p in predictions) / 15)
    assert metrics["fallback_count"] == sum(p["fell_back"] for p in predictions)
    assert metrics["throughput"]["items_per_second"] > 0
    report = (out / "report.md").read_text()
    assert "not a diagnostic device" in report and "![totals_scatter.png]" in report
    manifest = json.loads((out / "manifest.json").read_text())  # what --aggregate compares between runs
    assert manifest["questionnaire"] == "phq8" and manifest["model"]["kind"] == "checkpoint"
    assert manifest["model"]["fingerprint"] == model_fingerprint(root / "s2" / "merged")
    cuts = manifest["data"]["transcripts"]  # the model's budget (32 tokens here) against each transcript
    assert cuts["budget"] == 32 and cuts["participants"] == 5
    assert cuts["truncated"] == len(cuts["cut_tokens"]) and all(n > 0 for n in cuts["cut_tokens"].values())
    assert f"- Transcripts: budget 32 tokens; {cuts['truncated']} of 5 participants" in report


def test_resume_after_interruption_equals_uninterrupted(setup, tmp_path, monkeypatch):
    root, corpus = setup
    straight = tmp_path / "straight"
    run_eval(root / "s2", corpus, straight)
    interrupted = tmp_path / "interrupted"
    original = generation.generate_items
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(generation, "generate_items", dying)
    with pytest.raises(KeyboardInterrupt):
        run_eval(root / "s2", corpus, interrupted)
    assert len((interrupted / "predictions.jsonl").read_text().splitlines()) == 3  # one participant's batch
    assert not (interrupted / "metrics.json").exists()
    monkeypatch.setattr(generation, "generate_items", original)
    run_eval(root / "s2", corpus, interrupted)
    assert (interrupted / "predictions.jsonl").read_text() == (straight / "predictions.jsonl").read_text()
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (straight, interrupted))
    assert {k: v for k, v in a.items() if k != "throughput"} == {k: v for k, v in b.items() if k != "throughput"}


def test_mismatched_manifest_is_refused(setup, tmp_path):
    root, corpus = setup
    out = tmp_path / "eval"
    run_eval(root / "s2", corpus, out)
    before = (out / "predictions.jsonl").read_text()
    with pytest.raises(SystemExit, match="different settings"):
        run_eval(root / "s2", corpus, out, "--seed", "5")
    assert (out / "predictions.jsonl").read_text() == before


def test_bad_inputs_fail_clearly_and_write_nothing(setup, tmp_path):
    root, corpus = setup
    no_processor = tmp_path / "no_processor"
    shutil.copytree(root / "s2" / "merged", no_processor)
    (no_processor / "processor_config.json").unlink()
    with pytest.raises(SystemExit, match="no processor"):
        run_eval(no_processor, corpus, tmp_path / "out1")
    assert not (tmp_path / "out1").exists()

    import datasets

    data = datasets.load_from_disk(str(corpus))
    bad_dir = tmp_path / "bad_features"
    bad_dir.mkdir()
    np.save(bad_dir / "wrong.npy", np.zeros((4, 7), np.float32))
    broken = data["test"].map(lambda r: {"audio_files": [str(bad_dir / "wrong.npy")]})
    datasets.DatasetDict({"test": broken}).save_to_disk(str(tmp_path / "broken"))
    with pytest.raises(SystemExit, match=r"audio features .*wrong.npy are 7 wide, the model expects \(frames, 12\)"):
        run_eval(root / "s2", tmp_path / "broken", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()

    empty = data["test"].map(lambda r: {"transcript": "  "})
    datasets.DatasetDict({"test": empty}).save_to_disk(str(tmp_path / "empty"))
    with pytest.raises(SystemExit, match="transcript is empty"):
        run_eval(root / "s2", tmp_path / "empty", tmp_path / "out3")
    assert not (tmp_path / "out3").exists()


def test_baselines_and_aggregate(setup, tmp_path, backbone_dir, capsys):
    root, corpus = setup
    mean_metrics = run_eval(root / "s2", corpus, tmp_path / "mean", "--train_mean")
    predictions = [json.loads(line) for line in (tmp_path / "mean" / "predictions.jsonl").read_text().splitlines()]
    import datasets

    train_rows = datasets.load_from_disk(str(corpus))["train"]
    item1 = np.mean([r["label"] for r in train_rows if r["item_index"] == 1])
    assert all(p["score"] == pytest.approx(item1) for p in predictions if p["item_index"] == 1)
    assert mean_metrics["format_failure_rate"] is None

    zero = run_eval(backbone_dir, corpus, tmp_path / "zero", "--zero_shot", "--greedy")
    zero_predictions = [json.loads(line) for line in (tmp_path / "zero" / "predictions.jsonl").read_text().splitlines()]
    assert all(p["head_score"] is None and not p["fell_back"] for p in zero_predictions)
    assert zero["format_failures"] == sum(p["parsed_score"] is None for p in zero_predictions)
    assert all(p["score"] == 0.0 for p in zero_predictions if p["parsed_score"] is None)  # a failure scores nothing

    runs = [str(tmp_path / "mean"), str(tmp_path / "zero")]
    with pytest.raises(SystemExit) as refused:  # the train-mean baseline is not a run of the zero-shot backbone
        ev.main(["--aggregate", *runs])
    message = str(refused.value)
    assert "\n" not in message and "kind (" in message and "train_mean_baseline" in message
    assert "zero_shot_backbone" in message and all(run in message for run in runs)
    ev.main(["--aggregate", *runs, "--group_by", message.rsplit("--group_by ", 1)[1]])
    table = capsys.readouterr().out
    assert table.count("| std |") == 2 and "| zero |" in table and "| mean |" in table
    assert "### kind \"train_mean_baseline\"" in table and "### kind \"zero_shot_backbone\"" in table


def test_predict_one_interview_with_a_missing_modality(setup, tmp_path, capsys):
    root, _ = setup
    transcript = tmp_path / "900_Transcript.csv"
    transcript.write_text(
        'Start_Time,End_Time,Text,Confidence\n0.1,2.0,"hello, low every day",0.9\n2.5,4.0,thanks,0.8\n'
    )
    audio = tmp_path / "900_HuBERT.npy"
    np.save(audio, np.random.default_rng(0).standard_normal((9, 12)).astype(np.float32))
    out = tmp_path / "report"
    predict.main(["--model", str(root / "s2"), "--transcript", str(transcript), "--audio", str(audio),
                  "--output_dir", str(out), "--max_new_tokens", "10", "--greedy"])
    report = json.loads((out / "prediction.json").read_text())
    assert report["participant_id"] == "900" and len(report["items"]) == 8
    assert report["total"] == pytest.approx(sum(item["score"] for item in report["items"]))
    assert "no video features: scored without that modality" in report["flags"]
    assert "not a diagnostic device" in report["disclaimer"]
    assert report["screen_positive"] == (report["total"] >= 10)
    markdown = (out / "prediction.md").read_text()
    assert "Needs a human" in markdown and "research tool" in markdown
    assert "Needs a human" in capsys.readouterr().out
    # a disagreement of 2 or more between text and head is flagged; PHQ-9 item 9 always needs review
    items = [
        {"item_index": 1, "item_name": "NoInterest", "score": 3.0, "parsed_score": 3, "head_score": 0.5,
         "fell_back": False, "rationale": "r", "generated_text": "t"},
        {"item_index": 9, "item_name": "SelfHarm", "score": 1.0, "parsed_score": 1, "head_score": 1.2,
         "fell_back": False, "rationale": "r", "generated_text": "t"},
    ]
    flags = predict.build_report(items, 10, "phq9", [], "x")["flags"]
    assert any("differ by 2 or more" in f for f in flags) and any("requires clinician review" in f for f in flags)
    with pytest.raises(SystemExit, match=r"video features .*900_HuBERT.npy are 12 wide, the model expects \(frames, 20\)"):
        predict.main(["--model", str(root / "s2"), "--transcript", str(transcript), "--video", str(audio),
                      "--output_dir", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def test_prefix_reuse_matches_full_prefill(setup):
    import datasets

    root, corpus = setup
    model, processor = load_adapter_export(root / "s2" / "adapter", merge=True)
    rows = [dict(r) for r in datasets.load_from_disk(str(corpus))["test"]][:3]
    assert shares_prefix(rows)
    batch = processor([r["transcript"] for r in rows], [r["item_index"] for r in rows],
                      audio_features=[read_features(r["audio_files"]) for r in rows],
                      video_features=[read_features(r["video_files"]) for r in rows], padding_side="left")
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": processor.tokenizer.pad_token_id,
              "output_scores": True, "return_dict_in_generate": True}
    plain = model.generate(**batch, **kwargs)
    reused, prompt_length = generate_with_shared_prefix(model, batch, **kwargs)
    torch_close = __import__("torch").testing.assert_close
    torch_close(reused.head_score, plain.head_score, atol=1e-4, rtol=1e-4)
    torch_close(reused.scores[0], plain.scores[0], atol=1e-3, rtol=1e-3)  # first-step logits
    assert (reused.sequences[:, prompt_length:] == plain.sequences[:, batch["input_ids"].shape[1]:]).all()


def test_bfloat16_inference_runs_and_is_recorded(setup, tmp_path):
    root, corpus = setup
    metrics = run_eval(root / "s2", corpus, tmp_path / "bf16", "--greedy", "--dtype", "bfloat16")
    manifest = json.loads((tmp_path / "bf16" / "manifest.json").read_text())
    assert manifest["dtype"] == "bfloat16"
    predictions = [json.loads(line) for line in (tmp_path / "bf16" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 15 and all(math.isfinite(p["head_score"]) for p in predictions)
    assert metrics["mae"] is not None
    # a different dtype is a different evaluation: resuming into the same folder is refused
    with pytest.raises(SystemExit, match="dtype"):
        run_eval(root / "s2", corpus, tmp_path / "bf16", "--greedy", "--dtype", "float32")


def test_an_untrained_head_never_stands_in(setup, tmp_path):
    # "w/o Joint" (CE only) leaves the MAA head at its random init: no fallback, no head metrics
    root, corpus = setup
    assert json.loads((root / "s2" / "merged" / "config.json").read_text())["score_head_trained"] is True
    ce_only = tmp_path / "ce_only"
    train.main(["--stage", "2", "--init_from", str(root / "s1"), "--output_dir", str(ce_only), "--no_joint_loss",
                *common_args(corpus, steps=1)])
    assert json.loads((ce_only / "merged" / "config.json").read_text())["score_head_trained"] is False
    metrics = run_eval(ce_only, corpus, tmp_path / "eval", "--greedy")
    predictions = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert all(p["head_score"] is None and not p["fell_back"] for p in predictions)
    assert "head_only" not in metrics and metrics["fallback_count"] == 0
    with pytest.raises(SystemExit, match="no trained score head"):
        run_eval(ce_only, corpus, tmp_path / "head", "--score_source", "head")


def test_stage1_probe_scores_every_item_against_the_train_mean(setup, tmp_path):
    root, corpus = setup
    command = [sys.executable, str(ROOT / "benchmarks" / "stage1_probe.py"), "--stage1", str(root / "s1"),
               "--corpus", str(corpus), "--split", "test", "--dataset_format", "prepared", "--output", str(tmp_path / "p.json")]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "p.json").read_text())["items"]
    assert sorted(result) == ["1", "2", "3"]
    for values in result.values():
        assert values["n"] == 5 and 0 <= values["stage1_mae"] <= 3 and 0 <= values["train_mean_mae"] <= 3


def test_aggregate_refuses_runs_of_different_models_or_settings_unless_grouped(setup, tmp_path, capsys):
    root, corpus = setup
    first = tmp_path / "seed0"
    run_eval(root / "s2", corpus, first, "--greedy", "--n_bootstrap", "0")
    seed1 = tmp_path / "seed1"
    run_eval(root / "s2", corpus, seed1, "--greedy", "--n_bootstrap", "0", "--seed", "1")

    def variant(name: str, manifest_change=None, metrics_change=None) -> Path:
        folder = tmp_path / name
        shutil.copytree(first, folder)
        for file, change in (("manifest.json", manifest_change), ("metrics.json", metrics_change)):
            if change:
                data = json.loads((folder / file).read_text())
                change(data)
                (folder / file).write_text(json.dumps(data))
        return folder

    def shifted(metrics):
        metrics["mae"] += 1.0

    other_model = variant("other", lambda m: m["model"].update(fingerprint="0" * 16), shifted)
    other_cutoff = variant("cut9", metrics_change=lambda m: m.update(cutoff=9))
    sampled = variant("sampled", lambda m: m.update(generation="sampling, temperature 0.8, top_k 10, a seed per item"))

    ev.main(["--aggregate", str(first), str(seed1)])  # seeds are meant to differ
    assert "| seed0 |" in capsys.readouterr().out

    for other, field in ((other_model, "model"), (other_cutoff, "cutoff"), (sampled, "generation")):
        with pytest.raises(SystemExit) as refused:
            ev.main(["--aggregate", str(first), str(seed1), str(other)])
        message = str(refused.value)
        assert "\n" not in message and f"differ in {field} (" in message
        assert message.endswith(f"--group_by {field}")  # the one field that differs: never the seed
        assert f"{first}, {seed1}" in message and str(other) in message

    ev.main(["--aggregate", str(first), str(seed1), str(other_model), "--group_by", "model",
             "--output_dir", str(tmp_path / "summary")])  # fmt: skip
    table = capsys.readouterr().out
    fingerprint = json.loads((first / "manifest.json").read_text())["model"]["fingerprint"]
    assert f'### model "{fingerprint}" (2 run(s))' in table and f'### model "{"0" * 16}" (1 run(s))' in table
    groups = table.split("### ")[1:]
    mae = lambda folder: json.loads((folder / "metrics.json").read_text())["mae"]  # noqa: E731
    mean_row = lambda group: next(line for line in group.splitlines() if line.startswith("| mean |"))  # noqa: E731
    assert f"{(mae(first) + mae(seed1)) / 2:.3f}" in mean_row(groups[0]).split("|")[7]
    assert f"{mae(other_model):.3f}" in mean_row(groups[1]).split("|")[7]
    assert (tmp_path / "summary" / "aggregate.md").read_text() == table
    # grouping by one field still refuses a difference in another within a group
    with pytest.raises(SystemExit, match=r"differ in cutoff .* --group_by cutoff$"):
        ev.main(["--aggregate", str(first), str(other_cutoff), str(other_model), "--group_by", "model"])
    with pytest.raises(SystemExit, match="--group_by seed: not a run field"):
        ev.main(["--aggregate", str(first), str(seed1), "--group_by", "seed"])
    with pytest.raises(SystemExit, match="given twice"):
        ev.main(["--aggregate", str(first), str(first)])
    with pytest.raises(SystemExit, match="--group_by groups the runs of --aggregate"):
        ev.main(["--group_by", "model"])


# ----------------------------------------------------------------------------- score sources (issue 15)
def test_choose_score_expected_and_combined():
    from mllm_dr.inference import choose_score

    assert choose_score(2, 1.0, "expected", 0.0, 0, 3, expected=1.6) == (1.6, False)
    assert choose_score(2, 1.0, "expected", 0.0, 0, 3, expected=None) == (2.0, False)  # no probabilities: the digit
    assert choose_score(None, 5.0, "expected", 0.0, 0, 3) == (3.0, True)  # no digit: the head, clipped
    assert choose_score(None, None, "expected", 0.5, 0, 3) == (0.5, False)
    assert choose_score(2, 1.0, "combined", 0.0, 0, 3, expected=1.6, text_weight=0.25) == (pytest.approx(1.15), False)
    assert choose_score(None, 1.0, "combined", 0.0, 0, 3, text_weight=0.25) == (1.0, True)
    with pytest.raises(ValueError, match="text_weight"):
        choose_score(2, 1.0, "combined", 0.0, 0, 3, expected=1.6)
    assert choose_score(2, 1.0, "generated_with_head_fallback", 0.0, 0, 3, expected=1.6) == (2.0, False)  # the paper's


def test_fit_text_weight_is_the_least_squares_weight():
    from mllm_dr.evaluation import fit_text_weight

    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, 40).astype(float)
    text, head = label + rng.normal(0, 0.4, 40), label + rng.normal(0, 0.9, 40)
    records = [{"label": y, "expected_score": t, "parsed_score": None, "head_score": h} for y, t, h in zip(label, text, head)]
    fit = fit_text_weight(records)
    grid = np.linspace(0, 1, 10001)
    clipped = np.clip(head, 0, 3)
    best = grid[np.argmin([np.mean((w * text + (1 - w) * clipped - label) ** 2) for w in grid])]
    assert fit["text_weight"] == pytest.approx(best, abs=1e-3) and 0.5 < fit["text_weight"] < 1
    assert fit["mse"] <= min(fit["mse_text"], fit["mse_head"]) and fit["n_items"] == 40
    with pytest.raises(ValueError, match="fit needs 2"):
        fit_text_weight(records[:1])


def test_cross_fitted_combination_never_fits_on_the_participant_it_scores():
    from mllm_dr.evaluation import cross_fitted_combination, score_source_comparison, score_source_lines

    rng = np.random.default_rng(2)
    records = [{"participant_id": f"p{i // 4}", "item_index": i % 4 + 1, "label": int(y), "parsed_score": int(y),
                "expected_score": float(y) + rng.normal(0, 0.5), "head_score": float(y) + rng.normal(0, 0.7),
                "total": 0} for i, y in enumerate(rng.integers(0, 4, 20))]  # fmt: skip
    scored = cross_fitted_combination(records)
    assert len(scored) == 20
    for p in scored:  # by hand: the least-squares weight over the other four participants' 16 items
        others = [r for r in records if r["participant_id"] != p["participant_id"]]
        t = np.array([r["expected_score"] for r in others])
        h = np.clip([r["head_score"] for r in others], 0, 3)
        y = np.array([r["label"] for r in others])
        w = float(np.clip(((t - h) * (y - h)).sum() / ((t - h) ** 2).sum(), 0, 1))
        assert p["score"] == pytest.approx(w * p["expected_score"] + (1 - w) * min(max(p["head_score"], 0), 3))
    sources = score_source_comparison(records, 10, 0, (0, 3))
    assert "combined_cross_fitted" in sources and "combined" not in sources  # no weight given: no plain combined
    expected = np.mean([abs(p["score"] - p["label"]) for p in scored])
    assert sources["combined_cross_fitted"]["item_mae"] == pytest.approx(expected)
    assert cross_fitted_combination(records[:8]) is None  # two participants: too few to leave one out
    lines = "\n".join(score_source_lines(sources, "generated_with_head_fallback", None))
    assert "| combined_cross_fitted |" in lines and "(leave one out)" in lines


def test_combined_score_with_a_weight_fitted_on_dev_only(setup, tmp_path):
    from mllm_dr.evaluation import fit_text_weight

    root, corpus = setup
    model = root / "s2"
    with pytest.raises(SystemExit, match="needs --text_weight"):  # refused before a model loads
        run_eval(model, corpus, tmp_path / "no_weight", "--score_source", "combined")
    with pytest.raises(SystemExit, match=r"\[0, 1\]"):
        run_eval(model, corpus, tmp_path / "bad_weight", "--score_source", "combined", "--text_weight", "1.5")
    plain = run_eval(model, corpus, tmp_path / "plain", "--greedy")
    assert set(plain["score_sources"]) >= {"generated_with_head_fallback", "head"}
    assert plain["score_sources"]["head"]["mae"] == pytest.approx(plain["head_only"]["mae"])
    assert plain["score_sources"]["generated_with_head_fallback"]["mae"] == pytest.approx(plain["mae"])
    test_manifest = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    with pytest.raises(SystemExit, match="test split"):  # a weight is never fitted on test outputs
        run_eval(model, corpus, tmp_path / "on_test", "--score_source", "combined", "--fit_text_weight_on", str(tmp_path / "plain"))

    # a dev evaluation of this model whose texts scored (the tiny model's rarely do): its records as written
    dev = tmp_path / "dev"
    dev.mkdir()
    rng = np.random.default_rng(1)
    records = [{"participant_id": f"d{i // 3}", "item_index": i % 3 + 1, "label": int(y), "parsed_score": int(y),
                "expected_score": float(y) + rng.normal(0, 0.3), "head_score": float(y) + rng.normal(0, 1.0)}
               for i, y in enumerate(rng.integers(0, 4, 12))]  # fmt: skip
    (dev / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    dev_manifest = {**test_manifest, "data": {**test_manifest["data"], "split": "dev"}}
    (dev / "manifest.json").write_text(json.dumps(dev_manifest))
    out = tmp_path / "combined"
    metrics = run_eval(model, corpus, out, "--greedy", "--score_source", "combined", "--fit_text_weight_on", str(dev))
    manifest = json.loads((out / "manifest.json").read_text())
    weight = fit_text_weight(records)["text_weight"]
    assert manifest["text_weight"]["value"] == pytest.approx(weight) and manifest["text_weight"]["split"] == "dev"
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for p in predictions:
        text = p["expected_score"] if p["expected_score"] is not None else p["parsed_score"]
        head = min(max(p["head_score"], 0), 3)
        assert p["score"] == pytest.approx(head if text is None else weight * text + (1 - weight) * head)
        assert p["fell_back"] == (text is None)
    assert metrics["score_source"] == "combined"
    assert metrics["score_sources"]["combined"]["mae"] == pytest.approx(metrics["mae"])
    assert "scored each way" in (out / "report.md").read_text()

    other = {**dev_manifest, "model": {**dev_manifest["model"], "fingerprint": "0" * 16}}
    (dev / "manifest.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="another model"):
        run_eval(model, corpus, tmp_path / "other_model", "--score_source", "combined", "--fit_text_weight_on", str(dev))
