"""Explainable PHQ report for one interview: each item's score and rationale, the total, the
severity band, the binary screen, and the flags that need a human.

    mllm-dr-predict --model runs/s2 --transcript 300_Transcript.csv \\
        --audio 300_HuBERT.npy --video 300_CNN_ResNet.mat --output_dir reports/300

Transcripts: E-DAIC ``<ID>_Transcript.csv``, DAIC-WOZ ``<ID>_TRANSCRIPT.csv`` (tab-separated, with
speakers), or plain text (CMDC ``Q<n>.txt``). Features: ``.npy``, ``.mat`` (variable ``feature``) or
an OpenFace CSV; several files per modality are concatenated along frames. Everything stays on this
machine: nothing is uploaded.

Writes ``prediction.json`` (the items with their PHQ wording; an item whose generation broke the
format has ``rationale`` null and its text in ``raw_output``; the model's path, kind and fingerprint,
every generation setting, the cut-off, package versions and the date), ``prediction.md`` (unparsed
output in its own labelled blocks, never as a rationale) and ``prediction_items.png`` (text score,
head score and flags per item). Each item's ``quotes`` are the rationale's quoted spans looked up in
the transcript (``mllm_dr.evidence``: found or not, the closest line and its time); the Markdown marks
them in the rationale and a quote that is not in the interview is flagged.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from processing_mllm_dr import prompt_mode

from ..data import feature_shape, read_transcript
from ..data.transcripts import transcript_lines
from ..evaluation import DISCLAIMER, write_item_figure
from ..evidence import Transcript, contradiction_sentence, mark_quotes, unfounded_sentence
from ..inference import (
    GenerationArguments,
    ModelLoadArguments,
    check_rows,
    generate_batches,
    head_is_trained,
    load_model,
)
from ..inference.attribution import describe_attribution
from ..io import write_text_atomic
from ..metrics import severity_band_name
from ..provenance import package_versions
from ..uncertainty import INDEPENDENCE, MISSING_ITEMS, PROBABILITY_FIELDS, text_bar, total_summary

SELF_HARM_ITEM = 9
DISAGREEMENT = 2.0
LOW_CONFIDENCE = 0.5  # the most likely score's probability below this: flagged
FIGURE = "prediction_items.png"


@dataclass
class PredictionArguments:
    """The interview to score and where the report goes."""

    transcript: str | None = field(default=None, metadata={"help": "The interview's transcript file."})
    audio: list[str] | None = field(default=None, metadata={"help": "Audio feature file(s) (.npy/.mat)."})
    video: list[str] | None = field(default=None, metadata={"help": "Visual feature file(s) (.npy/.mat/OpenFace .csv)."})
    participant_id: str | None = field(
        default=None, metadata={"help": "Id shown in the report (default: the transcript name up to its first '_')."}
    )
    output_dir: str | None = field(
        default=None, metadata={"help": f"Folder for prediction.json, prediction.md and its figure ({FIGURE})."}
    )
    cutoff: float = field(default=10.0, metadata={"help": "Binary screen: total >= cutoff."})


ARGUMENTS = (ModelLoadArguments, GenerationArguments, PredictionArguments)


def build_parser() -> HfArgumentParser:
    return HfArgumentParser(ARGUMENTS, description=__doc__.split("\n\n")[0])


def parse_args(argv: list[str] | None = None):
    return build_parser().parse_args_into_dataclasses(args=argv)


def item_wording(processor, index: int) -> str:
    """The questionnaire's own wording of item ``index`` (PHQ-8 / PHQ-9)."""
    return processor.item(index).wording


def item_flags(item: dict[str, Any], questionnaire: str) -> dict[str, str]:
    """``{short label: sentence}`` for what in one item needs a human (the label goes into the figure)."""
    found = {}
    if item["parsed_score"] is None:
        found["unparsed output"] = "the generated text broke the output format: its score and rationale are not used"
    elif item["head_score"] is not None and abs(item["parsed_score"] - item["head_score"]) >= DISAGREEMENT:
        found["text vs head"] = (
            f"the generated score {item['parsed_score']} and the regression head's {item['head_score']:.2f} differ "
            f"by {DISAGREEMENT:g} or more"
        )
    probabilities = item.get("score_probabilities")
    if probabilities is not None and max(probabilities) < LOW_CONFIDENCE:
        found["low confidence"] = (
            f"the model's most likely score has probability {max(probabilities):.2f}, under {LOW_CONFIDENCE:g}"
        )
    if questionnaire == "phq9" and item["item_index"] == SELF_HARM_ITEM and item["score"] > 0:
        found["clinician review"] = "thoughts of death or self-harm are above 0: requires clinician review"
    contradiction = contradiction_sentence(item.get("rationale"), item["parsed_score"])
    if contradiction:
        found["rationale vs score"] = contradiction
    unfounded = [q for q in item.get("quotes") or [] if not q["found"]]
    if unfounded:
        found["unfounded quote"] = "; ".join(unfounded_sentence(q) for q in unfounded)
    return found


