"""Issue 16, part 1: score probabilities read at the score digit (no extra generation), the total's
distribution under independence, calibration and coverage in evaluation, and both reports.

The generated texts are forced token by token (a stand-in for the per-item sampler), so the digit
sits where a test knows; the probabilities themselves come from the tiny model's raw logits and are
recomputed here by one plain forward pass over prompt + generated tokens."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from training_fixtures import make_prepared_corpus
from transformers import LogitsProcessor

from mllm_dr import uncertainty
from mllm_dr.commands import evaluate as ev
from mllm_dr.commands import predict
from mllm_dr.data import MllmDrCollator
from mllm_dr.inference import GenerationArguments, generate_items, generation
from mllm_dr.testing import AUDIO_DIM

ANSWERS = [
    "Evaluation Reason: The participant reports poor sleep.\nScore: 2",  # " 2": the digit with its space
    "Evaluation Reason: tired most days.\nScore:1",  # "1": the bare digit
    "I cannot tell from this interview.",  # no score: no probabilities
]


class Scripted(LogitsProcessor):
    """A PerItemSampler stand-in's bookkeeping (same constructor): the decoding step of a call."""

    def __init__(self, seeds, *args, **kwargs):
        self.start = None

    def step(self, input_ids) -> int:
        if self.start is None:
            self.start = input_ids.shape[1]
        return input_ids.shape[1] - self.start


def forcing(tokenizer, answers=ANSWERS):
    """A PerItemSampler stand-in that makes row i of each batch write ``answers[i % len(answers)]``, then EOS."""
    scripts = [tokenizer.encode(a, add_special_tokens=False) + [tokenizer.eos_token_id] for a in answers]

    class Forced(Scripted):
        def __call__(self, input_ids, scores):
            step = self.step(input_ids)
            forced = torch.full_like(scores, float("-inf"))
            for row in range(scores.shape[0]):
                script = scripts[row % len(scripts)]
                forced[row, script[min(step, len(script) - 1)]] = 0.0
            return forced

    return Forced


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    import datasets

    path = make_prepared_corpus(tmp_path_factory.mktemp("probabilities"), {"train": 1, "dev": 1, "test": 2}, items=(1, 2, 3))
    return [dict(r) for r in datasets.load_from_disk(str(path))["test"]]


def hand_probabilities(model, processor, row, text, prefix):
    """softmax over the four digits ``prefix + "0".."3"`` of the logits after the generated text up to
    its last token (the score digit), by one forward pass over prompt + those tokens."""
    batch = MllmDrCollator(processor, "full", with_rationale=True, padding_side="left", with_targets=False)([row])
    generated = processor.tokenizer.encode(text, add_special_tokens=False)
    context = generated[:-1]
    ids = torch.cat([batch["input_ids"], torch.tensor([context])], dim=1)
    features = {k: v for k, v in batch.items() if k.startswith(("audio_", "video_"))}
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), compute_score=False, **features).logits[0, -1]
    candidates = [processor.tokenizer.encode(f"{prefix}{d}", add_special_tokens=False)[0] for d in range(4)]
    full = torch.log_softmax(logits.double(), dim=-1)
    chosen = full[candidates]
    return (chosen - chosen.logsumexp(0)).exp().numpy(), float(chosen.logsumexp(0).exp())


@pytest.mark.parametrize("prefix_reuse", [True, False])
def test_probabilities_sum_to_one_and_equal_a_hand_computation(tiny, rows, monkeypatch, prefix_reuse):
    model, processor = tiny
    monkeypatch.setattr(generation, "PerItemSampler", forcing(processor.tokenizer))
    settings = GenerationArguments(max_new_tokens=40, prefix_reuse=prefix_reuse)
    records, _ = generate_items(model, processor, rows[:3], "full", settings, use_head=False)
    assert [r["generated_text"] for r in records] == ANSWERS
    assert [r["parsed_score"] for r in records] == [2, 1, None]
    for record, prefix in zip(records[:2], (" ", "")):
        last = processor.tokenizer.encode(record["generated_text"], add_special_tokens=False)[-1]
        assert processor.tokenizer.decode([last]) == prefix + record["generated_text"][-1]
        p = np.array(record["score_probabilities"])
        assert p.shape == (4,) and abs(p.sum() - 1) < 1e-6 and (p > 0).all()
        expected, mass = hand_probabilities(model, processor, rows[record["item_index"] - 1], record["generated_text"], prefix)
        np.testing.assert_allclose(p, expected, atol=2e-4)
        assert record["score_probability_mass"] == pytest.approx(mass, rel=1e-3) and 0 < mass < 1
        assert record["expected_score"] == pytest.approx(float(p @ np.arange(4)))
        assert record["entropy"] == pytest.approx(float(-(p * np.log2(p)).sum()))
    # the two forms really are different candidates (a wrong form would give other numbers)
    wrong, _ = hand_probabilities(model, processor, rows[0], records[0]["generated_text"], "")
    assert not np.allclose(records[0]["score_probabilities"], wrong, atol=1e-3)
    assert all(records[2][k] is None for k in ("score_probabilities", "score_probability_mass", "expected_score", "entropy"))


