"""MLlm-DR's checkpoint formats, written by training and read by inference.

* **Merged** (:func:`export_merged`): a self-contained folder (LoRA merged into the backbone, the
  three model files beside the weights): ``AutoModel.from_pretrained(dir, trust_remote_code=True)``.
* **Adapter** (:func:`export_adapter`): only what MLlm-DR adds or trains, the config, the processor
  and the generation config, with the base model recorded. LoRA (when present) is in PEFT's own
  format (``adapter_config.json`` + ``adapter_model.safetensors``, loadable with
  ``peft.PeftModel.from_pretrained`` onto an MLlm-DR model); the LQ-formers, projectors, MAA head
  and the placeholder tokens' embedding rows, which PEFT's format cannot hold without changing the
  training, are in ``mllm_dr_modules.safetensors``. :func:`load_adapter_export` is the one-call
  loader (a folder or a Hub repo id). Stage-1 outputs are adapter exports without LoRA.

Both carry the full ``MllmDrConfig``: a reload rebuilds it from the saved config, never from a list
of fields kept by hand.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import configuration_mllm_dr
import modeling_mllm_dr
import processing_mllm_dr
from configuration_mllm_dr import MllmDrConfig
from modeling_mllm_dr import MllmDrForConditionalGeneration
from processing_mllm_dr import MllmDrProcessor

from .io import write_json_atomic

TRAINABLE_STATE_FILE = "mllm_dr_trainable.safetensors"
MODULES_FILE = "mllm_dr_modules.safetensors"
ADAPTER_MANIFEST = "mllm_dr_adapter.json"
LORA_CONFIG_FILE = "lora_config.json"  # exports before PEFT's format was used: LoRA inside MODULES_FILE
PEFT_CONFIG_FILE = "adapter_config.json"
# LoRA on the LLM's modules only: a suffix match would also hit the LQ-formers' own q/v projections.
DEFAULT_LORA_TARGET = r"language_model\..*\.(q_proj|v_proj)"
MODEL_FILES = tuple(Path(inspect.getfile(m)) for m in (configuration_mllm_dr, modeling_mllm_dr, processing_mllm_dr))


def unwrap(model: torch.nn.Module) -> MllmDrForConditionalGeneration:
    """The ``MllmDrForConditionalGeneration`` inside DDP / PEFT wrappers."""
    while True:
        if isinstance(model, MllmDrForConditionalGeneration):
            return model
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            raise TypeError(f"no MllmDrForConditionalGeneration inside {type(model).__name__}")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter, named as in the unwrapped model (LoRA names included)."""
    base = unwrap(model)
    return {name: p.detach().cpu().clone() for name, p in base.named_parameters() if p.requires_grad}


