"""Publishing an MLlm-DR export to the Hugging Face Hub: one self-contained folder, uploaded with
``huggingface_hub``.

:func:`stage_export` copies exactly one export of a training output (``merged`` by default, or
``adapter``) into a staging folder: the three model files at its root, the config, generation
config, processor and safetensors weights, plus a card from :func:`mllm_dr.cards.build_card`.
Nothing else travels: no ``run_manifest.json`` (local paths, arguments), no ``checkpoint-*``
(optimizer state), no second copy of the backbone, no data fingerprint. A staged folder holding a
path of this machine in any of its JSON files is refused. :func:`upload` creates the repo
(private unless asked) and uploads the folder; a network or Hub failure is one line of ours.

The licence guard comes first in every caller: weights trained on E-DAIC-WOZ, DAIC-WOZ or CMDC may
be restricted by those corpora's licences.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backbones import MARKER as BACKBONE_MARKER  # written by mllm-dr-prepare-backbone
from .cards import KINDS, PLACEHOLDER, build_card, check_card, is_hub_id, read_evaluation
from .checkpoints import ADAPTER_MANIFEST, MODEL_FILES, is_adapter_export, one_line
from .io import write_json_atomic, write_text_atomic

RUN_MANIFEST = "run_manifest.json"
# What a Hub folder may hold; everything else in an export is left out (and listed).
MODEL_PATTERNS = (
    "config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
    "processor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model",
    *(source.name for source in MODEL_FILES),
)  # fmt: skip
ADAPTER_PATTERNS = (*MODEL_PATTERNS, ADAPTER_MANIFEST, "adapter_config.json")
# JSON files whose strings are configuration (not a vocabulary, where "/usr" may be a token).
VOCABULARY_FILES = {"tokenizer.json", "vocab.json"}
LICENCE_GUARD = (
    "publishing uploads weights trained on licensed data (E-DAIC-WOZ, DAIC-WOZ and CMDC forbid sharing "
    "transcripts and may restrict derived weights). Check your data licence; if it allows sharing, add "
    "--i_may_share_weights."
)


class PublishError(ValueError):
    """A refusal or failure of the publish step, in one line."""


@dataclass
class PublishArguments:
    """What is published (shared by ``mllm-dr-train --push_to_hub`` and ``mllm-dr-push``)."""

    hub_export: str = field(
        default="merged",
        metadata={"help": "Which export becomes the Hub repo: merged (self-contained, loads with AutoModel) or "
                  "adapter (LoRA in PEFT's format + MLlm-DR's modules, loads with mllm_dr.load_adapter_export; "
                  "the only export of a stage-1 output).", "choices": list(KINDS)},
    )
    base_model_id: str | None = field(
        default=None,
        metadata={"help": "The backbone's Hub id (owner/name) for the card's base_model and the adapter's reload "
                  "(default: --backbone when it is a Hub id, else what its folder records; a local path is "
                  "never written)."},
    )
    hub_license: str | None = field(
        default=None,
        metadata={"help": "The card's licence (a Hub licence id, e.g. apache-2.0 or llama3); default: the prepared "
                  "backbone's when recorded, else 'other' pointing at the base model's licence."},
    )


def _recorded(backbone: str | None, key: str, file: str = BACKBONE_MARKER) -> Any:
    """``key`` of a JSON file in a backbone folder (its ``mllm_dr_backbone.json`` by default); None
    when the folder, the file or the key is absent."""
    try:
        return json.loads((Path(str(backbone)) / file).read_text()).get(key)
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def backbone_hub_id(backbone: str | None) -> str | None:
    """The Hub id whose weights the backbone is: ``backbone`` itself when it is one; for a local
    folder, the id its ``mllm_dr_backbone.json`` (``hub_id``) or ``config.json`` (``_name_or_path``)
    records; otherwise None."""
    if backbone is None:
        return None
    if is_hub_id(backbone):
        return backbone
    for value in (_recorded(backbone, "hub_id"), _recorded(backbone, "_name_or_path", "config.json")):
        if is_hub_id(value):
            return value
    return None


def backbone_lineage(backbone: str | None) -> str | None:
    """The Hub model a local backbone was converted from (e.g. the dequantised SmolLM2 GGUF), for the
    card's ``base_model``; the exact id when there is one."""
    exact = backbone_hub_id(backbone)
    derived = _recorded(backbone, "derived_from")
    return exact or (derived if is_hub_id(derived) else None)