def test_switched_off_no_fields_and_the_same_text(tiny, rows, monkeypatch):
    model, processor = tiny
    monkeypatch.setattr(generation, "PerItemSampler", forcing(processor.tokenizer))
    on, _ = generate_items(model, processor, rows[:3], "full", GenerationArguments(max_new_tokens=40), use_head=False)
    off, _ = generate_items(
        model, processor, rows[:3], "full", GenerationArguments(max_new_tokens=40, score_probabilities=False), use_head=False
    )
    assert "score_probabilities" not in off[0]
    assert [r["generated_text"] for r in on] == [r["generated_text"] for r in off]


def test_capture_on_known_logits_picks_the_digit_after_the_last_score(tiny):
    _, processor = tiny
    tokenizer = processor.tokenizer
    text = "Score was 3 before.\nScore: 2"
    ids = tokenizer.encode(text, add_special_tokens=False)
    vocab = len(tokenizer)
    rng = np.random.default_rng(0)
    logits = [torch.tensor(rng.normal(size=(2, vocab)), dtype=torch.float32) for _ in ids]
    new_tokens = torch.tensor([ids, ids])
    got = uncertainty.score_probabilities(tokenizer, new_tokens, logits, [2, 3])
    digits = [tokenizer.encode(f" {d}", add_special_tokens=False)[0] for d in range(4)]
    step = len(ids) - 1
    assert ids[step] == digits[2]
    row = logits[step][0].double().numpy()
    expected = np.exp(row[digits]) / np.exp(row[digits]).sum()
    np.testing.assert_allclose(got[0]["score_probabilities"], expected, rtol=1e-5)
    assert got[0]["score_probability_mass"] == pytest.approx(np.exp(row[digits]).sum() / np.exp(row).sum(), rel=1e-4)
    assert got[1]["score_probabilities"] is None  # the digit written is not the parsed score: nothing is guessed
    merged = uncertainty.find_score_step(tokenizer, tokenizer.encode("Score: 23", add_special_tokens=False),
                                         uncertainty.digit_tokens(tokenizer), 2)  # fmt: skip
    assert merged is None or tokenizer.decode(tokenizer.encode("Score: 23", add_special_tokens=False)[merged]) == " 2"


def test_total_distribution_equals_brute_force_enumeration():
    rng = np.random.default_rng(1)
    items = [rng.dirichlet(np.ones(4)) for _ in range(5)]
    brute = np.zeros(16)
    for scores in itertools.product(range(4), repeat=5):
        brute[sum(scores)] += np.prod([p[s] for p, s in zip(items, scores)])
    np.testing.assert_allclose(uncertainty.total_distribution(items), brute, atol=1e-12)
    records = [{"score_probabilities": list(p), "score": 0.0} for p in items] + [{"score_probabilities": None, "score": 1.25}]
    summary = uncertainty.total_summary(records, cutoff=10)
    with_point = np.convolve(brute, [0, 0.75, 0.25, 0])  # the head's 1.25 split over 1 and 2
    np.testing.assert_allclose(summary["distribution"], with_point, atol=1e-12)
    assert summary["items_without_probabilities"] == 1 and summary["items"] == 6
    assert summary["p_at_or_above_cutoff"] == pytest.approx(with_point[10:].sum())
    assert summary["expected_total"] == pytest.approx(sum(p @ np.arange(4) for p in items) + 1.25)
    cdf = np.cumsum(with_point)
    lo, hi = summary["interval"]
    assert cdf[lo] >= 0.1 and (lo == 0 or cdf[lo - 1] < 0.1) and cdf[hi] >= 0.9 and cdf[hi - 1] < 0.9
    assert with_point[lo : hi + 1].sum() >= 0.8


