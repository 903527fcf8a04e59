"""Model cards for MLlm-DR exports, built with ``huggingface_hub.ModelCard`` / ``ModelCardData``.

One builder (:func:`build_card`) writes every card: the one training leaves beside its exports and
the one a Hub repo gets when it is published. It reads the run's ``run_manifest.json`` (arguments,
steps, data sizes) and, when attached, an evaluation's ``metrics.json`` / ``manifest.json``; it never
reads training text, and it never writes a local path: ``base_model`` is a Hub id or absent.
:func:`check_card` is the offline check of what it wrote (also run before every upload).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

PAPER_TITLE = "MLlm-DR: Towards Explainable Depression Recognition with MultiModal Large Language Models"
PAPER_URL = "https://arxiv.org/abs/2507.05591"
CITATION = """@article{zhang2025mllmdr,
  title   = {MLlm-DR: Towards Explainable Depression Recognition with MultiModal Large Language Models},
  author  = {Zhang, Wei and Chen, Juan and Zhu, En and Cheng, Wenhong and Li, YunPeng and Wang, Yanbo J.},
  journal = {arXiv preprint arXiv:2507.05591},
  year    = {2025}
}"""
DISCLAIMER = (  # every report's (evaluation, mllm-dr-predict)
    "MLlm-DR is a research tool, not a diagnostic device: these scores and rationales are not a clinical "
    "assessment and must not be used to diagnose, screen or treat anyone."
)
CARD_DISCLAIMER = (  # the reports' disclaimer, and what a shared checkpoint adds to it
    f"{DISCLAIMER} Scores and rationales can be wrong, biased by the small training corpora (E-DAIC-WOZ: 275 "
    "participants, CMDC: 78) and sensitive to recording conditions. Weights trained on licensed corpora may be "
    "subject to those corpora's licence terms: check before sharing."
)
CORPUS_NAMES = {"edaic": "E-DAIC-WOZ", "daic": "DAIC-WOZ", "cmdc": "CMDC"}
CORPUS_LANGUAGES = {"edaic": "en", "daic": "en", "cmdc": "zh"}
# Names in metrics.json -> (model-index metric type, display name), for the participants' PHQ totals.
INDEXED_METRICS = {"ccc": ("ccc", "CCC"), "rmse": ("rmse", "RMSE"), "mae": ("mae", "MAE"), "f1": ("f1", "F1")}
KINDS = ("merged", "adapter")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PLACEHOLDER = "<this folder>"

LOAD_MERGED = """```python
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{where}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{where}", trust_remote_code=True)
```

`trust_remote_code=True` runs this repository's `modeling_mllm_dr.py`, `configuration_mllm_dr.py` and
`processing_mllm_dr.py` (torch + transformers only): read them first, or `pip install mllm-dr` and
drop the flag (importing `mllm_dr` registers the installed classes). `generation_config.json`
carries the paper's sampling (temperature 0.8, top-k 10, at most 200 new tokens), so
`model.generate(**processor(...))` samples as the paper did."""

LOAD_ADAPTER = """```python
from mllm_dr import load_adapter_export

model, processor = load_adapter_export("{where}", merge=True)
```

