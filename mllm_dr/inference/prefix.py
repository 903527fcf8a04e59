"""A participant's shared prompt prefix, prefilled once: its system prompt, feature placeholders and
transcript come before the item instruction, so all its items' prompts begin with the same tokens.
Generation (:func:`mllm_dr.inference.generation.generate_with_shared_prefix`) and the modality
attribution (:mod:`mllm_dr.inference.attribution`) both prefill that prefix once (batch 1), copy its
KV cache to every item and run only the item-specific suffixes; the MAA head still pools the whole
prompt (the prefix's last hidden states + the suffix's)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch


def cache_kwarg() -> str:
    """The KV cache's keyword: ``cache`` in transformers >= 5.2x, else ``past_key_values``."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in {f.name for f in fields(CausalLMOutputWithPast)} else "past_key_values"


def common_prefix_length(sequences: Sequence[torch.Tensor]) -> int:
    """The longest common prefix of ``sequences``, leaving each at least one token of its own."""
    shortest = min(len(s) for s in sequences)
    stacked = torch.stack([s[:shortest] for s in sequences])
    differs = (~(stacked == stacked[0]).all(dim=0)).nonzero()
    return min(int(differs[0]) if len(differs) else shortest, shortest - 1)


@dataclass
class Prefill:
    """One prefilled prefix (batch 1): its token ids, KV cache and last hidden states."""

    ids: torch.Tensor  # (length,)
    cache: Any
    hidden: torch.Tensor  # (1, length, hidden)

    def repeated(self, rows: int, copy: bool = True) -> Any:
        """The cache repeated for ``rows`` rows: a copy (this prefill stays usable), or with
        ``copy=False`` the cache itself, used up."""
        import copy as copying

        cache = copying.deepcopy(self.cache) if copy else self.cache
        cache.batch_repeat_interleave(rows)
        return cache


@torch.no_grad()
def prefill(model, ids: torch.Tensor, features: Mapping[str, torch.Tensor]) -> Prefill:
    """Runs the prefix ``ids`` (1-D) once with ``features`` (batch-1 ``audio_*``/``video_*`` tensors)."""
    prefix = ids.unsqueeze(0)
    out = model(
        input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True, compute_score=False,
        logits_to_keep=1, return_last_hidden_state=True, **features,
    )  # fmt: skip
    cache = next(out[name] for name in ("cache", "past_key_values") if name in out.keys())
    return Prefill(ids=ids, cache=cache, hidden=out.last_hidden_state)


def left_padded(
    suffixes: Sequence[torch.Tensor], pad_id: int, mask_dtype: torch.dtype = torch.long
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` of the suffixes left-padded to one width: after a shared prefix, the padding
    sits between prefix and suffix (the positions count real tokens only)."""
    width = max(len(s) for s in suffixes)
    first = suffixes[0]
    ids = torch.full((len(suffixes), width), pad_id, dtype=first.dtype, device=first.device)
    mask = torch.zeros((len(suffixes), width), dtype=mask_dtype, device=first.device)
    for i, suffix in enumerate(suffixes):
        ids[i, width - len(suffix) :] = suffix
        mask[i, width - len(suffix) :] = 1
    return ids, mask


def features_of(batch: Mapping[str, torch.Tensor], rows: slice | torch.Tensor) -> dict[str, torch.Tensor]:
    """The ``audio_*`` / ``video_*`` tensors of ``batch`` for ``rows``."""
    return {
        k: (v[rows] if isinstance(rows, slice) else v.index_select(0, rows))
        for k, v in batch.items() if k.startswith(("audio_", "video_"))
    }  # fmt: skip


def real_prompts(batch: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """Each row's prompt without its (left) padding."""
    return [row[mask] for row, mask in zip(batch["input_ids"], batch["attention_mask"].bool())]


def shared_prefill(model, batch: Mapping[str, torch.Tensor], features: Mapping[str, torch.Tensor] | None = None) -> Prefill:
    """The longest common prefix of ``batch``'s prompts, prefilled once with its first row's features
    (or ``features``: e.g. with a modality withheld)."""
    real = real_prompts(batch)
    common = common_prefix_length(real)
    return prefill(model, real[0][:common], features_of(batch, slice(0, 1)) if features is None else features)