def test_interval_of_a_known_distribution():
    # P(T = 0..4) = .05 .10 .50 .20 .15 (cdf .05 .15 .65 .85 1): the 10% point is 1, the 90% point 4
    assert uncertainty.equal_tailed_interval(np.array([0.05, 0.10, 0.50, 0.20, 0.15])) == (1, 4)
    # an upper tail of exactly 10% stays outside: cdf .05 .15 .65 .90 1 gives (1, 3)
    assert uncertainty.equal_tailed_interval(np.array([0.05, 0.10, 0.50, 0.25, 0.10])) == (1, 3)
    assert uncertainty.equal_tailed_interval(np.array([0.0, 1.0, 0.0])) == (1, 1)


def test_ece_and_brier_against_hand_values():
    p = np.array([[0.7, 0.1, 0.1, 0.1], [0.15, 0.55, 0.2, 0.1], [0.1, 0.1, 0.2, 0.6], [0.05, 0.05, 0.05, 0.85]])
    labels = np.array([0, 2, 3, 1])
    got = uncertainty.calibration(p, labels, bins=10)
    # confidences .7 .55 .6 .85 fall in bins (.6,.7], (.5,.6], (.5,.6], (.8,.9]; correct: yes, no, yes, no
    ece = 0.25 * abs(1 - 0.7) + 0.5 * abs(0.5 - (0.55 + 0.6) / 2) + 0.25 * abs(0 - 0.85)
    brier = np.mean([0.09 + 0.03, 0.0225 + 0.3025 + 0.64 + 0.01, 0.01 + 0.01 + 0.04 + 0.16, 0.0025 + 0.9025 + 0.0025 + 0.7225])
    assert got["ece"] == pytest.approx(ece) and got["brier"] == pytest.approx(brier)
    assert got["accuracy"] == 0.5 and [b["count"] for b in got["bins"]] == [0, 0, 0, 0, 0, 2, 1, 0, 1, 0]
    perfect = uncertainty.calibration(np.eye(4), np.arange(4))
    assert perfect["ece"] == 0 and perfect["brier"] == 0


def test_coverage_counts_the_bounds_as_inside():
    summaries = [{"interval": [2, 5]}, {"interval": [0, 3]}, {"interval": [7, 9]}, {"interval": [4, 4]}]
    got = uncertainty.interval_coverage(summaries, [5, 4, 7, 4])
    assert got["coverage"] == 0.75 and got["mean_width"] == pytest.approx((3 + 3 + 2 + 0) / 4)


def predict_one_interview(checkpoint, tmp_path, flags):
    """``mllm-dr-predict`` on a one-line E-DAIC interview with audio features: its report folder."""
    transcript = tmp_path / "900_Transcript.csv"
    transcript.write_text('Start_Time,End_Time,Text,Confidence\n0.1,2.0,"hello, low every day",0.9\n')
    audio = tmp_path / "900_HuBERT.npy"
    np.save(audio, np.random.default_rng(0).standard_normal((9, AUDIO_DIM)).astype(np.float32))
    report_dir = tmp_path / "predicted"
    predict.main(["--model", str(checkpoint), "--transcript", str(transcript), "--audio", str(audio),
                  "--output_dir", str(report_dir), *flags])  # fmt: skip
    return report_dir


