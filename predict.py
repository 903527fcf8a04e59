#!/usr/bin/env python
"""Explainable PHQ report for one interview: each item's score and rationale, the total, the
severity band, the binary screen, and the flags that need a human.

    python predict.py --model runs/s2/merged --transcript 300_Transcript.csv \\
        --audio 300_HuBERT.npy --video 300_CNN_ResNet.mat --output_dir reports/300

Transcripts: E-DAIC ``<ID>_Transcript.csv``, DAIC-WOZ ``<ID>_TRANSCRIPT.csv`` (tab-separated, with
speakers), or plain text (CMDC ``Q<n>.txt``). Features: ``.npy``, ``.mat`` (variable ``feature``) or
an OpenFace CSV. Everything stays on this machine: nothing is uploaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from evaluate_mllm_dr import (  # noqa: E402
    DISCLAIMER,
    DTYPES,
    PerItemSampler,
    choose_score,
    head_is_trained,
    item_seed,
    load_model,
)
from mllm_dr_training import prompt_mode, read_feature_arrays  # noqa: E402

SELF_HARM_ITEM = 9
DISAGREEMENT = 2.0


def read_transcript_file(path: Path) -> str:
    """Any supported transcript format as the text the model reads."""
    from corpora import read_transcript

    return read_transcript(path)


def severity_band_name(total: float) -> str:
    from phq_metrics import severity_band_name as band

    return band(total)


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
            flags.append(
                "item 9 (thoughts of death or self-harm) is above 0: requires clinician review"
            )
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


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint, training output or adapter export")
    parser.add_argument("--transcript", required=True, type=Path)
    parser.add_argument("--audio", type=Path, default=None, help="audio features (.npy/.mat)")
    parser.add_argument("--video", type=Path, default=None, help="visual features (.npy/.mat/OpenFace .csv)")
    parser.add_argument("--participant_id", default=None)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--cutoff", type=float, default=10.0)
    parser.add_argument("--greedy", action="store_true")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top_k", type=int, default=10)
    parser.add_argument("--max_new_tokens", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="weights' dtype for inference")
    args = parser.parse_args(argv)
    args.zero_shot = False
    args.dataset_format = "edaic"
    args.max_transcript_tokens = None

    if not args.transcript.is_file():
        raise SystemExit(f"--transcript {args.transcript}: no such file")
    transcript = read_transcript_file(args.transcript)
    if not transcript.strip():
        raise SystemExit(f"--transcript {args.transcript}: the transcript is empty")
    model, processor, _ = load_model(args)
    model.to(device=args.device, dtype=DTYPES[args.dtype])
    mode = prompt_mode(2, bool(model.config.use_audio), bool(model.config.use_video))
    _, use_audio, use_video = processor._mode(mode)
    features: dict[str, Any] = {}
    missing = []
    for modality, used, path in (("audio", use_audio, args.audio), ("video", use_video, args.video)):
        if not used:
            continue
        if path is None:
            missing.append(modality)
            features[modality] = None
            continue
        array = read_feature_arrays([str(path)])
        expected = getattr(processor, f"{modality}_feature_dim")
        if array.ndim != 2 or array.shape[1] != expected:
            raise SystemExit(f"--{modality} {path}: shape {tuple(array.shape)}, the model expects (frames, {expected})")
        features[modality] = array

    participant = args.participant_id or args.transcript.name.split("_")[0]
    item_list = processor.items
    batch = processor(
        [transcript] * len(item_list), [item.index for item in item_list],
        audio_features=[features.get("audio")] * len(item_list) if use_audio else None,
        video_features=[features.get("video")] * len(item_list) if use_video else None,
        mode=mode, padding_side="left",
    )
    batch = {k: v.to(args.device) for k, v in batch.items()}
    kwargs: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "do_sample": False,
                              "pad_token_id": processor.tokenizer.pad_token_id}
    if not args.greedy:
        seeds = [item_seed(args.seed, participant, item.index) for item in item_list]
        kwargs["logits_processor"] = [PerItemSampler(seeds, args.temperature, args.top_k)]
    with torch.no_grad():
        out = model.generate(**batch, **kwargs)
    texts = processor.batch_decode(out.sequences[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    items = []
    for i, (item, text) in enumerate(zip(item_list, texts)):
        parsed, rationale = processor.parse_output(text)
        head = float(out.head_score[i]) if head_is_trained(model, args) and out.head_score is not None else None
        score, fell_back = choose_score(parsed, head, "generated_with_head_fallback", 0.0, 0, 3)
        items.append({"item_index": item.index, "item_name": item.name, "score": score, "parsed_score": parsed,
                      "head_score": head, "fell_back": fell_back, "rationale": rationale, "generated_text": text})
    report = build_report(items, args.cutoff, processor.questionnaire, missing, participant)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(report)
    write_atomic(args.output_dir / "prediction.json", json.dumps(report, indent=2, ensure_ascii=False))
    write_atomic(args.output_dir / "prediction.md", markdown)
    print(markdown)
    print(f"written: {args.output_dir / 'prediction.json'}, {args.output_dir / 'prediction.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