def backbone_license(backbone: str | None) -> str | None:
    """The licence a prepared backbone folder records (``mllm_dr_backbone.json``), else None."""
    return _recorded(backbone, "license")


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``run_manifest.json`` (``{}`` when the folder has none)."""
    path = Path(run_dir) / RUN_MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise PublishError(f"{path}: not readable JSON ({error})") from None


def find_export(run_dir: str | Path, kind: str) -> Path:
    """The folder of ``kind`` in a training output: ``merged/`` or ``adapter/`` of a stage-2 run, the
    run folder itself for a stage-1 output (adapter) or for a folder that is one export."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PublishError(f"{run_dir}: no such folder")
    if (run_dir / kind / "config.json").is_file():
        return run_dir / kind
    if (run_dir / "config.json").is_file() and is_adapter_export(run_dir) == (kind == "adapter"):
        return run_dir
    if kind == "merged" and is_adapter_export(run_dir):
        raise PublishError(f"{run_dir} is a stage-1 output (LQ-formers only): it has no merged export; use --hub_export adapter")
    raise PublishError(f"{run_dir}: no {kind} export here (expected {run_dir / kind} or a {kind} export folder)")


def _wanted(name: str, kind: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in (ADAPTER_PATTERNS if kind == "adapter" else MODEL_PATTERNS))