def test_evaluation_and_prediction_report_the_probabilities(checkpoint, tmp_path, monkeypatch):
    from mllm_dr.inference import load_model

    corpus = make_prepared_corpus(tmp_path / "corpus", {"train": 2, "dev": 1, "test": 4}, items=(1, 2, 3))
    tokenizer = load_model(str(checkpoint), device="cpu").processor.tokenizer
    monkeypatch.setattr(generation, "PerItemSampler", forcing(tokenizer))
    out = tmp_path / "eval"
    ev.main(["--model", str(checkpoint), "--data_dir", str(corpus), "--dataset_format", "prepared", "--split", "test",
             "--output_dir", str(out), "--max_new_tokens", "40", "--batch_size", "4", "--n_bootstrap", "0",
             "--device", "cpu"])  # fmt: skip
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    with_p = [p for p in predictions if p["score_probabilities"] is not None]
    assert len(with_p) == 8 and all(p["parsed_score"] is None for p in predictions if p not in with_p)
    assert all(abs(sum(p["score_probabilities"]) - 1) < 1e-6 for p in with_p)
    metrics = json.loads((out / "metrics.json").read_text())
    section = metrics["score_probabilities"]
    assert section["n_items_with_probabilities"] == 8 and section["n_items_without_probabilities"] == 4
    labelled = [p for p in with_p]
    expected = uncertainty.calibration(np.array([p["score_probabilities"] for p in labelled]), np.array([p["label"] for p in labelled]))
    assert section["calibration"]["ece"] == pytest.approx(expected["ece"])
    assert section["calibration"]["brier"] == pytest.approx(expected["brier"])
    assert section["total_interval"]["n_participants"] == 4 and 0 <= section["total_interval"]["coverage"] <= 1
    assert len(section["participants"]) == 4 and all(p["items_without_probabilities"] == 1 for p in section["participants"])
    assert metrics["ccc"] is not None  # the paper's metrics are still those of the scores used
    report = (out / "report.md").read_text()
    assert "## Score probabilities" in report and "independent" in report and "reliability_diagram.png" in report
    assert "expected calibration error" in report.lower() and "80% interval" in report
    assert (out / "reliability_diagram.png").stat().st_size > 1000

    report_dir = predict_one_interview(checkpoint, tmp_path, ["--max_new_tokens", "40", "--device", "cpu"])
    prediction = json.loads((report_dir / "prediction.json").read_text())
    items = prediction["items"]
    assert items[0]["score_probabilities"] is not None and items[2]["score_probabilities"] is None
    assert {"expected_score", "entropy"} <= set(items[0])
    totals = prediction["total_distribution"]
    assert totals["interval"][0] <= totals["interval"][1] and 0 <= totals["p_at_or_above_cutoff"] <= 1
    assert totals["items_without_probabilities"] == sum(i["score_probabilities"] is None for i in items)
    markdown = (report_dir / "prediction.md").read_text()
    assert uncertainty.text_bar(items[0]["score_probabilities"]) in markdown
    assert "80% interval" in markdown and "P(total >= 10)" in markdown


# ----------------------------------------------------------------------------- part 2: modality attribution
def amplify_modalities(model, factor: float = 20.0):
    """The tiny model with its LQ-formers' cross-attention and projectors scaled up: at init the
    features move its scores by ~1e-6, float noise; scaled, by ~1e-3, which a comparison can see."""
    with torch.no_grad():
        for modality in ("audio", "video"):
            for name, parameter in getattr(model, f"{modality}_lqformer").named_parameters():
                if "cross_attn" in name and parameter.dim() == 2:
                    parameter.mul_(factor)
            getattr(model, f"{modality}_projector").linear_2.weight.mul_(factor)
    return model


def test_withholding_a_modality_equals_scoring_without_it(tiny):
    from mllm_dr.inference.attribution import withheld

    model, processor = tiny
    rng = np.random.default_rng(4)
    audio, video = rng.standard_normal((9, AUDIO_DIM)).astype("float32"), rng.standard_normal((7, 20)).astype("float32")
    full = processor(["I sleep badly"], [3], audio_features=[audio], video_features=[video])
    no_audio = processor(["I sleep badly"], [3], audio_features=[None], video_features=[video])
    neither = processor(["I sleep badly"], [3], audio_features=[None], video_features=[None])
    with torch.no_grad():
        for masked, missing in ((withheld(full, ["audio"]), no_audio), (withheld(full, ["audio", "video"]), neither)):
            a, b = model(**masked), model(**missing)
            torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(a.score, b.score, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(**full).logits, model(**no_audio).logits)  # the audio does matter


