#!/usr/bin/env python
"""Does a stage-1 model read the audio/visual evidence? Per item, the MAE of the frozen LLM's
expected score (its probabilities over the digits 0-3 after ``Score:``, features-only prompt)
against the train-mean baseline, on one split of a synthetic (or real E-DAIC) corpus:

    python benchmarks/stage1_probe.py --stage1 runs/demo-<timestamp>/stage1 --corpus runs/demo-<timestamp>/corpus

On the synthetic corpus, items 4 and 8 are planted only in audio and 5 and 7 only in video: a
stage 1 that learned its job beats the train mean on those. Writes nothing unless ``--output``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from mllm_dr.checkpoints import load_adapter_export
from mllm_dr.data import CorpusArguments, MllmDrCollator, load_splits
from mllm_dr.io import write_json_atomic
from processing_mllm_dr import prompt_mode


def probe(
    stage1: Path, corpus: Path, split: str = "test", dataset_format: str = "edaic", batch_size: int = 8
) -> dict[str, dict[str, float]]:
    """``{item: {"stage1_mae", "train_mean_mae", "n"}}`` for every item of ``split``."""
    model, processor = load_adapter_export(stage1)
    model.eval()
    corpus_args = CorpusArguments(data_dir=str(corpus), dataset_format=dataset_format)
    rows = [dict(r) for r in load_splits(corpus_args, (split,), frames=processor)[split]]
    train_rows = load_splits(corpus_args, ("train",))["train"]
    item_means = {
        item: float(np.mean([r["label"] for r in train_rows if r["item_index"] == item]))
        for item in sorted({r["item_index"] for r in train_rows})
    }
    mode = prompt_mode(1, bool(model.config.use_audio), bool(model.config.use_video))
    collate = MllmDrCollator(processor, mode, with_rationale=False)
    digit_ids = [processor.tokenizer(f" {d}", add_special_tokens=False)["input_ids"][-1] for d in range(4)]
    errors: dict[int, list[tuple[float, float]]] = {}
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            batch = collate(chunk)
            labels = batch.pop("labels")
            batch.pop("score_labels", None)
            logits = model(**batch).logits
            for i, row in enumerate(chunk):
                # the answer's digit token; the logits one position earlier predict it
                position = next(int(p) for p in (labels[i] != -100).nonzero().flatten() if int(labels[i, p]) in digit_ids)
                probabilities = logits[i, position - 1, digit_ids].float().softmax(-1)
                expected = float((probabilities * torch.arange(4)).sum())
                item = int(row["item_index"])
                errors.setdefault(item, []).append((abs(expected - row["label"]), abs(item_means[item] - row["label"])))
    return {
        str(item): {"stage1_mae": float(np.mean([e[0] for e in pairs])),
                    "train_mean_mae": float(np.mean([e[1] for e in pairs])), "n": len(pairs)}
        for item, pairs in sorted(errors.items())
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage1", type=Path, required=True, help="a stage-1 output folder")
    parser.add_argument("--corpus", type=Path, required=True, help="an E-DAIC-layout corpus (e.g. a demo run's)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--dataset_format", default="edaic", help="edaic | daic | cmdc | prepared")
    parser.add_argument("--output", type=Path, default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    result = probe(args.stage1, args.corpus, args.split, args.dataset_format)
    print("| item | stage-1 expected-score MAE | train-mean MAE | n |\n|---|---|---|---|")
    for item, values in result.items():
        print(f"| {item} | {values['stage1_mae']:.3f} | {values['train_mean_mae']:.3f} | {values['n']} |")
    if args.output:
        write_json_atomic(args.output, {"stage1": str(args.stage1), "corpus": str(args.corpus), "split": args.split,
                                        "items": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
