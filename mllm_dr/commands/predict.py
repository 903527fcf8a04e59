"""Explainable PHQ report for one interview: each item's score and rationale, the total, the
severity band, the binary screen, and the flags that need a human.

    mllm-dr-predict --model runs/s2 --transcript 300_Transcript.csv \\
        --audio 300_HuBERT.npy --video 300_CNN_ResNet.mat --output_dir reports/300

Transcripts: E-DAIC ``<ID>_Transcript.csv``, DAIC-WOZ ``<ID>_TRANSCRIPT.csv`` (tab-separated, with
speakers), or plain text (CMDC ``Q<n>.txt``). Features: ``.npy``, ``.mat`` (variable ``feature``) or
an OpenFace CSV; several files per modality are concatenated along frames. Everything stays on this
machine: nothing is uploaded.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from processing_mllm_dr import prompt_mode

from ..data import feature_shape, read_transcript
from ..evaluation import DISCLAIMER
from ..inference import GenerationArguments, ModelLoadArguments, check_rows, generate_items, head_is_trained, load_model
from ..io import write_text_atomic
from ..metrics import severity_band_name

SELF_HARM_ITEM = 9
DISAGREEMENT = 2.0


@dataclass
class PredictionArguments:
    """The interview to score and where the report goes."""

    transcript: str | None = field(default=None, metadata={"help": "The interview's transcript file."})
    audio: list[str] | None = field(default=None, metadata={"help": "Audio feature file(s) (.npy/.mat)."})
    video: list[str] | None = field(default=None, metadata={"help": "Visual feature file(s) (.npy/.mat/OpenFace .csv)."})
    participant_id: str | None = field(
        default=None, metadata={"help": "Id shown in the report (default: the transcript name up to its first '_')."}
    )
    output_dir: str | None = field(default=None, metadata={"help": "Folder for prediction.json and prediction.md."})
    cutoff: float = field(default=10.0, metadata={"help": "Binary screen: total >= cutoff."})


ARGUMENTS = (ModelLoadArguments, GenerationArguments, PredictionArguments)


def build_parser() -> HfArgumentParser:
    return HfArgumentParser(ARGUMENTS, description=__doc__.split("\n\n")[0])


def parse_args(argv: list[str] | None = None):
    return build_parser().parse_args_into_dataclasses(args=argv)


def build_report(
    items: list[dict[str, Any]], cutoff: float, questionnaire: str, missing: list[str], participant: str
) -> dict[str, Any]:
    total = float(sum(item["score"] for item in items))
    flags = []
    for item in items:
        if item["parsed_score"] is not None and item["head_score"] is not None:
            if abs(item["parsed_score"] - item["head_score"]) >= DISAGREEMENT:
                flags.append(
                    f"item {item['item_index']} ({item['item_name']}): the generated score {item['parsed_score']} and "
                    f"the regression head's {item['head_score']:.2f} differ by {DISAGREEMENT:g} or more"
                )
        if item["parsed_score"] is None:
            flags.append(f"item {item['item_index']} ({item['item_name']}): the generated text broke the output format")
        if questionnaire == "phq9" and item["item_index"] == SELF_HARM_ITEM and item["score"] > 0:
            flags.append("item 9 (thoughts of death or self-harm) is above 0: requires clinician review")
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
        "flags": flags,
    }


def to_markdown(report: dict[str, Any]) -> str:
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
    if report["flags"]:
        lines += ["## Needs a human", ""] + [f"- {flag}" for flag in report["flags"]] + [""]
    lines += ["## Items", "", "| # | item | score | generated | head | rationale |", "|---|---|---|---|---|---|"]
    for item in report["items"]:
        head = "n/a" if item["head_score"] is None else f"{item['head_score']:.2f}"
        generated = "unparsed" if item["parsed_score"] is None else str(item["parsed_score"])
        rationale = (item["rationale"] or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {item['item_index']} | {item['item_name']} | {item['score']:.2f} | {generated} | {head} | {rationale} |")
    lines += ["", "Generated from a licensed or private interview: keep this report local."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    model_args, generation, args = parse_args(argv)
    if model_args.model is None:
        raise SystemExit("--model is required")
    for name in ("transcript", "output_dir"):
        if getattr(args, name) is None:
            raise SystemExit(f"--{name} is required")
    transcript_path = Path(args.transcript)
    if not transcript_path.is_file():
        raise SystemExit(f"--transcript {transcript_path}: no such file")
    try:
        transcript = read_transcript(transcript_path)
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
    batch_size = max(1, generation.batch_size)
    for start in range(0, len(rows), batch_size):
        try:
            records, _ = generate_items(model, processor, rows[start : start + batch_size], mode, generation, use_head)
        except ValueError as error:  # broken features (NaN, wrong width), named by the reader or the processor
            raise SystemExit(f"error: {error}") from None
        items += [
            {k: r[k] for k in ("item_index", "item_name", "score", "parsed_score", "head_score", "fell_back", "rationale", "generated_text")}
            for r in records
        ]
    report = build_report(items, args.cutoff, processor.questionnaire, missing, participant)
    output_dir = Path(args.output_dir)
    markdown = to_markdown(report)
    write_text_atomic(output_dir / "prediction.json", json.dumps(report, indent=2, ensure_ascii=False))
    write_text_atomic(output_dir / "prediction.md", markdown)
    print(markdown)
    print(f"written: {output_dir / 'prediction.json'}, {output_dir / 'prediction.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