@pytest.mark.parametrize("prefix_reuse", [True, False])
def test_attribution_per_item_and_its_summary(tiny, rows, monkeypatch, prefix_reuse):
    from mllm_dr.inference.attribution import mean_absolute_attribution

    model, processor = tiny
    amplify_modalities(model)
    monkeypatch.setattr(generation, "PerItemSampler", forcing(processor.tokenizer))
    settings = GenerationArguments(max_new_tokens=40, modality_attribution=True, prefix_reuse=prefix_reuse)
    assert generation.shares_prefix(rows[:3])  # one participant's items: with prefix reuse, its shared path
    records, _ = generate_items(model, processor, rows[:3], "full", settings, use_head=True)
    for record in records[:2]:
        attribution = record["attribution"]
        assert set(attribution) == {"with_all", "audio", "video", "both"}
        # the re-run with every modality reproduces what generation measured at the digit
        assert attribution["with_all"]["expected"] == pytest.approx(record["expected_score"], abs=1e-4)
        assert attribution["with_all"]["head"] == pytest.approx(record["head_score"], abs=1e-4)
        row = rows[record["item_index"] - 1]
        for modality in ("audio", "video"):  # a modality the row lacks moves nothing; one it has does
            has = bool(row.get(f"{modality}_files"))
            assert (abs(attribution[modality]["expected"]) > 1e-4) == has, (modality, row.get(f"{modality}_files"))
            assert abs(attribution[modality]["expected"]) < 1e-6 or has
        assert abs(attribution["both"]["expected"]) > 1e-4
        assert all(attribution[m]["head"] is not None for m in ("audio", "video", "both"))
    assert records[2]["attribution"] is None  # no score digit, nothing to attribute
    summary = mean_absolute_attribution(records)
    assert set(summary) == {str(records[0]["item_index"]), str(records[1]["item_index"])}
    first = summary[str(records[0]["item_index"])]
    assert first["audio"] == pytest.approx(abs(records[0]["attribution"]["audio"]["expected"]))
    head_summary = mean_absolute_attribution(records, of="head")
    assert head_summary[str(records[0]["item_index"])]["both"] == pytest.approx(abs(records[0]["attribution"]["both"]["head"]))
    from mllm_dr.inference.attribution import attribution_lines, describe_attribution

    table = "\n".join(attribution_lines(summary))
    assert "## Modality attribution" in table and f"| {records[0]['item_index']} | {first['audio']:.3f} |" in table
    assert describe_attribution(records[0]["attribution"]).startswith(
        f"audio {records[0]['attribution']['audio']['expected']:+.2f}, video +0.00")
    off, _ = generate_items(model, processor, rows[:1], "full", GenerationArguments(max_new_tokens=40), use_head=True)
    assert "attribution" not in off[0]  # off by default


def test_shared_prefix_attribution_equals_whole_prompts(tiny, rows, monkeypatch):
    """The shared-prefix path (the prefix once per condition, each item its suffix) gives the same
    attribution as running every item's whole prompt and answer per condition."""
    model, processor = amplify_modalities(tiny[0]), tiny[1]
    monkeypatch.setattr(generation, "PerItemSampler", forcing(processor.tokenizer, ANSWERS[:2]))
    results = {}
    for reuse in (True, False):
        settings = GenerationArguments(max_new_tokens=40, modality_attribution=True, prefix_reuse=reuse)
        records, _ = generate_items(model, processor, rows[:3], "full", settings, use_head=True)
        results[reuse] = [r["attribution"] for r in records]
    assert all(a is not None for a in results[True])
    assert max(abs(a["both"]["expected"]) for a in results[True]) > 1e-3  # the features do move the scores
    for shared, whole in zip(results[True], results[False]):
        for name in ("with_all", "audio", "video", "both"):
            assert shared[name]["expected"] == pytest.approx(whole[name]["expected"], abs=2e-6), name
            assert shared[name]["head"] == pytest.approx(whole[name]["head"], abs=2e-6), name



def digit_choosing(tokenizer, reason="Evaluation Reason: low mood.\nScore:"):
    """A PerItemSampler stand-in that writes ``reason``, then a digit 0-3 read off the model's own
    logits of the digits (their sum, magnified: the tiny model's features move it by ~0.01), then EOS:
    a parsed score that a withheld modality changes, behind a rationale that it cannot."""
    script = tokenizer.encode(reason, add_special_tokens=False)
    digits = [tokenizer.encode(f" {d}", add_special_tokens=False)[0] for d in range(4)]

    class Choosing(Scripted):
        def __call__(self, input_ids, scores):
            step = self.step(input_ids)
            forced = torch.full_like(scores, float("-inf"))
            for row in range(scores.shape[0]):
                if step < len(script):
                    forced[row, script[step]] = 0.0
                elif step == len(script):  # a digit that moves with the logits' small changes
                    forced[row, digits[math.floor(float(scores[row, digits].sum()) * 400) % 4]] = 0.0
                else:
                    forced[row, tokenizer.eos_token_id] = 0.0
            return forced

    return Choosing


def without_audio(row):
    return {**row, "audio_files": [], **({"audio_cache": None} if "audio_cache" in row else {})}


