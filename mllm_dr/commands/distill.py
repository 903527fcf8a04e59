"""Distil teacher rationales (paper Table 1) into rationales.jsonl: a large teacher LLM, shown each
interview and the true item score, writes the ``Evaluation Reason:`` that stage 2 trains on.

    mllm-dr-distill --dataset_format edaic --data_dir /data/E-DAIC \\
        --teacher local --teacher_model path/to/instruct-model --rationales runs/rationales.jsonl

E-DAIC-WOZ, DAIC-WOZ and CMDC are distributed under end-user licence agreements that forbid sharing
the transcripts (or anything derived from them) with third parties: an endpoint that is not on this
machine is refused unless you pass --allow-remote (and a warning is printed whenever it is used).

One run at a time writes a rationales file: a second run into the same file stops at once with a
one-line message. Each request to an endpoint has a total deadline (--timeout), and a run stops
after --max_consecutive_failures items in a row got no answer (everything written stays; rerun to
resume).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from ..data import SPLITS, CorpusArguments, failures_path, load_splits
from ..distillation import (
    DEFAULT_MAX_CONSECUTIVE_FAILURES,
    DEFAULT_SPLITS,
    DEFAULT_TEACHER_PROMPT,
    LICENCE_NOTICE,
    TEACHER_PROMPTS,
    EndpointUnreachable,
    LocalTeacher,
    OpenAICompatibleTeacher,
    Teacher,
    check_endpoint_allowed,
    distill,
    is_loopback_url,
    remote_warning,
)
from ..io import FolderInUse

logger = logging.getLogger("mllm_dr.distill")


@dataclass
class DistillArguments:
    """What to distil and where the records go."""

    rationales: str = field(
        metadata={"help": "rationales.jsonl to write (failures go to rationales.failures.jsonl beside it).",
                  "aliases": ["--output"]}
    )
    splits: list[str] = field(
        default_factory=lambda: list(DEFAULT_SPLITS),
        metadata={"help": "Splits to distil ('all' for every split); the teacher sees labels, so never the test split."},
    )
    limit: int | None = field(default=None, metadata={"help": "At most this many new items (a smoke run)."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (--no_progress: none)."})
    teacher_prompt: str = field(
        default=DEFAULT_TEACHER_PROMPT,
        metadata={"help": "Teacher prompt: table1 (the paper's Table 1) or table1_quotes (the same, asking for one or "
                          "two verbatim quotes of the participant in double quotes; prompt_version table1-quotes-v1).",
                  "choices": list(TEACHER_PROMPTS)},
    )


@dataclass
class TeacherArguments:
    """The teacher: a local causal LM or an OpenAI-compatible endpoint."""

    teacher: str = field(metadata={"help": "Where the teacher runs: local | openai.", "choices": ["local", "openai"]})
    teacher_model: str = field(metadata={"help": "Local model folder, or the model name at the endpoint."})
    teacher_name: str | None = field(
        default=None,
        metadata={"help": "Name stored in each record (default: the model folder's name or the endpoint's model name)."},
    )
    format_retries: int = field(default=2, metadata={"help": "Extra attempts after a malformed reply."})
    temperature: float | None = field(
        default=None,
        metadata={"help": "Sampling temperature (openai: sent only when set; local: for sampling, default 0.8)."},
    )
    max_new_tokens: int | None = field(default=None, metadata={"help": "Reply length cap (local default 256)."})
    device: str = field(default="auto", metadata={"help": "Local teacher: auto, cpu, cuda, cuda:1, ..."})
    dtype: str = field(
        default="auto",
        metadata={"help": "Local teacher: model dtype.", "choices": ["auto", "float32", "float16", "bfloat16"]},
    )
    batch_size: int = field(default=4, metadata={"help": "Local teacher: prompts generated together (left-padded)."})
    do_sample: bool = field(default=False, metadata={"help": "Local teacher: sample from the first attempt (default greedy)."})
    top_k: int = field(default=10, metadata={"help": "Local teacher: top-k when sampling (the paper's 10)."})
    api_base: str | None = field(default=None, metadata={"help": "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Environment variable holding the API key."})
    allow_remote: bool = field(
        default=False,
        metadata={"help": "Permit an endpoint that is not on this machine (read the licence note first).",
                  "aliases": ["--allow-remote"]},
    )
    timeout: float = field(
        default=120.0,
        metadata={"help": "Endpoint: deadline in seconds for a whole request (connect, send and the complete reply), "
                          "enforced however slowly the server sends; a request past it is retried like a "
                          "connection error."},
    )
    http_retries: int = field(
        default=5, metadata={"help": "Endpoint: retries after 5xx/429/connection errors/a passed deadline."}
    )
    max_consecutive_failures: int = field(
        default=DEFAULT_MAX_CONSECUTIVE_FAILURES,
        metadata={"help": "Endpoint: stop the run after this many items in a row got no answer (every retry refused, "
                          "reset, past the deadline or 408/429/5xx); any answer resets the count; 0: never stop. "
                          "Everything written stays; rerun to resume."},
    )
    retry_base_delay: float = field(default=1.0, metadata={"help": "Endpoint: first back-off delay (doubles each retry)."})
    max_retry_delay: float = field(default=60.0, metadata={"help": "Endpoint: cap on one back-off delay (s)."})
    num_workers: int = field(default=1, metadata={"help": "Endpoint: concurrent requests."})


ARGUMENTS = (CorpusArguments, DistillArguments, TeacherArguments)


def build_parser() -> HfArgumentParser:
    return HfArgumentParser(ARGUMENTS, description=__doc__.split("\n\n")[0], epilog=LICENCE_NOTICE)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    corpus_args, args, teacher_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if corpus_args.data_dir is None:
        parser.error("--data_dir is required")
    api_key = None
    if teacher_args.teacher == "openai":
        if not teacher_args.api_base:
            parser.error("--teacher openai needs --api_base")
        try:
            check_endpoint_allowed(teacher_args.api_base, teacher_args.allow_remote)  # before reading or writing anything
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        warning = remote_warning(teacher_args.api_base)  # allowed, so --allow-remote was given
        if warning:
            print(warning, file=sys.stderr)
        api_key = os.environ.get(teacher_args.api_key_env) or None
        if api_key is None:
            if not is_loopback_url(teacher_args.api_base):
                print(f"error: no API key: set the environment variable {teacher_args.api_key_env}", file=sys.stderr)
                return 2
            logger.warning("%s is not set: sending no Authorization header", teacher_args.api_key_env)
    splits = list(SPLITS) if args.splits == ["all"] else args.splits
    if "test" in splits:
        logger.warning("distilling the test split: the teacher sees its labels; keep these out of evaluation")

    try:
        corpus = load_splits(corpus_args, splits)
        rows = [{"split": name, **dict(row)} for name in splits for row in corpus[name]]
        if teacher_args.teacher == "openai":
            teacher: Teacher = OpenAICompatibleTeacher(
                teacher_args.api_base,
                teacher_args.teacher_model,
                api_key=api_key,
                allow_remote=teacher_args.allow_remote,
                name=teacher_args.teacher_name,
                timeout=teacher_args.timeout,
                http_retries=teacher_args.http_retries,
                retry_base_delay=teacher_args.retry_base_delay,
                max_retry_delay=teacher_args.max_retry_delay,
                num_workers=teacher_args.num_workers,
                temperature=teacher_args.temperature,
                max_tokens=teacher_args.max_new_tokens,
            )
        else:
            teacher = LocalTeacher(
                teacher_args.teacher_model,
                name=teacher_args.teacher_name,
                device=teacher_args.device,
                dtype=teacher_args.dtype,
                batch_size=teacher_args.batch_size,
                max_new_tokens=teacher_args.max_new_tokens or 256,
                do_sample=teacher_args.do_sample,
                temperature=0.8 if teacher_args.temperature is None else teacher_args.temperature,
                top_k=teacher_args.top_k,
            )
        summary = distill(
            rows,
            teacher,
            args.rationales,
            splits=splits,
            format_retries=teacher_args.format_retries,
            limit=args.limit,
            progress=args.progress,
            max_consecutive_failures=teacher_args.max_consecutive_failures,
            prompt=args.teacher_prompt,
        )
    except FolderInUse as error:  # another run writes this file: nothing was asked or written
        raise SystemExit(f"error: {error}") from None
    except EndpointUnreachable as error:
        print(f"error: {error}", file=sys.stderr)
        print(f"failures recorded in {failures_path(args.rationales)} (a rerun retries them)", file=sys.stderr)
        return 2
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: every finished record is in {args.rationales}; rerun to resume", file=sys.stderr)
        return 130
    print(f"{summary} -> {args.rationales}", file=sys.stderr)
    if summary.failed:
        print(f"failures recorded in {failures_path(args.rationales)} (a rerun retries them)", file=sys.stderr)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