This folder holds only what MLlm-DR trained: LoRA in PEFT's format (`adapter_config.json`,
`adapter_model.safetensors`; present after stage 2), the LQ-formers, projectors, MAA head and the
placeholder tokens' embedding rows (`mllm_dr_modules.safetensors`). `load_adapter_export` (from
`pip install mllm-dr`) rebuilds the model on the base model recorded in `mllm_dr_adapter.json`
(`{base}`; pass `backbone=` for a local copy), loads the modules, then LoRA through
`peft.PeftModel.from_pretrained`; `merge=False` keeps the PEFT model."""


def is_hub_id(name: str | None) -> bool:
    """``owner/name`` that is not a path on this machine."""
    return bool(name) and HUB_ID.match(str(name)) is not None and not Path(str(name)).exists()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _recipe(run: Mapping[str, Any]) -> list[str]:
    """The training recipe the run actually used, from its manifest's arguments."""
    arguments = run.get("arguments") or {}
    training, model = arguments.get("training") or {}, arguments.get("model") or {}
    data = run.get("data") or {}
    stage = run.get("stage")
    if not training:
        return ["The run manifest was not available: the training recipe is not recorded here."]
    rates = (
        ["lora_learning_rate", "head_learning_rate"] if stage == 2
        else ["lqformer_learning_rate", "projector_learning_rate"]
        + (["alignment_probe_learning_rate"] if training.get("alignment_probe_weight") else [])
    )  # fmt: skip
    precision = "bf16" if training.get("bf16") else "fp16" if training.get("fp16") else "fp32"
    batch = training.get("per_device_train_batch_size")
    accumulation = training.get("gradient_accumulation_steps") or 1
    world = run.get("world_size") or 1
    length = (
        f"{training.get('max_steps')} steps" if (training.get("max_steps") or 0) > 0
        else f"{_fmt(training.get('num_train_epochs'))} epochs"
    )  # fmt: skip
    lines = [
        f"| stage | {stage} ({'LQ-former alignment, LLM frozen' if stage == 1 else 'LoRA + MAA head, LQ-formers frozen'}) |",
        f"| prompt mode | `{run.get('mode')}` |",
        f"| length | {length}; {run.get('global_step', '-')} optimizer steps run |",
        f"| batch | {batch} per device x {accumulation} accumulation x {world} processes |",
        f"| precision | {precision} |",
        *[f"| {name} | {_fmt(training.get(name))} |" for name in rates],
        f"| optimizer / schedule | {training.get('optim')}, {training.get('lr_scheduler_type')}, warmup ratio "
        f"{_fmt(training.get('warmup_ratio'))}, weight decay {_fmt(training.get('weight_decay'))} |",
    ]
    if stage == 2:
        lines += [
            f"| LoRA | r {model.get('lora_r')}, alpha {model.get('lora_alpha')}, dropout {model.get('lora_dropout')}, "
            f"modules `{str(model.get('lora_target_modules')).replace('|', chr(92) + '|')}` |",
            f"| loss | {_fmt(training.get('lm_loss_weight'))} x LM cross-entropy + {_fmt(training.get('score_loss_weight'))}"
            f" x MSE ({training.get('loss_schedule')} schedule) |",
        ]
    elif training.get("alignment_probe_weight"):
        lines.append(f"| alignment probe (not in the paper) | weight {_fmt(training.get('alignment_probe_weight'))} |")
    selection = run.get("selection") or {}
    if selection.get("metric"):
        lines.append(f"| exported weights | the best dev `{selection['metric']}` ({_fmt(selection.get('best_metric'))}, "
                     f"step {selection.get('best_step')}) |")  # fmt: skip
    elif selection:
        lines.append(f"| exported weights | the last step ({selection.get('reason')}) |")
    transcripts = data.get("transcripts") or {}
    lines += [
        f"| modalities | audio {'on' if model.get('use_audio') else 'off'}, video {'on' if model.get('use_video') else 'off'} |",
        f"| transcript budget | {data.get('max_transcript_tokens')} tokens; {transcripts.get('truncated', '-')} of "
        f"{transcripts.get('participants', '-')} training participants' transcripts were cut (by at most "
        f"{transcripts.get('max_cut_tokens', '-')} tokens) |",
        f"| seed | {run.get('seed')} |",
    ]
    return ["| setting | value |", "|---|---|", *lines]