@pytest.mark.parametrize("prefix_reuse", [True, False])
def test_total_effect_equals_generating_without_the_modality(tiny, rows, monkeypatch, prefix_reuse):
    """--attribution_effect total: each condition's answer is what generating without that modality
    writes (parsed score, rationale), and the changes are the differences of the two runs' scores."""
    model, processor = amplify_modalities(tiny[0]), tiny[1]
    monkeypatch.setattr(generation, "PerItemSampler", digit_choosing(processor.tokenizer))
    items = [row for row in rows if row.get("audio_files")][:3]
    assert len(items) == 3 and generation.shares_prefix(items)
    settings = GenerationArguments(max_new_tokens=40, modality_attribution=True, attribution_effect="total",
                                   prefix_reuse=prefix_reuse)  # fmt: skip
    settings.check()
    records, _ = generate_items(model, processor, items, "full", settings, use_head=True)
    plain = GenerationArguments(max_new_tokens=40, prefix_reuse=prefix_reuse)
    reference, _ = generate_items(model, processor, items, "full", plain, use_head=True)
    alone, _ = generate_items(model, processor, [without_audio(r) for r in items], "full", plain, use_head=True)
    direct = GenerationArguments(max_new_tokens=40, modality_attribution=True, prefix_reuse=prefix_reuse)
    fixed, _ = generate_items(model, processor, items, "full", direct, use_head=True)
    for record, ref, no_audio, held in zip(records, reference, alone, fixed):
        assert record["score"] == ref["score"] and record["generated_text"] == ref["generated_text"]  # the answer itself
        attribution = record["attribution"]
        assert set(attribution) == {"with_all", "audio", "video", "both"}
        audio = attribution["audio"]
        assert audio["parsed_score"] == no_audio["parsed_score"] and audio["rationale"] == no_audio["rationale"]
        assert audio["score"] == pytest.approx(ref["score"] - no_audio["score"], abs=1e-6)
        assert audio["expected"] == pytest.approx(ref["expected_score"] - no_audio["expected_score"], abs=1e-4)
        assert audio["head"] == pytest.approx(ref["head_score"] - no_audio["head_score"], abs=1e-4)
        # the rationale is forced, so here the total effect on the expected score is the direct one
        for name in ("audio", "video", "both"):
            assert attribution[name]["expected"] == pytest.approx(held["attribution"][name]["expected"], abs=1e-4)
    assert max(abs(r["attribution"]["both"]["expected"]) for r in records) > 1e-3  # the features do move the scores
    assert any(r["attribution"]["audio"]["score"] != 0 for r in records)  # and the written digits, here

    from mllm_dr.inference.attribution import attribution_lines, describe_attribution, mean_absolute_attribution

    summary = mean_absolute_attribution(records, of="score")
    first = records[0]
    assert summary[str(first["item_index"])]["audio"] == pytest.approx(
        np.mean([abs(r["attribution"]["audio"]["score"]) for r in records if r["item_index"] == first["item_index"]]))
    assert mean_absolute_attribution(fixed, of="score") is None  # the direct effect records no score change
    table = "\n".join(attribution_lines(summary, of="score", effect="total"))
    assert "(total effect): the score" in table and "--attribution_effect total" in table
    assert describe_attribution(first["attribution"]).startswith(f"audio {first['attribution']['audio']['score']:+.2f}")


def test_total_effect_needs_the_attribution():
    with pytest.raises(ValueError, match="--attribution_effect total is an option of --modality_attribution"):
        GenerationArguments(attribution_effect="total").check()
    with pytest.raises(ValueError, match="--attribution_effect must be one of direct, total"):
        GenerationArguments(modality_attribution=True, attribution_effect="both").check()


