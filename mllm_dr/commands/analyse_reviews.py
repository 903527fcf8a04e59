"""Table 6 of the paper from a review folder: metrics I-IV (majority vote, median on ties),
Krippendorff's alpha between the assessors, and a Markdown table beside the paper's values.

    mllm-dr-analyse-reviews --reviews_dir runs/eval/reviews
    mllm-dr-analyse-reviews --reviews_dir runs/eval/reviews --ratings ann.jsonl bo.jsonl cy.jsonl

Reads ``sample.json`` and every assessor's ``<name>.jsonl`` in ``--reviews_dir`` (or the files given
with ``--ratings``, e.g. collected from the assessors' own machines); writes ``table6.json`` (every
metric and the per-sample consensus) and ``table6.md`` into ``--output_dir`` and prints the table.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from ..io import write_json_atomic, write_text_atomic
from ..review import analyse, read_sample, table6_markdown


@dataclass
class AnalysisArguments:
    """Which review to analyse and where the table goes."""

    reviews_dir: str | None = field(
        default=None, metadata={"help": "The review folder (sample.json and the assessors' <name>.jsonl files)."}
    )
    ratings: list[str] | None = field(
        default=None,
        metadata={"help": "The assessors' ratings files, one per assessor (default: every *.jsonl in --reviews_dir).",
                  "metavar": "FILE"},
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Folder for table6.json and table6.md (default: --reviews_dir)."}
    )


def build_parser() -> HfArgumentParser:
    return HfArgumentParser(AnalysisArguments, description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> int:
    (args,) = build_parser().parse_args_into_dataclasses(args=argv)
    if args.reviews_dir is None:
        raise SystemExit("--reviews_dir is required")
    reviews_dir = Path(args.reviews_dir)
    files = [Path(f) for f in args.ratings] if args.ratings else sorted(reviews_dir.glob("*.jsonl"))
    for path in files:
        if not path.is_file():
            raise SystemExit(f"--ratings {path}: no such file")
    try:
        sample = read_sample(reviews_dir)
        result = analyse(sample, files)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    data = sample.get("data") or {}
    title = f"Table 6 (human evaluation of the rationales): {data.get('format') or 'corpus'} {data.get('split') or ''}"
    markdown = table6_markdown(result, title.strip())
    out = Path(args.output_dir or reviews_dir)
    write_json_atomic(out / "table6.json", {"sample": {k: v for k, v in sample.items() if k != "samples"}, **result})
    write_text_atomic(out / "table6.md", markdown)
    print(markdown)
    print(f"written: {out / 'table6.json'}, {out / 'table6.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
