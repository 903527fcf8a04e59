"""Issue 13, mllm-dr-predict: a progress bar while generating, the PHQ wording per item, output that
broke the format shown as such (never as a rationale), the model and settings recorded in
prediction.json, and a per-item figure linked from the report.

Runs on a tiny untrained checkpoint (its random head marked trained); the generated texts are
replaced where a test needs a known mix of well-formed and broken answers."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from mllm_dr import evaluation
from mllm_dr.commands import predict
from mllm_dr.inference import GenerationArguments, model_fingerprint
from mllm_dr.testing import AUDIO_DIM
from processing_mllm_dr import PHQ8_ITEMS, MllmDrProcessor

# what the "model" answers for items 1, 2, 3, ...: well-formed, broken (two scores, a code fence
# inside), broken (no score at all), then well-formed again
ANSWERS = [
    "Evaluation Reason: says | they sleep badly.\nScore: 2",
    "Evaluation Reason: ```\nScore: 1 or Score: 2\n````",
    "I cannot tell from this interview.",
]


@pytest.fixture
def interview(tmp_path) -> tuple[Path, Path]:
    transcript = tmp_path / "900_Transcript.csv"
    transcript.write_text('Start_Time,End_Time,Text,Confidence\n0.1,2.0,"hello, low every day",0.9\n')
    audio = tmp_path / "900_HuBERT.npy"
    np.save(audio, np.random.default_rng(0).standard_normal((9, AUDIO_DIM)).astype(np.float32))
    return transcript, audio


@pytest.fixture
def scripted_answers(monkeypatch):
    """Every generated text replaced by ``ANSWERS`` in turn (the tokens still come from the model)."""

    def decode(self, sequences, **kwargs):
        return [ANSWERS[i % len(ANSWERS)] for i in range(len(sequences))]

    monkeypatch.setattr(MllmDrProcessor, "batch_decode", decode)


def run_predict(checkpoint: Path, interview: tuple[Path, Path], out: Path, *extra: str) -> dict:
    transcript, audio = interview
    predict.main(["--model", str(checkpoint), "--transcript", str(transcript), "--audio", str(audio),
                  "--output_dir", str(out), "--max_new_tokens", "4", "--device", "cpu", *extra])  # fmt: skip
    return json.loads((out / "prediction.json").read_text())


def test_prediction_records_the_model_its_settings_versions_and_date(checkpoint, interview, tmp_path, capsys):
    before = datetime.now(timezone.utc).replace(microsecond=0)
    report = run_predict(checkpoint, interview, tmp_path / "report", "--temperature", "0.5", "--seed", "3",
                         "--batch_size", "3", "--cutoff", "8")  # fmt: skip
    assert report["model"]["path"] == str(checkpoint) and report["model"]["kind"] == "checkpoint"
    assert report["model"]["fingerprint"] == model_fingerprint(checkpoint)
    assert report["model"]["dtype"] == "float32" and report["model"]["device"] == "cpu"
    expected = asdict(GenerationArguments(temperature=0.5, seed=3, batch_size=3, max_new_tokens=4, top_p=1.0))  # resolved
    assert report["generation"] == expected
    assert report["cutoff"] == 8 and report["screen_positive"] == (report["total"] >= 8)
    assert {"python", "torch", "transformers", "mllm-dr"} <= set(report["packages"])
    assert before <= datetime.fromisoformat(report["created"]) <= datetime.now(timezone.utc)
    # the progress bar counts items (8, in batches of 3), on stderr; the report goes to stdout
    captured = capsys.readouterr()
    assert "generating" in captured.err and "8/8" in captured.err and "item" in captured.err
    assert "# PHQ report" in captured.out and "generating" not in captured.out


def test_items_carry_the_phq_wording(checkpoint, interview, tmp_path, scripted_answers):
    report = run_predict(checkpoint, interview, tmp_path / "report")
    wording = {item["item_index"]: item["item_wording"] for item in report["items"]}
    assert wording[3] == "Trouble falling or staying asleep, or sleeping too much"
    assert wording[1] == "Little interest or pleasure in doing things"  # the questionnaire's text, not the prompt's
    assert wording == {item.index: item.wording for item in PHQ8_ITEMS} and all(wording.values())
    assert [item["item_name"] for item in report["items"]] == [item.name for item in PHQ8_ITEMS]  # E-DAIC names kept
    markdown = (tmp_path / "report" / "prediction.md").read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| 3 |"))
    assert "| Trouble falling or staying asleep, or sleeping too much |" in row


def test_unparsed_output_is_shown_as_such_and_never_as_a_rationale(checkpoint, interview, tmp_path, scripted_answers):
    out = tmp_path / "report"
    report = run_predict(checkpoint, interview, out)
    items = {item["item_index"]: item for item in report["items"]}
    parsed, broken, silent = items[1], items[2], items[3]
    assert parsed["parsed_score"] == 2 and parsed["rationale"] == "says | they sleep badly." and parsed["flags"] == []
    assert parsed["raw_output"] == ANSWERS[0]
    for item, answer in ((broken, ANSWERS[1]), (silent, ANSWERS[2])):
        assert item["parsed_score"] is None and item["rationale"] is None and item["raw_output"] == answer
        assert "unparsed output" in item["flags"]
    broke = "item 2 (Feeling down, depressed, or hopeless): the generated text broke"
    assert any(flag.startswith(broke) for flag in report["flags"])

    markdown = (out / "prediction.md").read_text()
    table = markdown.split("## Items", 1)[1].split("## Unparsed output", 1)[0]
    assert "says \\| they sleep badly." in table  # a parsed rationale, its pipe escaped
    assert "I cannot tell" not in table and "Score: 1 or" not in table  # broken text never in the rationale column
    assert table.count("*unparsed output, shown below: not a rationale*") == sum(
        i["parsed_score"] is None for i in report["items"]
    )
    unparsed = markdown.split("## Unparsed output", 1)[1]
    assert "### Item 2: Feeling down, depressed, or hopeless" in unparsed
    assert "`````text\n" + ANSWERS[1] + "\n`````" in unparsed  # a fence the answer's own backticks cannot close
    assert "```text\n" + ANSWERS[2] + "\n```" in unparsed
    assert "### Item 1:" not in unparsed


def test_a_per_item_figure_is_written_and_linked(checkpoint, interview, tmp_path, scripted_answers):
    out = tmp_path / "report"
    run_predict(checkpoint, interview, out)
    figure = out / predict.FIGURE
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 5000
    assert f"]({predict.FIGURE})" in (out / "prediction.md").read_text()


def test_the_figure_draws_text_score_head_score_and_flags(tmp_path, monkeypatch):
    items = [
        {"item_index": 1, "item_name": "NoInterest", "score": 3.0, "parsed_score": 3, "head_score": 0.5,
         "fell_back": False, "rationale": "r", "raw_output": "t"},
        {"item_index": 2, "item_name": "Depressed", "score": 3.0, "parsed_score": None, "head_score": 4.2,
         "fell_back": True, "rationale": None, "raw_output": "t"},
        {"item_index": 9, "item_name": "SelfHarm", "score": 1.0, "parsed_score": 1, "head_score": 1.2,
         "fell_back": False, "rationale": "r", "raw_output": "t"},
    ]  # fmt: skip
    predict.build_report(items, 10, "phq9", [], "x")
    assert [item["flags"] for item in items] == [["text vs head"], ["unparsed output"], ["clinician review"]]
    drawn = {}
    original = evaluation._save_png

    def keep(fig, path):
        drawn["axes"] = fig.axes[0]
        return original(fig, path)

    monkeypatch.setattr(evaluation, "_save_png", keep)
    assert evaluation.write_item_figure(items, tmp_path / "items.png") == "items.png"
    ax = drawn["axes"]
    bars = {container.get_label(): [bar.get_height() for bar in container] for container in ax.containers}
    assert bars["text score"][0] == 3 and np.isnan(bars["text score"][1]) and bars["text score"][2] == 1
    assert bars["head score (clipped)"] == pytest.approx([0.5, 3.0, 1.2])  # 4.2 clipped to the item range
    labels = [text.get_text().replace("\n", " ") for text in ax.texts]  # wrapped to the bars' width
    assert labels == ["text vs head", "unparsed output", "clinician review"]
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["1", "2", "9"]
    assert (tmp_path / "items.png").is_file()
