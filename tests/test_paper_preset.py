"""Issue 2, test 8: the paper preset at LLaMA-3-8B geometry, on the meta device (no memory), with
parameter counts per part checked against closed-form formulas."""

from __future__ import annotations

import pytest
import torch

from configuration_mllm_dr import LQFormerConfig, MllmDrConfig
from modeling_mllm_dr import MllmDrForConditionalGeneration

LLAMA3_8B_PARAMETERS = 8_030_261_248  # the published count of Meta-Llama-3-8B


def lqformer_parameters(c: LQFormerConfig) -> int:
    d, f, ff = c.hidden_size, c.feature_dim, c.intermediate_size
    self_attn = 4 * (d * d + d)
    cross_attn = 2 * (d * d + d) + 2 * (f * d + d)  # q/out from the query width, k/v from the feature dim
    feed_forward = d * ff + ff + ff * d + d
    norms = 3 * 2 * d
    layer = self_attn + cross_attn + feed_forward + norms
    feature_norm = 2 * f if c.normalize_features else 0
    return c.num_query_tokens * d + feature_norm + c.num_hidden_layers * layer


def projector_parameters(c: LQFormerConfig, text_hidden: int) -> int:
    p = c.projector_hidden_size
    return c.hidden_size * p + p + p * text_hidden + text_hidden


def head_parameters(hidden: int, mlp: int) -> int:
    return hidden + hidden * mlp + mlp + mlp + 1  # per-head scorer vectors + two-layer regressor


def lora_parameters(text_config, rank: int) -> int:
    hidden = text_config.hidden_size
    kv_width = text_config.num_key_value_heads * (hidden // text_config.num_attention_heads)
    per_layer = rank * (hidden + hidden) + rank * (hidden + kv_width)  # q_proj and v_proj: A (r x in) + B (out x r)
    return text_config.num_hidden_layers * per_layer


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def paper_model():
    config = MllmDrConfig.paper_preset(audio_token_id=128256, video_token_id=128257)
    with torch.device("meta"):
        model = MllmDrForConditionalGeneration(config)
    return model


def test_paper_preset_values():
    config = MllmDrConfig.paper_preset()
    text = config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_key_value_heads, text.vocab_size) == (
        4096, 32, 8, 128256,
    )
    for lq, dim in ((config.audio_config, 768), (config.video_config, 2048)):
        assert (lq.feature_dim, lq.num_query_tokens, lq.hidden_size, lq.num_attention_heads) == (dim, 32, 768, 8)
        assert (lq.num_hidden_layers, lq.intermediate_size, lq.dropout, lq.projector_hidden_size) == (4, 1024, 0.3, 1024)
    assert (config.score_head_num_heads, config.score_head_hidden_size) == (8, 1024)


def test_paper_preset_parameter_counts(paper_model, capsys):
    model = paper_model
    config = model.config
    hidden = config.text_config.hidden_size
    parts = {
        "audio LQ-former": (model.audio_lqformer, lqformer_parameters(config.audio_config)),
        "video LQ-former": (model.video_lqformer, lqformer_parameters(config.video_config)),
        "audio projector": (model.audio_projector, projector_parameters(config.audio_config, hidden)),
        "video projector": (model.video_projector, projector_parameters(config.video_config, hidden)),
        "MAA head": (model.score_head, head_parameters(hidden, config.score_head_hidden_size)),
        "LLaMA-3-8B backbone": (model.language_model, LLAMA3_8B_PARAMETERS),
    }
    with capsys.disabled():
        print()
        for name, (module, expected) in parts.items():
            print(f"  {name:22s} {count(module):>15,d}  (formula {expected:,d})")
    for name, (module, expected) in parts.items():
        assert count(module) == expected, name
    assert count(model) == sum(expected for _, expected in parts.values())


def test_lora_on_q_and_v_only_matches_formula(paper_model, capsys):
    peft = pytest.importorskip("peft")
    config = paper_model.config
    lora = peft.LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.1,
        target_modules=r"language_model\..*\.(q_proj|v_proj)",
    )
    model = peft.get_peft_model(paper_model, lora)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    expected = lora_parameters(config.text_config, 16)
    with capsys.disabled():
        print(f"  LoRA r=16 q_proj/v_proj {sum(trainable.values()):>13,d}  (formula {expected:,d})")
    assert sum(trainable.values()) == expected
    # the regex cannot reach the LQ-formers' own q_proj/v_proj
    assert all(name.count("language_model") == 1 and "lqformer" not in name for name in trainable)
    assert len(trainable) == 4 * config.text_config.num_hidden_layers


# Section 4.2 (and, where it is silent, the authors' code): what `--preset paper` resolves to with no
# other flag. Independent of PAPER_RECIPE on purpose: a change there must show up here.
PAPER_TRAINING = {
    "num_train_epochs": 10.0, "lora_learning_rate": 1e-5, "projector_learning_rate": 5e-4,
    "lqformer_learning_rate": 1e-4, "head_learning_rate": 1e-4, "max_grad_norm": 1.0,
}  # fmt: skip
PAPER_LORA = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.1}


def test_preset_paper_resolves_to_section_4_2(tmp_path):
    from mllm_dr.commands import train
    from mllm_dr.inference import GenerationArguments

    model_args, _, _, data_args, args, _ = train.parse_args(
        ["--stage", "2", "--data_dir", "d", "--output_dir", str(tmp_path), "--use_cpu", "true"]
    )
    assert {k: getattr(args, k) for k in PAPER_TRAINING} == PAPER_TRAINING
    assert {k: getattr(model_args, k) for k in PAPER_LORA} == PAPER_LORA
    assert "q_proj|v_proj" in model_args.lora_target_modules and model_args.preset == "paper"
    assert data_args.max_transcript_tokens is None  # resolved from the backbone's context window
    sampling = GenerationArguments()
    assert (sampling.greedy, sampling.temperature, sampling.top_k, sampling.max_new_tokens) == (False, 0.8, 10, 200)

    # every value stays overridable, and --preset demo sets none of them
    model_args, _, _, _, args, _ = train.parse_args(
        ["--stage", "2", "--data_dir", "d", "--output_dir", str(tmp_path), "--use_cpu", "true",
         "--num_train_epochs", "2", "--lora_r", "8", "--lora_learning_rate=3e-4"]
    )  # fmt: skip
    assert (args.num_train_epochs, model_args.lora_r, args.lora_learning_rate) == (2.0, 8, 3e-4)
    assert args.head_learning_rate == 1e-4
    _, _, _, _, demo, _ = train.parse_args(["--preset", "demo", "--data_dir", "d", "--output_dir", str(tmp_path)])
    assert demo.num_train_epochs == 3.0  # TrainingArguments' own default: the demo passes its recipe as flags


def test_transcript_budget_follows_the_context_window():
    from configuration_mllm_dr import transcript_budget

    assert transcript_budget(8192, "paper") == 7424  # LLaMA-3-8B: the complete E-DAIC interview fits
    assert transcript_budget(8192, "demo") == 1536
    assert transcript_budget(None, "paper") == 1536
