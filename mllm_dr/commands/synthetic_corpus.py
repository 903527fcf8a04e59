"""Write a synthetic interview corpus in the E-DAIC-WOZ layout (labels/, data/<ID>_P/ with transcript,
HuBERT .npy and CNN_ResNet .mat), with PHQ-8 items planted in known modalities, plus template
rationales. The same arguments give byte-identical files.

    mllm-dr-synthetic-corpus --output_dir runs/synthetic --participants 60 --seed 0
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from ..synthetic import CUTOFF, DEFAULT_ITEM_CORRELATION, DEFAULT_TEXT_NOISE, make_synthetic_corpus


@dataclass
class SyntheticCorpusArguments:
    output_dir: str = field(metadata={"help": "Corpus folder to create (must be empty or absent).", "aliases": ["--output"]})
    participants: int = field(
        metadata={"help": "Number of participants (~60/20/20 train/dev/test, each split non-empty from 3 on)."}
    )
    seed: int = field(metadata={"help": "Seed of labels, transcripts and feature noise."})
    seconds: float = field(
        default=4.0,
        metadata={"help": "Interview length in seconds: sets feature frames (50/s HuBERT, 30/s ResNet); 4 for the "
                  "demo; 1200 is a full 20-minute interview (~480 MB per participant)."},
    )
    turns: int = field(
        default=12,
        metadata={"help": "Participant lines per transcript (at least 5: greeting + 4 planted answers); 12 gives "
                  "~190 SmolLM2 tokens, 140 ~2,000."},
    )
    test_item_labels: bool = field(
        default=True,
        metadata={"help": "Write labels/detailed_lables.csv, the only file with test-set item labels "
                  "(--no_test_item_labels omits it)."},
    )
    item_correlation: float = field(
        default=DEFAULT_ITEM_CORRELATION,
        metadata={"help": "Share of each item's latent variance from the shared severity (0 = independent items)."},
    )
    text_noise: float = field(
        default=DEFAULT_TEXT_NOISE,
        metadata={"help": "Probability that a planted answer uses an adjacent level's phrase."},
    )
    phrasings: int | None = field(
        default=None,
        metadata={"help": "Use only the first K (1-4) phrasings per score level: an easier text task for small "
                  "training budgets (default: all)."},
    )
    force: bool = field(default=False, metadata={"help": "Replace an existing synthetic corpus at --output_dir."})


def build_parser() -> HfArgumentParser:
    return HfArgumentParser(SyntheticCorpusArguments, description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> int:
    (args,) = build_parser().parse_args_into_dataclasses(args=argv)
    try:
        summary = make_synthetic_corpus(
            args.output_dir, args.participants, args.seed, seconds=args.seconds, turns=args.turns,
            test_item_labels=args.test_item_labels, force=args.force, item_correlation=args.item_correlation,
            text_noise=args.text_noise, phrasings=args.phrasings,
        )  # fmt: skip
    except (FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    splits = summary["splits"]
    print(
        f"wrote {summary['output']}: {summary['participants']} participants (train {len(splits['train'])}, "
        f"dev {len(splits['dev'])}, test {len(splits['test'])}), {summary['frames']['audio']} HuBERT / "
        f"{summary['frames']['video']} ResNet frames each, {summary['rationales']} rationales, "
        f"{summary['files']} files, {summary['bytes'] / 1e6:.1f} MB, PHQ>={CUTOFF}: "
        f"{summary['depressed_share']:.0%}, {summary['elapsed_s']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