def _evaluation_section(evaluation: Mapping[str, Any] | None, dev_metrics: Mapping[str, Any] | None) -> list[str]:
    if evaluation is None:
        lines = ["No held-out evaluation is attached to this card (publish with `--evaluation_dir` to add one)."]
        losses = {k: v for k, v in (dev_metrics or {}).items() if k in ("eval_loss", "eval_lm_loss", "eval_score_loss")}
        if losses:
            shown = ", ".join(f"{k.removeprefix('eval_')} {_fmt(v)}" for k, v in losses.items())
            lines.append(f"Training ended at dev-split losses of {shown}: training objectives, not PHQ metrics.")
        return lines
    metrics, manifest = evaluation["metrics"], evaluation.get("manifest") or {}
    data = manifest.get("data") or {}
    lines = [
        f"Held-out evaluation: `{data.get('format')}` split `{data.get('split')}`, {data.get('participants')} participants, "
        f"{manifest.get('generation')}, score source `{manifest.get('score_source')}`; PHQ totals, cut-off "
        f"{_fmt(metrics.get('cutoff'))}.",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {label} | {_fmt(metrics.get(key))} |" for key, (_, label) in INDEXED_METRICS.items()],
        f"| format failures (rate) | {_fmt(metrics.get('format_failure_rate'))} strict, "
        f"{_fmt(metrics.get('format_failure_rate_permissive'))} permissive (comparable with the paper's Table 6, I) |",
    ]
    if (data.get("participants") or 0) < 30:
        lines += ["", f"With {data.get('participants')} participants these numbers have wide intervals; see the "
                  "evaluation's `report.md` for the bootstrap 95% intervals."]  # fmt: skip
    return lines


def _eval_results(evaluation: Mapping[str, Any], dataset_format: str | None, synthetic: bool) -> list[EvalResult]:
    metrics, manifest = evaluation["metrics"], evaluation.get("manifest") or {}
    split = (manifest.get("data") or {}).get("split")
    name = "synthetic E-DAIC-layout corpus" if synthetic else CORPUS_NAMES.get(dataset_format or "", dataset_format or "corpus")
    return [
        EvalResult(
            task_type="text-generation", task_name="Explainable PHQ scoring (participant totals)",
            dataset_type=(dataset_format or "corpus") + ("-synthetic" if synthetic else ""), dataset_name=name,
            dataset_split=split, metric_type=metric_type, metric_name=label, metric_value=float(metrics[key]),
        )  # fmt: skip
        for key, (metric_type, label) in INDEXED_METRICS.items()
        if isinstance(metrics.get(key), (int, float))
    ]


