"""Issue 16, part 3: evidence quotes. Which spans of a rationale count as quotes, matching them against
the transcript (exact, after case and punctuation changes, with a small typo; invented ones rejected),
the link to the transcript's line and time, the evaluation's share of rationales with a quote and
faithfulness rate, mllm-dr-predict's marks and flags, the synthetic corpus's quoting templates and the
teacher prompt's quote option."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from training_fixtures import make_prepared_corpus

import mllm_dr.distillation as dr
from mllm_dr import synthetic
from mllm_dr.commands import distill as distill_cli
from mllm_dr.commands import evaluate as ev
from mllm_dr.commands import predict
from mllm_dr.data import load_rationales, read_transcript
from mllm_dr.data.transcripts import TranscriptLine, transcript_lines
from mllm_dr.evidence import (
    contradiction_sentence,
    named_option,
    DEFAULT_THRESHOLD,
    Transcript,
    attach_quotes,
    check_quotes,
    evidence_lines,
    evidence_summary,
    extract_quotes,
    interview_texts,
    mark_quotes,
    normalise,
)
from mllm_dr.testing import AUDIO_DIM
from processing_mllm_dr import PHQ9_ITEMS, MllmDrProcessor

EDAIC = (
    "Start_Time,End_Time,Text,Confidence\n"
    "1.2,3.4,\"hi, i'm good thanks\",0.9\n"
    "5.0,6.0,,0.5\n"  # an empty row: skipped, but the numbering stays the file's
    "8.1,12.7,\"um, i barely sleep at all, nearly every night\",0.93\n"
    "14.0,17.5,i work as a nurse at a hospital,0.88\n"
    "19.0,21.0,and then i just lie there staring,0.8\n"
    "21.5,23.0,at the ceiling until it gets light,0.8\n"
)
DAIC = (
    "start_time\tstop_time\tspeaker\tvalue\n"
    "0.5\t1.9\tEllie\thow have you been sleeping\n"
    "2.3\t4.0\tParticipant\tnot great\n"
    "4.1\t6.6\tParticipant\ti wake up at four most nights\n"
)


def quoted(rationale: str) -> list[str]:
    return [span.text for span in extract_quotes(rationale)]


@pytest.fixture
def edaic(tmp_path) -> Path:
    path = tmp_path / "300_Transcript.csv"
    path.write_text(EDAIC, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- what counts as a quote
def test_double_curly_guillemet_and_cjk_quotes_count():
    text = 'Says "i barely sleep", then “I feel low”, «je suis triste» and 「我睡不着」.'
    assert quoted(text) == ["i barely sleep", "I feel low", "je suis triste", "我睡不着"]
    spans = extract_quotes(text)
    assert [text[s.start : s.end] for s in spans] == quoted(text)  # offsets point at the quoted text


def test_single_quotes_need_two_words_and_never_split_on_apostrophes():
    text = "They don't 'really care' and said 'i don't sleep well'; the participants' 'mood' is 'fine'; ‘i can’t stop’."
    assert quoted(text) == ["really care", "i don't sleep well", "i can’t stop"]
    assert quoted("the ’90s and rock 'n' roll") == []


def test_answer_options_and_very_short_spans_are_not_quotes():
    text = "The frequency that fits best is 'more than half the days', \"Nearly every day\"; said \"no\" and \"ok sure\"."
    assert quoted(text) == ["ok sure"]


def test_single_quotes_inside_a_double_quote_count_once():
    assert quoted("He said \"my boss told me 'you are done here' last week\".") == [
        "my boss told me 'you are done here' last week"
    ]


def test_normalise_folds_case_punctuation_and_apostrophes():
    assert normalise("  Um, I DON'T -- sleep…  well!! ") == "um i dont sleep well"
    assert normalise("我睡得很好，一躺下就能睡着。") == "我睡得很好 一躺下就能睡着"


# ----------------------------------------------------------------------------- matching and linking
@pytest.mark.parametrize(
    "quote",
    [
        "i barely sleep at all, nearly every night",  # verbatim (the line starts with "um, ")
        "I Barely Sleep At All -- Nearly Every Night!",  # case and punctuation
        "i barley sleep at all, nearly every night",  # a small typo
        "barely sleep ... every night",  # an ellipsis: each piece found
        "i just lie there staring at the ceiling",  # across two consecutive ASR lines
    ],
)
def test_planted_quotes_are_found(quote):
    [match] = check_quotes(f'The participant says "{quote}".', transcript_lines_of(EDAIC))
    assert match.found and match.score >= DEFAULT_THRESHOLD


@pytest.mark.parametrize(
    "quote",
    [
        "i never sleep, i am up every single night",  # invented
        "i barely sleep at all, never at night",  # a changed ending
        "i work as a teacher at a school",  # the right shape, other words
        "nurses",  # a short quote must appear as a whole word ("nurse" is there)
        "barely sleep ... my boss hates me",  # one invented piece
    ],
)
def test_invented_quotes_are_rejected(quote):
    [match] = check_quotes(f'The participant says "{quote}".', transcript_lines_of(EDAIC))
    assert not match.found and match.score < DEFAULT_THRESHOLD


def transcript_lines_of(text: str, name: str = "300_Transcript.csv") -> list[TranscriptLine]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_text(text, encoding="utf-8")
        return transcript_lines(path)


def test_edaic_lines_keep_file_numbers_and_times(edaic):
    lines = transcript_lines(edaic)
    assert [(line.number, line.start, line.end) for line in lines][:3] == [(2, 1.2, 3.4), (4, 8.1, 12.7), (5, 14.0, 17.5)]
    assert "\n".join(line.text for line in lines) == read_transcript(edaic)  # the same text, with places
    [quote] = check_quotes('says "I work as a nurse at a hospital"', lines)
    assert (quote.found, quote.line, quote.time_start, quote.time_end) == (True, 5, 14.0, 17.5)
    assert quote.matched == "i work as a nurse at a hospital"


def test_daic_lines_are_rows_with_speakers_and_plain_text_has_numbers_only(tmp_path):
    lines = transcript_lines_of(DAIC, "300_TRANSCRIPT.csv")
    assert [(line.number, line.speaker, line.start) for line in lines] == [
        (2, "Interviewer", 0.5), (3, "Participant", 2.3), (4, "Participant", 4.1)
    ]  # fmt: skip
    [quote] = check_quotes('"I wake up at four most nights."', lines)
    assert quote.found and (quote.line, quote.time_start, quote.time_end) == (4, 4.1, 6.6)
    plain = tmp_path / "Q1.txt"
    plain.write_text("\n我睡得很好。\n\n最近工作很忙，经常加班。\n", encoding="utf-8")
    assert [(line.number, line.text, line.start) for line in transcript_lines(plain)] == [
        (2, "我睡得很好。", None), (4, "最近工作很忙，经常加班。", None)
    ]  # fmt: skip
    [quote] = check_quotes("她说「经常加班」。", transcript_lines(plain))  # inside a run of characters
    assert quote.found and quote.line == 4


def test_marks_say_found_where_or_not_in_transcript(edaic):
    rationale = 'Says "i work as a nurse at a hospital" but also "my boss hates me"; sleep is fine.'
    quotes = check_quotes(rationale, transcript_lines(edaic))
    assert mark_quotes(rationale, quotes) == (
        'Says "i work as a nurse at a hospital" [found: line 5, 14.0-17.5 s] but also "my boss hates me" '
        "[NOT IN TRANSCRIPT]; sleep is fine."
    )
    assert mark_quotes(rationale, []) == rationale
    text_only = check_quotes(rationale, read_transcript(edaic))  # the text the model read: its own line numbers
    assert mark_quotes(rationale, text_only).startswith('Says "i work as a nurse at a hospital" [found: line 3]')


# ----------------------------------------------------------------------------- evaluation
def test_summary_counts_rationales_with_quotes_and_quotes_found():
    records = [
        {"participant_id": "1", "item_index": 1, "rationale": 'says "hi, i\'m good thanks" and "i love my job"'},
        {"participant_id": "1", "item_index": 2, "rationale": "no quote here"},
        {"participant_id": "1", "item_index": 3, "rationale": None},  # broken format: not a rationale
        {"participant_id": "2", "item_index": 1, "rationale": '"a nurse at a hospital"'},
        {"participant_id": "3", "item_index": 1, "rationale": '"i work as a nurse"'},  # no transcript: no quotes
    ]
    attach_quotes(records, {"1": read_transcript_text(), "2": read_transcript_text()})
    summary = evidence_summary(records)
    assert {k: summary[k] for k in ("rationales", "with_quote", "quotes", "found")} == {
        "rationales": 4, "with_quote": 2, "quotes": 3, "found": 2
    }  # fmt: skip
    assert summary["share_with_quote"] == pytest.approx(0.5) and summary["faithfulness_rate"] == pytest.approx(2 / 3)
    assert summary["unfounded_examples"] == [
        {"participant_id": "1", "item_index": 1, "quote": "i love my job", "score": records[0]["quotes"][1]["score"],
         "closest_line": records[0]["quotes"][1]["line"]}
    ]  # fmt: skip
    assert evidence_summary([])["faithfulness_rate"] is None and evidence_lines(evidence_summary([])) == []
    lines = "\n".join(evidence_lines(summary))
    assert "Rationales quoting the interview: 2 of 4 (50.0%)" in lines
    assert "faithfulness): 2 of 3 (66.7%)" in lines and '"i love my job"' in lines


def test_the_answer_option_a_rationale_names_is_read_and_checked_against_its_score():
    assert named_option("The frequency that fits best is 'Nearly every day'.") == 3
    assert named_option("between 'not at all' and \"several days\"; 'several days' fits") == 1  # the last named
    assert named_option("he is not at all interested in several days out") is None  # prose, not the scale
    assert named_option(None) is None and named_option('says "i sleep fine"') is None
    assert contradiction_sentence("fits best is 'several days'", 1) is None
    assert contradiction_sentence("fits best is 'several days'", None) is None  # unparsed: flagged otherwise
    assert contradiction_sentence("fits best is 'nearly every day'", 1) == (
        "the rationale names 'nearly every day' (3) but the score written after it is 1")
    records = [
        {"participant_id": "1", "item_index": 1, "rationale": "fits 'several days'", "parsed_score": 1},
        {"participant_id": "1", "item_index": 2, "rationale": "fits 'nearly every day'", "parsed_score": 1},
        {"participant_id": "1", "item_index": 3, "rationale": "no option named", "parsed_score": 0},
        {"participant_id": "1", "item_index": 4, "rationale": "fits 'not at all'", "parsed_score": None},
    ]
    attach_quotes(records, {})
    summary = evidence_summary(records)
    assert (summary["naming_an_option"], summary["option_agrees"], summary["option_agreement_rate"]) == (2, 1, 0.5)
    assert summary["contradicting_examples"] == [
        {"participant_id": "1", "item_index": 2, "named": "nearly every day", "named_score": 3, "parsed_score": 1}]
    lines = "\n".join(evidence_lines(summary))
    assert "agrees with the score written after it: 1 of 2 (50.0%)" in lines
    assert "participant 1, item 2: names 'nearly every day' (3), scores 1" in lines
    flags = predict.item_flags({"item_index": 2, "item_name": "Depressed", "parsed_score": 1, "head_score": 1.0,
                                "score": 1.0, "rationale": "fits 'nearly every day'", "quotes": []}, "phq8")  # fmt: skip
    assert list(flags) == ["rationale vs score"]


def read_transcript_text() -> str:
    return "\n".join(line.text for line in transcript_lines_of(EDAIC))


def test_interview_texts_join_each_participants_distinct_parts():
    rows = [{"participant_id": "HC01", "transcript": "Q1: a"}, {"participant_id": "HC01", "transcript": "Q2: b"},
            {"participant_id": "HC01", "transcript": "Q1: a"}, {"participant_id": 7, "transcript": "x"}]  # fmt: skip
    assert interview_texts(rows) == {"HC01": "Q1: a\nQ2: b", "7": "x"}


def scripted(monkeypatch, answer: str) -> None:
    monkeypatch.setattr(MllmDrProcessor, "batch_decode", lambda self, sequences, **kw: [answer] * len(sequences))


def test_evaluation_reports_share_with_quote_and_faithfulness(checkpoint, tmp_path, monkeypatch):
    corpus = make_prepared_corpus(tmp_path, {"train": 1, "test": 3}, items=(1, 2))  # transcripts "hello. ... thanks"
    scripted(monkeypatch, 'Evaluation Reason: they say "Hello!" and "i won the lottery".\nScore: 1')
    out = tmp_path / "eval"
    ev.main(["--model", str(checkpoint), "--data_dir", str(corpus), "--dataset_format", "prepared", "--split", "test",
             "--output_dir", str(out), "--max_new_tokens", "4", "--n_bootstrap", "0", "--device", "cpu"])  # fmt: skip
    evidence = json.loads((out / "metrics.json").read_text())["evidence"]
    assert {k: evidence[k] for k in ("rationales", "with_quote", "quotes", "found")} == {
        "rationales": 6, "with_quote": 6, "quotes": 12, "found": 6
    }  # fmt: skip
    assert evidence["share_with_quote"] == 1.0 and evidence["faithfulness_rate"] == 0.5
    report = (out / "report.md").read_text()
    assert "## Evidence quotes" in report and "faithfulness): 6 of 12 (50.0%)" in report
    assert '> they say "Hello!" [found: line 1] and "i won the lottery" [NOT IN TRANSCRIPT].' in report


# ----------------------------------------------------------------------------- mllm-dr-predict
def test_predict_marks_quotes_and_flags_unfounded_ones(checkpoint, edaic, tmp_path, monkeypatch):
    import numpy as np

    audio = tmp_path / "300_HuBERT.npy"
    np.save(audio, np.random.default_rng(0).standard_normal((9, AUDIO_DIM)).astype(np.float32))
    scripted(monkeypatch, 'Evaluation Reason: says "I barely sleep at all" and "i hate my job".\nScore: 2')
    out = tmp_path / "report"
    predict.main(["--model", str(checkpoint), "--transcript", str(edaic), "--audio", str(audio),
                  "--output_dir", str(out), "--max_new_tokens", "4", "--device", "cpu"])  # fmt: skip
    report = json.loads((out / "prediction.json").read_text())
    item = report["items"][0]
    found, invented = item["quotes"]
    assert found["found"] and (found["line"], found["time_start"]) == (4, 8.1)
    assert not invented["found"] and "unfounded quote" in item["flags"]
    flag = next(f for f in report["flags"] if f.startswith("item 1 ("))
    assert '"i hate my job", which is not in the transcript' in flag
    markdown = (out / "prediction.md").read_text()
    needs = markdown.split("## Needs a human", 1)[1].split("## Items", 1)[0]
    assert needs.count("which is not in the transcript") == len(report["items"])
    assert '"I barely sleep at all" [found: line 4, 8.1-12.7 s] and "i hate my job" [NOT IN TRANSCRIPT]' in markdown


def test_an_item_without_quotes_or_with_found_ones_is_not_flagged():
    item = {"item_index": 1, "item_name": "NoInterest", "parsed_score": 1, "head_score": 1.0, "score": 1.0,
            "quotes": [{"text": "x y", "found": True, "score": 100.0, "line": 2}]}  # fmt: skip
    assert predict.item_flags(item, "phq8") == {}
    assert predict.item_flags({**item, "quotes": []}, "phq8") == {}


# ----------------------------------------------------------------------------- the synthetic corpus
def test_synthetic_template_rationales_quote_their_transcripts():
    """Text items' templates quote the planted answer (found, linked to its timed line); feature items'
    quote nothing; the frequency named in single quotes is an answer option, not a quote."""
    for participant in synthetic.plan_corpus(8, seed=0):
        rows = synthetic.transcript_rows(participant, 0, turns=10, seconds=60.0)
        lines = [TranscriptLine(n, text, float(a), float(b)) for n, (a, b, text, _c) in enumerate(rows, 2)]
        evidence = Transcript(lines)
        for item in range(1, 9):
            quotes = evidence.quotes(synthetic.rationale_text(participant, item))
            if synthetic.ITEM_MODALITY[item] == "text":
                [quote] = quotes
                assert quote.found and quote.score == 100.0 and quote.text == participant.phrases[item]
                assert participant.phrases[item] in quote.matched and quote.time_start is not None
            else:
                assert quotes == []


def test_synthetic_cmdc_template_rationales_quote_their_answers():
    for subject in synthetic.plan_cmdc(6, seed=0, seconds=2.0):
        evidence = Transcript("\n".join(f"Q{q}: {a}" for q, a in subject.answers.items()))
        for item in (1, 2, 3, 6, 9):
            [quote] = evidence.quotes(synthetic.rationale_text(subject, item, synthetic.CMDC_ITEM_MODALITY, "OpenFace"))
            assert quote.found and quote.text == subject.phrases[item]


# ----------------------------------------------------------------------------- the teacher prompt
ROW = {"participant_id": "301", "item_index": 3, "item_name": "Sleep", "transcript": "I wake at four.", "label": 2,
       "split": "train"}  # fmt: skip


def test_table1_stays_the_default_prompt_and_the_quote_option_asks_for_verbatim_quotes():
    assert dr.build_messages(ROW) == dr.build_messages(ROW, "table1")
    table1 = dr.build_messages(ROW)[1]["content"]
    assert table1.endswith(dr.TEACHER_INSTRUCTION.format(label=2, aspect=PHQ9_ITEMS[2].aspect))
    assert "quote" not in table1.lower()
    quotes = dr.build_messages(ROW, "table1_quotes")
    assert quotes[0] == dr.build_messages(ROW)[0]  # the same system turn
    assert quotes[1]["content"] == table1 + dr.QUOTE_REQUEST and "verbatim" in dr.QUOTE_REQUEST
    with pytest.raises(ValueError, match="unknown teacher prompt 'nope'.*table1_quotes"):
        dr.build_messages(ROW, "nope")


class EchoTeacher:
    """Answers every prompt with a quote of the dialogue; remembers the prompts."""

    name, batch_size = "echo", 4

    def __init__(self):
        self.prompts: list[str] = []

    def generate(self, conversations, attempt=0):
        for index, messages in enumerate(conversations):
            self.prompts.append(messages[-1]["content"])
            yield index, dr.TeacherReply(text='Evaluation Reason: says "I wake at four".\nScore: 2')


def test_distill_records_the_prompt_version_used(tmp_path):
    teacher = EchoTeacher()
    dr.distill([ROW], teacher, tmp_path / "a.jsonl", progress=False)
    dr.distill([ROW], teacher, tmp_path / "b.jsonl", progress=False, prompt="table1_quotes")
    assert [dr.QUOTE_REQUEST in p for p in teacher.prompts] == [False, True]
    versions = {name: {r.prompt_version for r in load_rationales(tmp_path / name).values()} for name in ("a.jsonl", "b.jsonl")}
    assert versions == {"a.jsonl": {"table1-v1"}, "b.jsonl": {"table1-quotes-v1"}}
    [record] = load_rationales(tmp_path / "b.jsonl").values()
    assert check_quotes(record.rationale, ROW["transcript"])[0].found


def test_distill_cli_offers_the_option_off_by_default():
    parser = distill_cli.build_parser()
    action = next(a for a in parser._actions if "--teacher_prompt" in a.option_strings)
    assert action.default == "table1" and set(action.choices) == set(dr.TEACHER_PROMPTS)
