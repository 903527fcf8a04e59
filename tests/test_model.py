"""Core model properties (issue 2, tests 1-3, 5-6 and the missing-modality case)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mllm_dr.testing import AUDIO_DIM, VIDEO_DIM, build_tiny, random_features, tiny_lqformer

from modeling_mllm_dr import LQFormer, MllmDrForConditionalGeneration


def _batch(processor, rng, with_targets=True, video_missing=False, padding_side="left"):
    kwargs = {}
    if with_targets:
        kwargs = {"scores": [2, 0], "rationales": ["Reports poor sleep most nights.", "No sign of low mood."]}
    return processor(
        ["I sleep badly and wake up tired", "I feel fine"],
        [3, 2],
        audio_features=[random_features(rng, 9, AUDIO_DIM), random_features(rng, 5, AUDIO_DIM)],
        video_features=[random_features(rng, 6, VIDEO_DIM), None if video_missing else random_features(rng, 3, VIDEO_DIM)],
        padding_side=padding_side,
        **kwargs,
    )


# --------------------------------------------------------------------------- 1. padding invariance
def test_lqformer_output_unchanged_by_appended_masked_frames():
    torch.manual_seed(0)
    lqformer = LQFormer(tiny_lqformer(AUDIO_DIM)).eval()
    features = torch.randn(2, 7, AUDIO_DIM)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    reference = lqformer(features, mask)
    padded = torch.cat([features, 50 * torch.randn(2, 11, AUDIO_DIM)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 11, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(lqformer(padded, padded_mask), reference, atol=1e-5, rtol=0)
    # and the masked frames of sample 1 really are ignored
    changed = features.clone()
    changed[1, 5:] = 1e3
    torch.testing.assert_close(lqformer(changed, mask), reference, atol=1e-5, rtol=0)


def test_missing_modality_is_defined_and_independent_of_padding_content():
    torch.manual_seed(0)
    lqformer = LQFormer(tiny_lqformer(VIDEO_DIM)).eval()
    mask = torch.zeros(2, 6, dtype=torch.bool)
    first = lqformer(torch.randn(2, 6, VIDEO_DIM), mask)
    second = lqformer(torch.full((2, 6, VIDEO_DIM), float("nan")), mask)
    assert torch.isfinite(first).all()
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    # gradients through a fully masked sample are finite too
    lqformer.train()
    features = torch.randn(1, 4, VIDEO_DIM, requires_grad=True)
    lqformer(features, torch.zeros(1, 4, dtype=torch.bool)).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in lqformer.parameters() if p.grad is not None)


def test_score_head_ignores_padding_and_answer_tokens(tiny):
    model, processor = tiny
    rng = np.random.default_rng(1)
    batch = _batch(processor, rng)
    score = model(**batch).score
    # different answers, same prompts: same score
    other = processor(
        ["I sleep badly and wake up tired", "I feel fine"],
        [3, 2],
        audio_features=batch["audio_features"],
        video_features=batch["video_features"],
        scores=[0, 3],
        rationales=["Something entirely different and much longer than before, really.", "Short."],
    )
    other["audio_mask"], other["video_mask"] = batch["audio_mask"], batch["video_mask"]
    torch.testing.assert_close(model(**other).score, score, atol=1e-5, rtol=0)
    # extra left padding tokens: same score
    extra = 7
    padded = {k: v for k, v in batch.items()}
    pad = processor.tokenizer.pad_token_id
    padded["input_ids"] = torch.cat([torch.full((2, extra), pad), batch["input_ids"]], dim=1)
    padded["attention_mask"] = torch.cat([torch.zeros(2, extra, dtype=torch.long), batch["attention_mask"]], dim=1)
    padded["labels"] = torch.cat([torch.full((2, extra), -100), batch["labels"]], dim=1)
    padded["prompt_mask"] = torch.cat([torch.zeros(2, extra, dtype=torch.bool), batch["prompt_mask"]], dim=1)
    torch.testing.assert_close(model(**padded).score, score, atol=1e-5, rtol=0)
    # and the head's default token mask (real tokens whose label is -100) is the processor's prompt mask
    no_prompt_mask = {k: v for k, v in batch.items() if k != "prompt_mask"}
    torch.testing.assert_close(model(**no_prompt_mask).score, score, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- 2. gradients in stage 1
def test_frozen_llm_every_lqformer_and_projector_parameter_gets_gradient(tiny):
    model, processor = tiny
    model.train()
    model.language_model.requires_grad_(False)
    batch = _batch(processor, np.random.default_rng(2))
    model(**batch).loss.backward()
    trained = [
        (name, p)
        for name, p in model.named_parameters()
        if name.startswith(("audio_lqformer", "video_lqformer", "audio_projector", "video_projector"))
    ]
    assert {"audio_lqformer.query_tokens", "video_lqformer.query_tokens"} <= {n for n, _ in trained}
    for name, parameter in trained:
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.language_model.parameters())


# --------------------------------------------------------------------------- 3. insertion
def test_inserted_positions_hold_projected_queries(tiny):
    model, processor = tiny
    batch = _batch(processor, np.random.default_rng(3))
    captured = {}

    def grab(module, args, kwargs):
        captured["inputs_embeds"] = kwargs["inputs_embeds"].detach()

    handle = model.get_decoder().register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(**batch)
    finally:
        handle.remove()
    embeds = captured["inputs_embeds"]
    for modality in ("audio", "video"):
        expected = model.get_modality_embeddings(modality, batch[f"{modality}_features"], batch[f"{modality}_mask"])
        positions = batch["input_ids"] == getattr(model.config, f"{modality}_token_id")
        assert positions.sum() == expected.shape[0] * expected.shape[1]
        torch.testing.assert_close(embeds[positions], expected.reshape(-1, expected.shape[-1]), atol=0, rtol=0)
        assert (batch["labels"][positions] == -100).all()
    # everything else is the plain token embedding
    plain = model.get_input_embeddings()(batch["input_ids"])
    other = ~(
        (batch["input_ids"] == model.config.audio_token_id) | (batch["input_ids"] == model.config.video_token_id)
    )
    torch.testing.assert_close(embeds[other], plain[other].detach(), atol=0, rtol=0)


def test_placeholder_feature_count_mismatch_raises(tiny):
    model, processor = tiny
    batch = _batch(processor, np.random.default_rng(4))
    ids = batch["input_ids"].clone()
    first = (ids[0] == model.config.audio_token_id).nonzero()[0, 0]
    ids[0, first] = processor.tokenizer.pad_token_id  # one placeholder too few
    with pytest.raises(ValueError, match="audio placeholder tokens and audio embeddings do not match"):
        model(**{**batch, "input_ids": ids})
    with pytest.raises(ValueError, match="no video_features"):
        model(**{k: v for k, v in batch.items() if not k.startswith("video")})
    with pytest.raises(ValueError, match=r"video_features must have shape \(batch, frames, 20\)"):
        model(**{**batch, "video_features": torch.zeros(2, 3, 21), "video_mask": torch.ones(2, 3, dtype=torch.bool)})


# --------------------------------------------------------------------------- 5. generation
def test_greedy_generation_matches_stepwise_forward_and_returns_prefill_score(tiny):
    model, processor = tiny
    rng = np.random.default_rng(5)
    batch = _batch(processor, rng, with_targets=False, video_missing=True)
    assert batch["attention_mask"][1, 0] == 0, "sample 1 should be left padded"
    assert not batch["video_mask"][1].any()
    new_tokens = 6
    out = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens)
    prompt_length = batch["input_ids"].shape[1]
    assert out.sequences.shape == (2, prompt_length + new_tokens)

    with torch.no_grad():
        prefill = model(**batch)
        torch.testing.assert_close(out.head_score, prefill.score, atol=1e-5, rtol=0)
        ids, attention = batch["input_ids"], batch["attention_mask"]
        features = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "prompt_mask")}
        eos = processor.tokenizer.eos_token_id
        for _ in range(new_tokens):
            logits = model(input_ids=ids, attention_mask=attention, use_cache=False, **features).logits[:, -1]
            logits[:, eos] = -float("inf")  # min_new_tokens suppresses EOS in generate too
            next_token = logits.argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_token], dim=1)
            attention = torch.cat([attention, torch.ones_like(next_token)], dim=1)
    assert torch.equal(out.sequences, ids)


def test_generate_does_not_pass_features_after_prefill(tiny):
    model, processor = tiny
    batch = _batch(processor, np.random.default_rng(6), with_targets=False)
    seen = []
    original = model.forward

    @functools.wraps(original)
    def spy(*args, **kwargs):
        seen.append((kwargs.get("audio_features") is not None, kwargs.get("compute_score")))
        return original(*args, **kwargs)

    model.forward = spy
    try:
        model.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    finally:
        del model.forward
    assert seen[0] == (True, True)
    assert all(step == (False, False) for step in seen[1:]) and len(seen) == 3


# --------------------------------------------------------------------------- 6. joint loss
def test_joint_loss_is_ce_plus_weighted_mse(tiny):
    model, processor = tiny
    batch = _batch(processor, np.random.default_rng(7))
    out = model(**batch, score_loss_weight=0.37)
    logits = out.logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    mse = ((out.score - batch["score_labels"]) ** 2).mean()
    torch.testing.assert_close(out.lm_loss, ce, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.score_loss, mse, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.loss, ce + 0.37 * mse, atol=1e-5, rtol=1e-5)
    # config weights apply when none are passed
    model.config.lm_loss_weight, model.config.score_loss_weight = 0.5, 2.0
    out = model(**batch)
    torch.testing.assert_close(out.loss, 0.5 * ce + 2.0 * mse, atol=1e-5, rtol=1e-5)
    # the CE divided by an accumulated-batch token count is a plain sum over this batch divided by it
    n_answer = int((targets != -100).sum())
    out = model(**batch, num_items_in_batch=torch.tensor(3 * n_answer))
    torch.testing.assert_close(out.lm_loss, ce / 3, atol=1e-5, rtol=1e-5)


def test_logits_to_keep_does_not_change_the_loss(tiny):
    model, processor = tiny
    batch = _batch(processor, np.random.default_rng(8))
    full, last = model(**batch), model(**batch, logits_to_keep=1)
    assert last.logits.shape[1] == 1
    torch.testing.assert_close(full.loss, last.loss)


def test_modality_switches_remove_modules(backbone_dir):
    model, processor = build_tiny(backbone_dir, use_video=False)
    assert not hasattr(model, "video_lqformer") and not hasattr(model, "video_projector")
    assert hasattr(model, "audio_lqformer")
    batch = processor(["I feel fine"], [1], audio_features=[np.zeros((3, AUDIO_DIM), np.float32)], mode="text_audio")
    assert "video_features" not in batch
    assert torch.isfinite(model(**batch).score).all()
    with pytest.raises(ValueError, match="use_video=False"):
        model.get_modality_embeddings("video", torch.zeros(1, 2, VIDEO_DIM))


def test_from_backbone_keeps_backbone_weights(backbone_dir):
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(backbone_dir)
    model, _ = build_tiny(backbone_dir)
    ours = model.language_model.state_dict()
    for name, tensor in original.state_dict().items():
        if "embed_tokens" in name or "lm_head" in name:
            torch.testing.assert_close(ours[name][: tensor.shape[0]], tensor, atol=0, rtol=0)
        else:
            torch.testing.assert_close(ours[name], tensor, atol=0, rtol=0, msg=name)
    assert ours["model.embed_tokens.weight"].shape[0] == original.config.vocab_size + 2
    assert model.config.text_config.vocab_size == original.config.vocab_size + 2
    assert isinstance(model, MllmDrForConditionalGeneration)


# --------------------------------------------------------------------------- stage-1 alignment probe
def test_alignment_probe_regresses_known_item_scores_from_the_projected_queries(backbone_dir):
    model, processor = build_tiny(backbone_dir, alignment_probe_items=8, alignment_probe_weight=0.5)
    batch = _batch(processor, np.random.default_rng(11))
    torch.testing.assert_close(model.alignment_probe.bias, torch.full((8,), 1.5))  # mid-scale start
    item_scores = torch.tensor([[0, 1, 2, 3, float("nan"), 1, 0, 2], [float("nan")] * 7 + [3.0]])
    plain = model(**batch)
    out = model(**batch, item_scores=item_scores)
    assert plain.probe_loss is None
    pooled = torch.cat(
        [model.get_modality_embeddings(m, batch[f"{m}_features"], batch[f"{m}_mask"]).mean(1) for m in ("audio", "video")],
        dim=-1,
    )
    predicted = model.alignment_probe.readout(pooled)
    known = ~torch.isnan(item_scores)
    expected = ((predicted[known] - item_scores[known]) ** 2).mean()
    torch.testing.assert_close(out.probe_loss, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, plain.loss + 0.5 * expected, atol=1e-5, rtol=1e-5)

    # its gradient reaches both LQ-formers without any LM or score target
    model.train()
    model.language_model.requires_grad_(False)
    unlabelled = {k: v for k, v in batch.items() if k not in ("labels", "score_labels")}
    model(**unlabelled, item_scores=item_scores, compute_score=False).loss.backward()
    for name in ("audio_lqformer.query_tokens", "video_lqformer.query_tokens", "alignment_probe.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name

    with pytest.raises(ValueError, match=r"item_scores must have shape \(2, 8\)"):
        model(**batch, item_scores=item_scores[:, :5])
    model.remove_alignment_probe()
    assert model.alignment_probe is None and model.config.alignment_probe_items == 0
    assert model(**batch, item_scores=item_scores).probe_loss is None


def test_alignment_probe_config_is_validated(backbone_dir):
    with pytest.raises(ValueError, match="alignment_probe_items must be >= 0"):
        build_tiny(backbone_dir, alignment_probe_items=-1)
    with pytest.raises(ValueError, match="keep use_audio or use_video"):
        build_tiny(backbone_dir, alignment_probe_items=8, use_audio=False, use_video=False)


def test_lqformer_activation_and_final_norm_are_config_fields():
    """The departures from the authors' LQ-former are settings: ReLU and a final LayerNorm give theirs."""
    from configuration_mllm_dr import LQFormerConfig
    from modeling_mllm_dr import LQFormer

    small = dict(feature_dim=6, num_query_tokens=3, hidden_size=8, num_attention_heads=2, num_hidden_layers=2,
                 intermediate_size=12, dropout=0.0)  # fmt: skip
    ours = LQFormer(LQFormerConfig(**small)).eval()
    assert ours.final_norm is None and not any("final_norm" in k for k in ours.state_dict())  # old checkpoints load
    theirs = LQFormer(LQFormerConfig(**small, hidden_act="relu", final_norm=True)).eval()
    theirs.load_state_dict(ours.state_dict(), strict=False)  # the same weights; the final norm is new
    activation = theirs.layers[0].feed_forward[1]
    assert torch.equal(activation(torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 2.0]))
    features = torch.randn(2, 5, 6)
    with torch.no_grad():
        out = theirs(features)
        assert not torch.allclose(out, ours(features))
        torch.testing.assert_close(out.mean(-1), torch.zeros(2, 3), atol=1e-5, rtol=0)  # normalised per query