def build_report(
    items: list[dict[str, Any]], cutoff: float, questionnaire: str, missing: list[str], participant: str
) -> dict[str, Any]:
    """``prediction.json`` without its provenance: the items (each with its short ``flags``), the
    total, severity band, binary screen and every flag as a sentence."""
    total = float(sum(item["score"] for item in items))
    flags = []
    for item in items:
        found = item_flags(item, questionnaire)
        item["flags"] = list(found)
        wording = item.get("item_wording") or item["item_name"]
        flags += [f"item {item['item_index']} ({wording}): {sentence}" for sentence in found.values()]
    for modality in missing:
        flags.append(f"no {modality} features: scored without that modality")
    return {
        "participant_id": participant,
        "disclaimer": DISCLAIMER,
        "questionnaire": questionnaire,
        "items": items,
        "total": total,
        "severity_band": severity_band_name(total),
        "cutoff": cutoff,
        "screen_positive": total >= cutoff,
        "total_distribution": {
            **{k: v for k, v in total_summary(items, cutoff).items() if k != "cutoff"},
            "independence": INDEPENDENCE, "missing_items": MISSING_ITEMS,
        },  # fmt: skip
        "flags": flags,
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _fenced(text: str) -> list[str]:
    """``text`` verbatim in a code block whose fence no backtick run inside it can close."""
    if not text.strip():
        return ["*(empty: nothing was generated)*"]
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}text", text, fence]


def counterfactual_lines(items: list[dict[str, Any]]) -> list[str]:
    """``--attribution_effect total``: per item whose score moved, what the model wrote with a
    modality withheld (its score and rationale); nothing for the direct effect or when nothing moved."""
    lines = []
    for item in items:
        attribution = item.get("attribution") or {}
        moved = [(name, change) for name, change in attribution.items()
                 if name != "with_all" and change.get("score") and "rationale" in change]  # fmt: skip
        if not moved:
            continue
        lines += [f"- Item {item['item_index']} ({item.get('item_wording') or item['item_name']}), score "
                  f"{item['score']:.2f} with every modality:"]  # fmt: skip
        for name, change in moved:
            written = "unparsed" if change["parsed_score"] is None else str(change["parsed_score"])
            reason = _cell(change["rationale"] or "") or "*(no rationale: the output broke format)*"
            lines.append(f"  - {name} withheld: score {item['score'] - change['score']:.2f} (written {written}): {reason}")
    if not lines:
        return []
    return ["", "## Without a modality (total effect)", "",
            "The answers generated again with a modality withheld (`--attribution_effect total`), where the score moved:",
            "", *lines]  # fmt: skip