def build_card(
    run: Mapping[str, Any],
    kind: str,
    *,
    where: str = PLACEHOLDER,
    base_model_id: str | None = None,
    license: str | None = None,
    evaluation: Mapping[str, Any] | None = None,
) -> ModelCard:
    """The card of an export of ``kind`` (``merged`` or ``adapter``; stage-1 outputs are adapters).

    ``run`` is the run's manifest (``{}`` when unknown), ``where`` the folder or repo id the load
    snippet names, ``evaluation`` ``{"metrics": ..., "manifest": ...}`` of an evaluation folder
    (see :func:`read_evaluation`)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if base_model_id is not None and not is_hub_id(base_model_id):
        raise ValueError(f"base_model_id {base_model_id!r} is not a Hub id (owner/name)")
    data = run.get("data") or {}
    dataset_format, synthetic = data.get("format"), bool(data.get("synthetic"))
    stage = run.get("stage")
    tags = ["mllm-dr", "depression-recognition", "explainability", "phq", "multimodal", "research-only"]
    if kind == "adapter":
        tags.append("peft" if stage == 2 else "stage-1")
    if synthetic:
        tags.append("synthetic-data")
    card_data = ModelCardData(
        license=license or "other",
        license_name=None if license else "see-base-model-and-data-licences",
        license_link=None if license else (f"https://huggingface.co/{base_model_id}" if base_model_id else PAPER_URL),
        library_name="transformers",
        pipeline_tag="text-generation",
        base_model=base_model_id,
        tags=tags,
        language=CORPUS_LANGUAGES.get(dataset_format or ""),
        datasets=None if synthetic or dataset_format not in CORPUS_NAMES else [CORPUS_NAMES[dataset_format]],
        metrics=[metric for metric, _ in INDEXED_METRICS.values()],
        model_name=None if evaluation is None else f"MLlm-DR ({where})",
        eval_results=None if evaluation is None else _eval_results(evaluation, dataset_format, synthetic) or None,
    )
    corpus = "a synthetic corpus in the E-DAIC-WOZ layout" if synthetic else CORPUS_NAMES.get(dataset_format or "", f"`{dataset_format}`")
    sizes = f"{data.get('train_samples', '-')} train / {data.get('dev_samples', '-')} dev (participant, item) rows"
    load = (LOAD_MERGED if kind == "merged" else LOAD_ADAPTER).format(where=where, base=base_model_id or "the recorded base model")
    body = "\n".join([
        "---", card_data.to_yaml(), "---", "",
        f"# MLlm-DR ({'stage 1, LQ-formers' if stage == 1 else 'stage 2'}, {kind} export)", "",
        f"An implementation of [{PAPER_TITLE}]({PAPER_URL}): two LQ-formers turn pre-extracted audio (HuBERT) and "
        "visual (OpenFace / ResNet) features into embeddings a causal LM reads beside the interview transcript; the "
        "LM writes a rationale and a score for each PHQ item, and a multi-head attention aggregation (MAA) head "
        "regresses the item score from the same prompt. Item scores sum to the PHQ total.", "",
        f"- **Base model:** {f'[`{base_model_id}`](https://huggingface.co/{base_model_id})' if base_model_id else 'not a Hub model (recorded as a local folder; not named here)'}",
        f"- **Training data:** {corpus}, {sizes}. No transcript, rationale or feature is included here.",
        "", "## Intended use and limitations", "", CARD_DISCLAIMER, "",
        "## How to load", "", load, "",
        "## Training", "", *_recipe(run), "",
        "## Evaluation", "", *_evaluation_section(evaluation, run.get("final_metrics")), "",
        "## Citation", "", f"```bibtex\n{CITATION}\n```", "",
    ])  # fmt: skip
    return ModelCard(body)


def read_evaluation(folder: str | Path) -> dict[str, Any]:
    """``{"metrics": ..., "manifest": ...}`` of an ``mllm-dr-evaluate`` output folder."""
    import json

    from .evaluation import MANIFEST, METRICS  # the evaluation's file names (it imports this module)

    folder = Path(folder)
    try:
        return {name: json.loads((folder / file).read_text()) for name, file in (("metrics", METRICS), ("manifest", MANIFEST))}
    except (OSError, ValueError) as error:
        raise ValueError(f"{folder}: not a finished evaluation folder ({error})") from None


def check_card(card: ModelCard | str | Path) -> list[str]:
    """What is wrong with a card's metadata, offline (empty when nothing): it parses, names a
    licence, library and pipeline, its ``base_model`` is a Hub id, its model-index parses, it links
    the paper and carries the disclaimer."""
    if not isinstance(card, ModelCard):
        card = ModelCard.load(card) if Path(str(card)).is_file() else ModelCard(str(card))
    data, problems = card.data, []
    for key in ("license", "library_name", "pipeline_tag", "tags", "metrics"):
        if not getattr(data, key, None):
            problems.append(f"metadata has no {key}")
    if data.license == "other" and not (getattr(data, "license_name", None) and getattr(data, "license_link", None)):
        problems.append("license 'other' needs license_name and license_link")
    base = data.base_model
    for name in base if isinstance(base, list) else [base] if base else []:
        if not is_hub_id(name):
            problems.append(f"base_model {name!r} is not a Hub id")
    if data.eval_results is not None and not all(r.metric_value is not None for r in data.eval_results):
        problems.append("model-index has a result without a value")
    if PAPER_URL not in card.text:
        problems.append("the card does not link the paper")
    if "not a diagnostic device" not in card.text:
        problems.append("the card lacks the research-use disclaimer")
    return problems