def local_paths(folder: str | Path, forbidden: list[str]) -> list[str]:
    """``file: key = value`` for each string in the folder's JSON files (vocabularies excepted) that
    names a path of this machine: absolute and existing, under the home folder, or containing one of
    ``forbidden`` (the run's and the backbone's folders)."""
    home = str(Path.home())
    found = []

    def visit(value: Any, where: str, file: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                visit(item, f"{where}.{key}" if where else str(key), file)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                visit(item, f"{where}[{index}]", file)
        elif isinstance(value, str) and len(value) > 1:
            if (value.startswith("/") and Path(value).exists()) or (home != "/" and value.startswith(home + "/")) or any(
                f and f in value for f in forbidden
            ):
                found.append(f"{file}: {where} = {value!r}")

    for path in sorted(Path(folder).glob("*.json")):
        if path.name not in VOCABULARY_FILES:
            visit(json.loads(path.read_text()), "", path.name)
    return found


def stage_export(
    run_dir: str | Path,
    staging_dir: str | Path,
    *,
    kind: str = "merged",
    repo_id: str | None = None,
    base_model_id: str | None = None,
    license: str | None = None,
    evaluation_dir: str | Path | None = None,
) -> tuple[Path, list[str]]:
    """Copies the ``kind`` export of ``run_dir`` into ``staging_dir`` (which must be empty or new) with
    its card; returns ``(staging_dir, names left out)``. Refuses (``PublishError``) an adapter whose
    base model has no Hub id, a folder without the model files, and any local path in the result."""
    if kind not in KINDS:
        raise PublishError(f"--hub_export must be one of {KINDS}, got {kind!r}")
    if repo_id is not None and not is_hub_id(repo_id):
        raise PublishError(f"--hub_model_id {repo_id!r} is not a Hub repo id (owner/name)")
    run_dir = Path(run_dir)
    export = find_export(run_dir, kind)
    run = read_run(run_dir) or read_run(export.parent)
    recorded = run.get("base_model_id")
    adapter_manifest: dict[str, Any] = {}
    if kind == "adapter":
        adapter_manifest = json.loads((export / ADAPTER_MANIFEST).read_text())
    if base_model_id is not None and not is_hub_id(base_model_id):
        raise PublishError(f"--base_model_id {base_model_id!r} is not a Hub id (owner/name)")
    local_base = adapter_manifest.get("base_model") or run.get("base_model")
    exact = base_model_id or recorded or backbone_hub_id(local_base)
    if kind == "adapter" and exact is None:
        raise PublishError(
            f"{export}: an adapter is rebuilt on its base model's weights, recorded here as a local folder "
            f"{' converted from ' + backbone_lineage(local_base) + ' (other weights)' if backbone_lineage(local_base) else ''}"
            "; pass the Hub id that holds exactly those weights with --base_model_id, or publish the merged export"
        )
    base_model_id = exact or backbone_lineage(local_base)
    missing = [source.name for source in MODEL_FILES if not (export / source.name).is_file()]
    if missing or not (export / "config.json").is_file():
        raise PublishError(f"{export}: not a complete MLlm-DR export (missing {missing or ['config.json']})")
    evaluation = read_evaluation(evaluation_dir) if evaluation_dir is not None else None

    staging = Path(staging_dir)
    if staging.exists() and any(staging.iterdir()):
        raise PublishError(f"{staging} is not empty: stage into a new folder")
    staging.mkdir(parents=True, exist_ok=True)
    left_out = []
    for path in sorted(export.iterdir()):
        if path.is_file() and _wanted(path.name, kind):
            shutil.copyfile(path, staging / path.name)
        elif path.name != "README.md":  # the card is written anew below
            left_out.append(path.name)
    if kind == "adapter":  # the base model by its Hub id; nothing else of the run
        keep = {k: adapter_manifest[k] for k in ("lora", "stage", "mode") if k in adapter_manifest}
        write_json_atomic(staging / ADAPTER_MANIFEST, {"base_model": base_model_id, **keep})
        peft_config = staging / "adapter_config.json"
        if peft_config.is_file():
            data = json.loads(peft_config.read_text())
            data["base_model_name_or_path"] = None  # an MLlm-DR model, not the backbone (see checkpoints)
            write_json_atomic(peft_config, data)
    _clear_local_names(staging / "config.json", base_model_id)
    license = license or backbone_license(adapter_manifest.get("base_model") or run.get("base_model"))
    card = build_card(run, kind, where=repo_id or PLACEHOLDER, base_model_id=base_model_id, license=license,
                      evaluation=evaluation)  # fmt: skip
    problems = check_card(card)
    if problems:
        raise PublishError(f"the model card is not valid: {'; '.join(problems)}")
    write_text_atomic(staging / "README.md", str(card))
    forbidden = [str(run_dir.resolve()), str(export.resolve())]
    for local in (run.get("base_model"), adapter_manifest.get("base_model")):
        if local and Path(str(local)).exists():
            forbidden.append(str(Path(str(local)).resolve()))
    found = local_paths(staging, forbidden)
    if found:
        raise PublishError(f"{staging} would publish paths of this machine: {'; '.join(found[:5])}")
    return staging, left_out


def _clear_local_names(config_file: Path, base_model_id: str | None) -> None:
    """``_name_or_path`` entries of a config that name a local folder (transformers records where the
    backbone was read from) become the base model's Hub id, or empty."""

    def clear(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                key: (base_model_id or "") if key == "_name_or_path" and isinstance(item, str) and not is_hub_id(item)
                else clear(item)
                for key, item in value.items()
            }  # fmt: skip
        return value

    data = json.loads(config_file.read_text())
    cleared = clear(data)
    if cleared != data:
        write_json_atomic(config_file, cleared)


def upload(
    folder: str | Path, repo_id: str, *, private: bool = True, token: str | None = None, commit_message: str | None = None
) -> str:
    """``HfApi.create_repo`` (private unless ``private=False``; an existing repo keeps its visibility),
    then ``upload_folder``; returns the commit URL. Any failure (offline, no token, no access, the
    Hub's error, including its check of the card's metadata) is a ``PublishError`` in one line."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, visibility="private" if private else "public", exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=commit_message or "MLlm-DR export",
        )  # fmt: skip
    except Exception as error:  # httpx / huggingface_hub errors, offline mode: one line, not the client's traceback
        raise PublishError(f"could not publish to {repo_id} on {api.endpoint} ({one_line(error)})") from None
    return str(info.commit_url if hasattr(info, "commit_url") else info)


def publish(
    run_dir: str | Path,
    repo_id: str,
    *,
    kind: str = "merged",
    private: bool = True,
    token: str | None = None,
    base_model_id: str | None = None,
    license: str | None = None,
    evaluation_dir: str | Path | None = None,
    staging_dir: str | Path | None = None,
    commit_message: str | None = None,
) -> str:
    """Stages the ``kind`` export of ``run_dir`` (into ``staging_dir``, else a temporary folder that is
    removed afterwards) and uploads it to ``repo_id``; returns the commit URL."""
    temporary = staging_dir is None
    staging = Path(tempfile.mkdtemp(prefix="mllm-dr-hub-")) if temporary else Path(staging_dir)
    try:
        stage_export(run_dir, staging, kind=kind, repo_id=repo_id, base_model_id=base_model_id, license=license,
                     evaluation_dir=evaluation_dir)  # fmt: skip
        return upload(staging, repo_id, private=private, token=token, commit_message=commit_message)
    finally:
        if temporary:
            shutil.rmtree(staging, ignore_errors=True)
