"""Integration: the real SmolLM2-135M-Instruct backbone end to end (prompt, insert, generate, parse)."""

from __future__ import annotations

import numpy as np
import torch

from configuration_mllm_dr import MllmDrConfig
from modeling_mllm_dr import MllmDrForConditionalGeneration
from processing_mllm_dr import MllmDrProcessor

TRANSCRIPT = (
    "Interviewer: How have you been sleeping lately?\n"
    "Participant: Not well. I wake up at three or four most nights and can't get back to sleep.\n"
    "Interviewer: How do you feel during the day?\n"
    "Participant: Exhausted, honestly. I drag myself through work."
)


def test_smollm2_prompt_insert_generate_parse(smollm2_dir):
    torch.manual_seed(0)
    demo = MllmDrConfig.demo_preset()
    model = MllmDrForConditionalGeneration.from_backbone(
        str(smollm2_dir), audio_config=demo.audio_config, video_config=demo.video_config
    ).eval()
    assert model.config.text_config.hidden_size == 576
    processor = MllmDrProcessor.from_config(model.tokenizer_for_backbone, model.config, max_transcript_tokens=256)
    rng = np.random.default_rng(0)
    audio = [rng.standard_normal((150, 768)).astype(np.float32), rng.standard_normal((90, 768)).astype(np.float32)]
    video = [rng.standard_normal((60, 2048)).astype(np.float32), None]  # second participant has no video
    batch = processor([TRANSCRIPT, "Participant: I have been fine, sleeping well."], [3, 3], audio, video)
    prompt = processor.decode(batch["input_ids"][0], skip_special_tokens=False)
    assert prompt.count("<AudioHere>") == 8 and prompt.count("<VideoHere>") == 8
    assert "<|im_start|>assistant" in prompt and "wake up at three" in prompt

    out = model.generate(**batch, max_new_tokens=48, do_sample=False)
    new_tokens = out.sequences[:, batch["input_ids"].shape[1] :]
    texts = processor.batch_decode(new_tokens, skip_special_tokens=True)
    assert all(text.strip() for text in texts)
    for text in texts:
        score, rationale = processor.parse_output(text)
        assert score is None or 0 <= score <= 3
        assert isinstance(rationale, str)
    with torch.no_grad():
        prefill = model(**batch)
    assert torch.isfinite(out.head_score).all()
    torch.testing.assert_close(out.head_score, prefill.score, atol=1e-4, rtol=0)

    # one teacher-forced training step: finite joint loss, gradients reach the LQ-formers
    model.train()
    train_batch = processor(
        [TRANSCRIPT], [3], audio[:1], video[:1], scores=[2], rationales=["Wakes at night most nights; tired by day."]
    )
    loss = model(**train_batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert model.audio_lqformer.query_tokens.grad.abs().sum() > 0
    assert model.video_lqformer.query_tokens.grad.abs().sum() > 0
