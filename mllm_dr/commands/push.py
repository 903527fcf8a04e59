"""Publish a trained MLlm-DR export to the Hugging Face Hub as one self-contained repo.

    mllm-dr-push --run_dir runs/s2 --hub_model_id you/mllm-dr-edaic --i_may_share_weights
    mllm-dr-push --run_dir runs/s2 --hub_model_id you/mllm-dr-edaic --evaluation_dir runs/eval \\
        --hub_export adapter --base_model_id meta-llama/Meta-Llama-3-8B-Instruct --i_may_share_weights
    mllm-dr-push --run_dir runs/s2 --staging_dir hub/ --dry_run     # stage and check only; nothing leaves

Stages the merged export (or the adapter) with the three model files, the processor, the weights,
generation_config.json and a model card built from the run's manifest (and an evaluation, as
model-index), then creates the repo (private unless --no_hub_private_repo) and uploads the folder.
No run manifest, optimizer state, data fingerprint or second copy of the backbone is uploaded.
The token comes from --hub_token, $HF_TOKEN or `hf auth login`.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from ..hub import LICENCE_GUARD, PublishArguments, PublishError, publish, stage_export

logger = logging.getLogger("mllm_dr.push")


@dataclass
class PushArguments:
    """Which training output goes where."""

    run_dir: str | None = field(default=None, metadata={"help": "A training output (mllm-dr-train --output_dir)."})
    hub_model_id: str | None = field(default=None, metadata={"help": "The repo to publish to, owner/name."})
    hub_private_repo: bool = field(
        default=True, metadata={"help": "Create the repo private (--no_hub_private_repo: public). An existing repo keeps its visibility."}
    )
    hub_token: str | None = field(default=None, metadata={"help": "Hub token (default: $HF_TOKEN or the saved login)."})
    evaluation_dir: str | None = field(
        default=None, metadata={"help": "An mllm-dr-evaluate output of this model: its metrics go into the card's model-index."}
    )
    staging_dir: str | None = field(
        default=None, metadata={"help": "Stage into this new folder and keep it (default: a temporary folder, removed)."}
    )
    dry_run: bool = field(default=False, metadata={"help": "Stage and check only (needs --staging_dir); upload nothing."})
    commit_message: str = field(default="MLlm-DR export", metadata={"help": "The Hub commit message."})
    i_may_share_weights: bool = field(
        default=False, metadata={"help": "Required: you confirm the data licence lets you share these weights."}
    )


def build_parser() -> HfArgumentParser:
    return HfArgumentParser((PushArguments, PublishArguments), description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> int:
    args, publish_args = build_parser().parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(message)s", level=logging.INFO)
    if args.dry_run:
        if args.staging_dir is None or args.run_dir is None:
            raise SystemExit("--dry_run stages into --staging_dir from --run_dir: pass both")
    else:
        if not args.i_may_share_weights:  # the licence guard comes before anything is read
            raise SystemExit(f"error: {LICENCE_GUARD}")
        if args.run_dir is None or args.hub_model_id is None:
            raise SystemExit("--run_dir and --hub_model_id are required")
    options = {
        "kind": publish_args.hub_export, "base_model_id": publish_args.base_model_id,
        "license": publish_args.hub_license, "evaluation_dir": args.evaluation_dir,
    }  # fmt: skip
    try:
        if args.dry_run:
            staged, left_out = stage_export(args.run_dir, args.staging_dir, repo_id=args.hub_model_id, **options)
            files = sorted(p.name for p in staged.iterdir())
            print(f"staged {len(files)} files in {staged}: {', '.join(files)}")
            print(f"left out: {', '.join(left_out) or 'nothing'}; nothing was uploaded (--dry_run)")
            return 0
        url = publish(
            args.run_dir, args.hub_model_id, private=args.hub_private_repo, token=args.hub_token,
            staging_dir=args.staging_dir, commit_message=args.commit_message, **options,
        )  # fmt: skip
    except PublishError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"published {args.hub_model_id} ({'private' if args.hub_private_repo else 'public'}): {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