def to_markdown(report: dict[str, Any], figure: str | None = None) -> str:
    lines = [
        f"# PHQ report for participant {report['participant_id']}",
        "",
        f"> {report['disclaimer']}",
        "",
        f"**Total:** {report['total']:.1f} ({report['questionnaire'].upper()}), severity band "
        f"**{report['severity_band']}**, binary screen at >= {report['cutoff']:g}: "
        f"**{'positive' if report['screen_positive'] else 'negative'}**",
        "",
    ]
    spread = report.get("total_distribution")
    if spread:
        lo, hi = spread["interval"]
        lines += [
            f"**From the score probabilities:** expected total {spread['expected_total']:.1f}, "
            f"{spread['interval_level']:.0%} interval {lo}-{hi}, P(total >= {report['cutoff']:g}) "
            f"{spread['p_at_or_above_cutoff']:.2f} ({spread['independence']}; "
            f"{spread['items_without_probabilities']} of {spread['items']} items without probabilities: "
            f"{spread['missing_items']})",
            "",
        ]
    if report["flags"]:
        lines += ["## Needs a human", ""] + [f"- {flag}" for flag in report["flags"]] + [""]
    lines += ["## Items", "", "| # | PHQ item | score | generated | head | P(0-3) | rationale |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    unparsed = []
    for item in report["items"]:
        head = "n/a" if item["head_score"] is None else f"{item['head_score']:.2f}"
        wording = _cell(item.get("item_wording") or item["item_name"])
        if item["parsed_score"] is None:
            generated, rationale = "unparsed", "*unparsed output, shown below: not a rationale*"
            unparsed.append(item)
        else:
            generated = str(item["parsed_score"])
            rationale = _cell(mark_quotes(item["rationale"] or "", item.get("quotes") or []))
        probabilities = item.get("score_probabilities")
        bar = "n/a" if probabilities is None else f"`{text_bar(probabilities)}` " + " ".join(f"{p:.2f}" for p in probabilities)
        if "attribution" in item:  # --modality_attribution: what each modality moved
            rationale += f" *(withheld: {describe_attribution(item['attribution'])})*"
        lines.append(f"| {item['item_index']} | {wording} | {item['score']:.2f} | {generated} | {head} | {bar} | {rationale} |")
    lines += counterfactual_lines(report["items"])
    if figure:
        lines += ["", f"![Per-item scores: generated text, regression head, flags]({figure})"]
    if unparsed:
        lines += ["", "## Unparsed output", "",
                  "These generations broke the required format (`Evaluation Reason: ...` then `Score: n`): the text "
                  "below is the raw output, not a rationale, and any score in it is not used.", ""]  # fmt: skip
        for item in unparsed:
            lines += [f"### Item {item['item_index']}: {item.get('item_wording') or item['item_name']}", ""]
            lines += [*_fenced(item.get("raw_output") or ""), ""]
    lines += ["", "Generated from a licensed or private interview: keep this report local."]
    return "\n".join(lines) + "\n"


def provenance(loaded, model_args: ModelLoadArguments, generation: GenerationArguments) -> dict[str, Any]:
    """What ``prediction.json`` records of how it was made: the model (path, kind, fingerprint,
    dtype, device), every generation setting, the package versions and the date."""
    return {
        "model": {**loaded.record(), "dtype": model_args.dtype, "device": str(model_args.device)},
        "generation": asdict(generation),
        "packages": package_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    model_args, generation, args = parse_args(argv)
    if model_args.model is None:
        raise SystemExit("--model is required")
    try:
        generation.check()
    except ValueError as error:
        raise SystemExit(str(error)) from None
    for name in ("transcript", "output_dir"):
        if getattr(args, name) is None:
            raise SystemExit(f"--{name} is required")
    transcript_path = Path(args.transcript)
    if not transcript_path.is_file():
        raise SystemExit(f"--transcript {transcript_path}: no such file")
    try:
        transcript = read_transcript(transcript_path)
        evidence = Transcript(transcript_lines(transcript_path))  # what quotes link to: file lines, times
    except ValueError as error:
        raise SystemExit(str(error)) from None
    if not transcript.strip():
        raise SystemExit(f"--transcript {transcript_path}: the transcript is empty")
    for modality in ("audio", "video"):
        for path in getattr(args, modality) or []:
            if not Path(path).is_file():
                raise SystemExit(f"--{modality} {path}: no such file")
            try:
                feature_shape(path)  # unreadable, pickled, empty: named before the model loads
            except ValueError as error:
                raise SystemExit(f"--{modality}: {error}") from None
    loaded = load_model(
        model_args.model, dtype=model_args.dtype, device=model_args.device, trust_remote_code=model_args.trust_remote_code
    )
    model, processor = loaded.model, loaded.processor
    try:
        generation = generation.for_model(model)  # top_p from the model's generation config unless given
    except ValueError as error:
        raise SystemExit(str(error)) from None
    mode = prompt_mode(2, bool(model.config.use_audio), bool(model.config.use_video))
    inputs = processor.inputs_for(mode)
    participant = args.participant_id or transcript_path.name.split("_")[0]
    files = {m: [str(Path(p).resolve()) for p in (getattr(args, m) or [])] if getattr(inputs, m) else [] for m in ("audio", "video")}
    missing = [m for m in ("audio", "video") if getattr(inputs, m) and not files[m]]
    rows = [
        {"participant_id": participant, "item_index": item.index, "item_name": item.name, "transcript": transcript,
         "audio_files": files["audio"], "video_files": files["video"]}
        for item in processor.items
    ]  # fmt: skip
    check_rows(rows, processor, mode)
    use_head = head_is_trained(model)
    items = []
    try:
        for records, _ in generate_batches(model, processor, rows, mode, generation, use_head):
            items += [
                {"item_index": r["item_index"], "item_name": r["item_name"],
                 "item_wording": item_wording(processor, r["item_index"]),
                 **{k: r[k] for k in ("score", "parsed_score", "head_score", "fell_back")},
                 **{k: r.get(k) for k in PROBABILITY_FIELDS},
                 "rationale": None if r["parsed_score"] is None else r["rationale"], "raw_output": r["generated_text"],
                 **({"attribution": r["attribution"]} if "attribution" in r else {})}
                for r in records
            ]  # fmt: skip
    except ValueError as error:  # broken features (NaN, wrong width), named by the reader or the processor
        raise SystemExit(f"error: {error}") from None
    for item in items:
        item["quotes"] = [quote.to_dict() for quote in evidence.quotes(item["rationale"])]
    report = {**build_report(items, args.cutoff, processor.questionnaire, missing, participant),
              **provenance(loaded, model_args, generation)}  # fmt: skip
    output_dir = Path(args.output_dir)
    figure = write_item_figure(items, output_dir / FIGURE, (processor.score_min, processor.score_max))
    markdown = to_markdown(report, figure)
    write_text_atomic(output_dir / "prediction.json", json.dumps(report, indent=2, ensure_ascii=False))
    write_text_atomic(output_dir / "prediction.md", markdown)
    print(markdown)
    print(f"written: {output_dir / 'prediction.json'}, {output_dir / 'prediction.md'}, {output_dir / figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