def new_token_rows(model: MllmDrForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The embedding (and untied LM-head) rows of ``<AudioHere>``/``<VideoHere>``: resizing
    initialised them randomly, so an export without them would reload to different outputs."""
    ids = torch.tensor([model.config.audio_token_id, model.config.video_token_id])
    rows = {"new_tokens.ids": ids, "new_tokens.input_embeddings": model.get_input_embeddings().weight[ids]}
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        rows["new_tokens.output_embeddings"] = output.weight[ids]
    return {k: v.detach().cpu().contiguous() for k, v in rows.items()}


def load_new_token_rows(model: MllmDrForConditionalGeneration, state: dict[str, torch.Tensor]) -> None:
    ids = state["new_tokens.ids"].tolist()
    expected = [model.config.audio_token_id, model.config.video_token_id]
    if ids != expected:
        raise ValueError(f"saved placeholder token ids {ids} differ from the model's {expected}")
    with torch.no_grad():
        model.get_input_embeddings().weight[ids] = state["new_tokens.input_embeddings"].to(
            model.get_input_embeddings().weight.dtype
        )
        if "new_tokens.output_embeddings" in state:
            model.get_output_embeddings().weight[ids] = state["new_tokens.output_embeddings"].to(
                model.get_output_embeddings().weight.dtype
            )


def load_named_state(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Copies ``state`` into the unwrapped model's parameters by name; refuses unknown names."""
    base = unwrap(model)
    parameters = dict(base.named_parameters())
    unknown = sorted(set(state) - set(parameters))
    if unknown:
        raise ValueError(f"{where}: {len(unknown)} saved tensors do not exist in the model, e.g. {unknown[:3]}")
    with torch.no_grad():
        for name, tensor in state.items():
            if parameters[name].shape != tensor.shape:
                raise ValueError(
                    f"{where}: {name} has shape {tuple(tensor.shape)}, model expects {tuple(parameters[name].shape)}"
                )
            parameters[name].copy_(tensor.to(parameters[name].dtype))


def apply_lora(model: MllmDrForConditionalGeneration, lora_config: Any) -> Any:
    """``peft.get_peft_model`` (use a ``target_modules`` regex over the LLM, e.g. :data:`DEFAULT_LORA_TARGET`)."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config)


def lora_config_to_dict(lora_config: Any) -> dict[str, Any]:
    data = lora_config.to_dict()
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in data.items()}


def copy_model_files(output_dir: str | Path) -> None:
    """The three self-contained model files, beside the weights (what ``trust_remote_code`` loads)."""
    for source in MODEL_FILES:
        shutil.copyfile(source, Path(output_dir) / source.name)


def export_adapter(
    model: torch.nn.Module,
    processor: MllmDrProcessor,
    output_dir: str | Path,
    base_model: str,
    lora_config: Any = None,
    manifest: dict[str, Any] | None = None,
) -> Path:
    """The small export: LoRA in PEFT's format (when present), the LQ-formers, projectors, head and
    the new tokens' embedding rows in :data:`MODULES_FILE`, the config, generation config and
    processor, with the base model recorded. Reload with :func:`load_adapter_export`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    base = unwrap(model)
    state = {
        name: p.detach().cpu().contiguous()
        for name, p in base.named_parameters()
        if not name.startswith("language_model.")
    }
    state.update(new_token_rows(base))
    save_file(state, str(output_dir / MODULES_FILE), metadata={"format": "pt"})
    base.config.save_pretrained(output_dir)
    base.generation_config.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    copy_model_files(output_dir)
    if lora_config is not None:
        _save_peft_adapter(model, output_dir)
    write_json_atomic(output_dir / ADAPTER_MANIFEST, {"base_model": base_model, "lora": lora_config is not None, **(manifest or {})})
    return output_dir


def _save_peft_adapter(model: torch.nn.Module, output_dir: Path) -> None:
    """PEFT's ``adapter_config.json`` + ``adapter_model.safetensors`` (LoRA only). Its model card is
    not kept (ours is written beside), the resized embeddings are ours to save (no Hub lookup), and
    ``base_model_name_or_path`` is cleared: the base of this adapter is an MLlm-DR model, not the
    backbone a PEFT auto-class would load."""
    peft_model = model
    while not hasattr(peft_model, "peft_config") and hasattr(peft_model, "module"):
        peft_model = peft_model.module  # DDP
    if not hasattr(peft_model, "peft_config"):
        raise TypeError(f"a LoRA export needs the PEFT model, got {type(model).__name__}")
    card = output_dir / "README.md"
    had_card = card.is_file()
    peft_model.save_pretrained(output_dir, save_embedding_layers=False, safe_serialization=True)
    if not had_card:
        card.unlink(missing_ok=True)
    config_file = output_dir / PEFT_CONFIG_FILE
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = None
    write_json_atomic(config_file, config)


def is_adapter_export(directory: str | Path) -> bool:
    return (Path(directory) / ADAPTER_MANIFEST).is_file()


def read_adapter_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / ADAPTER_MANIFEST
    if not path.is_file():
        raise ValueError(f"{directory} is not an MLlm-DR adapter export: {ADAPTER_MANIFEST} is missing")
    return json.loads(path.read_text())


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``: a Hub client's error without its traceback or detail."""
    text = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def resolve_model_folder(path_or_repo: str | Path, revision: str | None = None) -> Path:
    """A local folder as it is; otherwise a Hub repo id, downloaded (or taken from the cache) with
    ``huggingface_hub.snapshot_download``."""
    path = Path(path_or_repo)
    if path.is_dir():
        return path
    if path.exists() or str(path_or_repo).startswith((".", "/", "~")) or str(path_or_repo).count("/") > 1:
        raise ValueError(f"{path_or_repo}: no such model folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_repo), revision=revision))
    except Exception as error:  # offline, unknown repo, no access: one line instead of the client's traceback
        raise ValueError(f"{path_or_repo}: not a local folder, and the Hub repo could not be fetched ({one_line(error)})") from None


def load_adapter_export(
    directory: str | Path,
    backbone: str | None = None,
    merge: bool = False,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    quantization_config: Any = None,
) -> tuple[torch.nn.Module, MllmDrProcessor]:
    """Rebuilds a model from an adapter export (or a stage-1 output), a folder or a Hub repo id, on
    its recorded base model (or ``backbone``): the saved config whole, the backbone's weights, the
    saved modules, then LoRA through PEFT. Returns ``(model, processor)``; with LoRA, a PEFT model
    unless ``merge``. ``quantization_config`` loads the base model quantised (QLoRA training)."""
    directory = resolve_model_folder(directory, revision)
    manifest = read_adapter_manifest(directory)
    base_model = backbone or manifest["base_model"]
    config = MllmDrConfig.from_pretrained(directory)
    processor = MllmDrProcessor.from_pretrained(directory)
    model = MllmDrForConditionalGeneration.from_backbone(
        base_model, tokenizer=processor.tokenizer, config=config, dtype=dtype, quantization_config=quantization_config
    )
    if (model.config.audio_token_id, model.config.video_token_id) != (config.audio_token_id, config.video_token_id):
        raise ValueError(
            f"{directory}: the base model {base_model} gives placeholder ids "
            f"{(model.config.audio_token_id, model.config.video_token_id)}, the export used "
            f"{(config.audio_token_id, config.video_token_id)}"
        )
    if (directory / "generation_config.json").is_file():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(directory)
    state = load_file(str(directory / MODULES_FILE))
    load_new_token_rows(model, state)
    state = {k: v for k, v in state.items() if not k.startswith("new_tokens.")}
    result: torch.nn.Module = model
    if manifest.get("lora") and (directory / PEFT_CONFIG_FILE).is_file():
        from peft import PeftModel

        result = PeftModel.from_pretrained(model, str(directory), is_trainable=False)
    elif manifest.get("lora"):  # the earlier format: LoRA's config beside, its weights in MODULES_FILE
        from peft import LoraConfig

        lora_config = LoraConfig(**json.loads((directory / LORA_CONFIG_FILE).read_text()))
        result = apply_lora(model, lora_config)
    load_named_state(result, state, str(directory / MODULES_FILE))
    if merge and manifest.get("lora"):
        result = result.merge_and_unload()
    result.eval()
    return result, processor


def export_merged(model: torch.nn.Module, processor: MllmDrProcessor, output_dir: str | Path) -> Path:
    """A self-contained checkpoint (LoRA merged): ``AutoModel.from_pretrained(dir, trust_remote_code=True)``."""
    output_dir = Path(output_dir)
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    merged = unwrap(merged)
    merged.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir


def check_weight_files(folder: str | Path) -> None:
    """Every ``.safetensors`` file directly in ``folder`` opens and holds whole tensors (its header
    parses and the file is as long as the header says): a truncated copy raises ``ValueError``
    naming the file instead of a deep traceback at load time. Reads headers only."""
    from safetensors import safe_open

    for file in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as error:  # safetensors raises its own SafetensorError, or OSError
            raise ValueError(f"{file}: not a readable safetensors file ({error}): truncated or damaged copy?") from None


def check_checkpoint_folder(path: str | Path) -> None:
    """An MLlm-DR model folder (checkpoint or adapter export): its ``config.json`` names MLlm-DR's
    ``model_type`` and its safetensors files are whole; raises ``ValueError`` naming the file."""
    config = Path(path) / "config.json"
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as error:  # missing, not UTF-8, not JSON, not an object
        raise ValueError(f"{config}: not a readable JSON config ({error})") from None
    if model_type != MllmDrConfig.model_type:
        raise ValueError(
            f"{config}: model_type {model_type!r} is not MLlm-DR's ({MllmDrConfig.model_type!r}); for an "
            "untrained backbone pass --zero_shot"
        )
    check_weight_files(path)
