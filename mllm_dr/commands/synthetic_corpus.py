"""Write a synthetic interview corpus in the E-DAIC-WOZ layout (labels/, data/<ID>_P/ with transcript,
HuBERT .npy and CNN_ResNet .mat), with PHQ-8 items planted in known modalities, plus template
rationales; or (``--layout cmdc``) in the CMDC layout (HC/HCxx, MDD/MDDxx with Q<n>.txt, Q<n>_HuBERT.npy,
OpenFace Q<n>.csv; labels.csv; PHQ-9). The same arguments give byte-identical files.

    mllm-dr-synthetic-corpus --output_dir runs/synthetic --participants 60 --seed 0
    mllm-dr-synthetic-corpus --output_dir runs/synthetic-sparse --participants 60 --seed 0 --signal_layout sparse
    mllm-dr-synthetic-corpus --layout cmdc --output_dir runs/synthetic-cmdc --participants 78 --seed 0
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields

from transformers import HfArgumentParser

from ..synthetic import (
    CUTOFF,
    DEFAULT_ITEM_CORRELATION,
    DEFAULT_TEXT_NOISE,
    DEFAULT_VIDEO_SHARE,
    LAYOUTS,
    make_synthetic_cmdc,
    make_synthetic_corpus,
)

EDAIC_ONLY = ("turns", "test_item_labels", "phrasings", "signal_layout")
CMDC_ONLY = ("video_share",)


@dataclass
class SyntheticCorpusArguments:
    output_dir: str = field(metadata={"help": "Corpus folder to create (must be empty or absent).", "aliases": ["--output"]})
    participants: int = field(
        metadata={"help": "Number of participants (E-DAIC: ~60/20/20 train/dev/test, each split non-empty from 3 on; "
                  "CMDC: 1-78 subjects, two thirds HC, the authors' train/test protocol, no dev split)."}
    )
    seed: int = field(metadata={"help": "Seed of labels, transcripts and feature noise."})
    layout: str = field(
        default="edaic",
        metadata={"help": "edaic (E-DAIC-WOZ, PHQ-8) | cmdc (CMDC, PHQ-9; read with --dataset_format cmdc).",
                  "choices": ["edaic", "cmdc"]},
    )
    seconds: float | None = field(
        default=None,
        metadata={"help": "E-DAIC: interview length in seconds (default 4): sets feature frames (50/s HuBERT, 30/s "
                  "ResNet); 1200 is a full 20-minute interview (~480 MB per participant). CMDC: mean answer length "
                  "per question (default 2; 50/s HuBERT, 30/s OpenFace)."},
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
    video_share: float = field(
        default=DEFAULT_VIDEO_SHARE,
        metadata={"help": "CMDC: share of subjects with video (an evenly spread share, the first always; default "
                  "45/78 as in CMDC); the others have no Q<n>.csv (a missing modality)."},
    )
    signal_layout: str = field(
        default="standard",
        metadata={"help": "E-DAIC: how the audio/visual items are planted (labels and transcripts stay the same): "
                  + "; ".join(f"{name}: {layout.description}" for name, layout in LAYOUTS.items()).replace("%", "%%")
                  + ".",
                  "choices": list(LAYOUTS)},
    )
    force: bool = field(default=False, metadata={"help": "Replace an existing synthetic corpus at --output_dir."})


def build_parser() -> HfArgumentParser:
    return HfArgumentParser(SyntheticCorpusArguments, description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> int:
    (args,) = build_parser().parse_args_into_dataclasses(args=argv)
    defaults = {f.name: f.default for f in fields(SyntheticCorpusArguments)}
    other = EDAIC_ONLY if args.layout == "cmdc" else CMDC_ONLY
    refused = [f"--{name}" for name in other if getattr(args, name) != defaults[name]]
    if refused:
        print(f"error: {', '.join(refused)} does not apply to --layout {args.layout}", file=sys.stderr)
        return 2
    common = {"force": args.force, "item_correlation": args.item_correlation, "text_noise": args.text_noise}
    if args.seconds is not None:
        common["seconds"] = args.seconds
    try:
        if args.layout == "cmdc":
            summary = make_synthetic_cmdc(
                args.output_dir, args.participants, args.seed, video_share=args.video_share, **common
            )
        else:
            summary = make_synthetic_corpus(
                args.output_dir, args.participants, args.seed, turns=args.turns, test_item_labels=args.test_item_labels,
                phrasings=args.phrasings, signal_layout_name=args.signal_layout, **common,
            )  # fmt: skip
    except (FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.layout == "cmdc":
        splits = summary["splits"]
        print(
            f"wrote {summary['output']}: {summary['participants']} CMDC subjects (train {len(splits['train'])}, "
            f"test {len(splits['test'])}, no dev split; {len(summary['without_video'])} without video), "
            f"{summary['rationales']} rationales, {summary['files']} files, {summary['bytes'] / 1e6:.1f} MB, "
            f"PHQ-9>={CUTOFF}: {summary['depressed_share']:.0%}, {summary['elapsed_s']:.1f} s"
        )
        return 0
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
