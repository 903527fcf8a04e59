"""Extract HuBERT (wav2vec2-style) frame features from E-DAIC-WOZ / DAIC-WOZ / CMDC wav files
(paper section 3.1), where the corpus loaders look for them.

    mllm-dr-extract-features --model path/to/hubert-base-ls960 --data_dir /data/E-DAIC --dataset_format edaic
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from ..extraction import DEFAULT_SUFFIX, DTYPES, LAYOUTS, extract_corpus


@dataclass
class ExtractionArguments:
    model: str = field(metadata={"help": "Local transformers model folder (e.g. hubert-base-ls960)."})
    data_dir: str = field(metadata={"help": "Corpus root (E-DAIC, DAIC-WOZ, CMDC), a folder of wavs, or one wav."})
    dataset_format: str = field(
        default="edaic",
        metadata={"help": "Where the wavs are and where outputs go: edaic | daic | cmdc | files (every *.wav).",
                  "choices": list(LAYOUTS), "aliases": ["--layout"]},
    )
    layer: int | None = field(
        default=None,
        metadata={"help": "hidden_states index (0 = transformer input, N = output of layer N, negative from the end); "
                  "default: the model's final output (last_hidden_state)."},
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})
    dtype: str = field(default="float32", metadata={"help": "Model dtype (outputs are float32).", "choices": list(DTYPES)})
    chunk_seconds: float = field(default=30.0, metadata={"help": "Window length; 0 = whole file at once."})
    overlap_seconds: float = field(default=2.0, metadata={"help": "Context added on each side of a window."})
    suffix: str = field(default=DEFAULT_SUFFIX, metadata={"help": "Output name: <ID><suffix>.npy."})
    overwrite: bool = field(default=False, metadata={"help": "Recompute existing outputs."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (--no_progress: none)."})


def build_parser() -> HfArgumentParser:
    return HfArgumentParser(ExtractionArguments, description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> int:
    (args,) = build_parser().parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.chunk_seconds < 0 or args.overlap_seconds < 0:
        raise SystemExit("--chunk_seconds and --overlap_seconds must be >= 0")
    try:
        summary = extract_corpus(
            args.model,
            args.data_dir,
            layout=args.dataset_format,
            layer=args.layer,
            device=args.device,
            dtype=args.dtype,
            chunk_seconds=args.chunk_seconds or None,
            overlap_seconds=args.overlap_seconds,
            suffix=args.suffix,
            overwrite=args.overwrite,
            progress=args.progress,
        )
    except (OSError, ValueError) as error:  # missing data dir, unreadable model folder, bad --layer
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"written {len(summary.written)}, skipped (already done) {len(summary.skipped)}, failed {len(summary.failed)}",
        file=sys.stderr,
    )
    for failure in summary.failed:
        print(f"  failed: {failure}", file=sys.stderr)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