def test_evaluation_and_prediction_report_the_total_effect(tiny, tmp_path, monkeypatch):
    """End to end: `mllm-dr-evaluate` and `mllm-dr-predict --modality_attribution --attribution_effect total`
    put the changes of the score that counts in predictions, metrics, manifest and both reports."""
    model, processor = amplify_modalities(tiny[0]), tiny[1]
    model.config.score_head_trained = True
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    monkeypatch.setattr(generation, "PerItemSampler", digit_choosing(processor.tokenizer))
    corpus = make_prepared_corpus(tmp_path / "corpus", {"train": 2, "dev": 1, "test": 2}, items=(1, 2, 3))
    out = tmp_path / "eval"
    flags = ["--max_new_tokens", "40", "--device", "cpu", "--modality_attribution", "--attribution_effect", "total"]
    ev.main(["--model", str(checkpoint), "--data_dir", str(corpus), "--dataset_format", "prepared", "--split", "test",
             "--output_dir", str(out), "--n_bootstrap", "0", *flags])  # fmt: skip
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(set(p["attribution"]["audio"]) >= {"score", "expected", "head", "parsed_score", "rationale"}
               for p in predictions if p["attribution"])  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "manifest.json").read_text())["attribution_effect"] == "total"
    by_item = metrics["modality_attribution_score"]
    item = predictions[0]["item_index"]
    changes = [abs(p["attribution"]["audio"]["score"]) for p in predictions if p["item_index"] == item and p["attribution"]]
    assert by_item[str(item)]["audio"] == pytest.approx(np.mean(changes))
    report = (out / "report.md").read_text()
    assert "## Modality attribution (total effect): the score" in report and "the total effect" in report

    report_dir = predict_one_interview(checkpoint, tmp_path, flags)
    items = json.loads((report_dir / "prediction.json").read_text())["items"]
    assert all("rationale" in item["attribution"]["audio"] for item in items)
    markdown = (report_dir / "prediction.md").read_text()
    assert "*(withheld: audio " in markdown
    moved = [item for item in items if item["attribution"]["audio"]["score"]]
    assert ("## Without a modality (total effect)" in markdown) == bool(moved)
    for item in moved:
        assert f"audio withheld: score {item['score'] - item['attribution']['audio']['score']:.2f}" in markdown


def test_the_counterfactual_section_lists_moved_scores_only():
    item = {"item_index": 4, "item_name": "tired", "score": 2.0,
            "attribution": {"with_all": {"score": 2.0, "expected": 1.9, "head": 1.5},
                            "audio": {"score": 1.0, "expected": 0.8, "head": 0.2, "parsed_score": 1, "rationale": "Some | days."},
                            "video": {"score": 0.0, "expected": 0.1, "head": 0.0, "parsed_score": 2, "rationale": "Tired."}}}  # fmt: skip
    lines = predict.counterfactual_lines([item])
    assert "- Item 4 (tired), score 2.00 with every modality:" in lines
    assert "  - audio withheld: score 1.00 (written 1): Some \\| days." in lines
    assert not any("video withheld" in line for line in lines)
    direct = {**item, "attribution": {"with_all": {"expected": 1.9, "head": 1.5}, "audio": {"expected": 0.8, "head": 0.2}}}
    assert predict.counterfactual_lines([direct]) == []


@pytest.mark.parametrize("prefix_reuse", [True, False])
def test_float32_attribution_reuses_generation_for_every_modality(tiny, rows, monkeypatch, prefix_reuse):
    """In float32 the "every modality" condition is generation's own digit probabilities and head's
    score (no forward): the same attribution as running that forward."""
    from mllm_dr.inference import attribution

    model, processor = amplify_modalities(tiny[0]), tiny[1]
    assert next(model.parameters()).dtype == torch.float32
    monkeypatch.setattr(generation, "PerItemSampler", forcing(processor.tokenizer, ANSWERS[:2]))
    settings = GenerationArguments(max_new_tokens=40, modality_attribution=True, prefix_reuse=prefix_reuse)
    calls = []
    original = attribution._AnswerInputs.forward
    monkeypatch.setattr(attribution._AnswerInputs, "forward",
                        lambda self, model, modalities=(): calls.append(tuple(modalities)) or original(self, model, modalities))
    reused, _ = generate_items(model, processor, rows[:3], "full", settings, use_head=True)
    assert () not in calls and len(calls) == 3  # the three withheld conditions only
    monkeypatch.setattr(attribution, "EXACT_REUSE_DTYPES", ())
    calls.clear()
    forwarded, _ = generate_items(model, processor, rows[:3], "full", settings, use_head=True)
    assert () in calls and len(calls) == 4
    for a, b in zip(reused, forwarded):
        for name in ("with_all", "audio", "video", "both"):
            assert a["attribution"][name]["expected"] == pytest.approx(b["attribution"][name]["expected"], abs=1e-4), name
            assert a["attribution"][name]["head"] == pytest.approx(b["attribution"][name]["head"], abs=1e-4), name
