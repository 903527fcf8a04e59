"""The paper's human evaluation on this machine: a local review app over an evaluation's rationales
(a seeded sample stratified by PHQ item; assessors rate each rationale 3/2/1 and give their own score).

    mllm-dr-review --eval_dir runs/eval                          # 100 samples, seed 0, http://127.0.0.1:7860
    mllm-dr-review --eval_dir runs/eval --sample_size 50 --seed 1 --reviews_dir runs/review50
    mllm-dr-review --eval_dir runs/eval --data_dir /data/E-DAIC --dataset_format edaic   # the corpus moved

The transcripts come from the corpus the evaluation read (its manifest's folder and format; give
``--data_dir`` and the corpus flags when it has moved or was read with options). The sample goes to
``REVIEWS_DIR/sample.json`` (default ``EVAL_DIR/reviews``), each assessor's ratings to
``REVIEWS_DIR/<name>.jsonl``; then ``mllm-dr-analyse-reviews --reviews_dir REVIEWS_DIR`` writes Table 6.
The app listens on 127.0.0.1 only unless ``--host`` says otherwise; nothing is uploaded or reported.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from ..data import SPLITS, CorpusArguments, load_splits
from ..review import REVIEWS_DIRNAME, prepare_sample
from ..review.app import LOOPBACK, build_app, launch  # gradio itself is imported by build_app


@dataclass
class ReviewArguments:
    """Which evaluation to review, the sample, and where the app listens."""

    eval_dir: str | None = field(
        default=None, metadata={"help": "An mllm-dr-evaluate output folder (predictions.jsonl, manifest.json)."}
    )
    reviews_dir: str | None = field(
        default=None,
        metadata={"help": f"Folder for sample.json and the assessors' ratings (default: EVAL_DIR/{REVIEWS_DIRNAME})."},
    )
    sample_size: int = field(default=100, metadata={"help": "Samples to review (paper: 100), stratified by PHQ item."})
    seed: int = field(default=0, metadata={"help": "Seed of the sample (the same seed draws the same sample)."})
    assessor: str | None = field(default=None, metadata={"help": "Pre-fills the assessor's name on the start page."})
    host: str = field(
        default="127.0.0.1",
        metadata={"help": "Address to listen on; anything but 127.0.0.1 makes the transcripts reachable from the network."},
    )
    port: int = field(default=7860, metadata={"help": "Port to listen on."})
    prepare_only: bool = field(
        default=False, metadata={"help": "Draw (or check) the sample and load the transcripts, then exit without serving."}
    )


ARGUMENTS = (ReviewArguments, CorpusArguments)


def build_parser() -> HfArgumentParser:
    return HfArgumentParser(ARGUMENTS, description=__doc__.split("\n\n")[0])


def load_transcripts(corpus_args: CorpusArguments, wanted: set[tuple[str, int]]) -> dict[tuple[str, int], str]:
    """The transcript each sampled (participant, item) row holds (E-DAIC-WOZ: the interview; CMDC:
    the questions mapped to the item), from every split of the corpus."""
    corpus = load_splits(corpus_args, SPLITS)
    found = {}
    for split in SPLITS:
        for row in corpus[split]:
            key = (str(row["participant_id"]), int(row["item_index"]))
            if key in wanted:
                found[key] = row["transcript"] or ""
    missing = sorted(wanted - set(found))
    if missing:
        shown = ", ".join(f"participant {p} item {i}" for p, i in missing[:3])
        raise ValueError(
            f"{corpus_args.data_dir}: {len(missing)} sampled row(s) are not in the corpus ({shown}): is this the corpus "
            "the evaluation read? Give it with --data_dir and --dataset_format"
        )
    return found


def main(argv: list[str] | None = None) -> int:
    args, corpus_args = build_parser().parse_args_into_dataclasses(args=argv)
    if args.eval_dir is None:
        raise SystemExit("--eval_dir is required")
    reviews_dir = Path(args.reviews_dir or Path(args.eval_dir) / REVIEWS_DIRNAME)
    try:
        sample = prepare_sample(args.eval_dir, reviews_dir, size=args.sample_size, seed=args.seed)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    if corpus_args.data_dir is None:  # the corpus the evaluation read
        corpus_args.data_dir, corpus_args.dataset_format = sample["data"]["dir"], sample["data"]["format"]
    try:
        transcripts = load_transcripts(corpus_args, {(s["participant_id"], s["item_index"]) for s in sample["samples"]})
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    per_item = {}
    for entry in sample["samples"]:
        per_item[entry["item_index"]] = per_item.get(entry["item_index"], 0) + 1
    print(f"sample: {reviews_dir / 'sample.json'}: {len(sample['samples'])} samples (seed {sample['seed']}), per item "
          f"{json.dumps(dict(sorted(per_item.items())))}; {sample['format_failures']} of {sample['outputs']} outputs "
          "broke the format and have no rationale to rate")  # fmt: skip
    if len(sample["samples"]) < args.sample_size:
        print(f"note: only {len(sample['samples'])} outputs have a rationale, fewer than --sample_size {args.sample_size}")
    if args.prepare_only:
        return 0
    if args.host not in LOOPBACK:
        print(f"warning: --host {args.host} serves the transcripts to every machine that can reach this one")
    app = build_app(sample, transcripts, reviews_dir, assessor=args.assessor)
    print(f"review app: http://{args.host}:{args.port} (Ctrl+C stops it; every rating is already saved)")
    launch(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
