"""Issue 14: stage 2 as QLoRA (--load_in_4bit): the backbone in 4-bit NF4 through bitsandbytes (its
CPU backend here), LoRA + head trained on top, the adapter exported and applied to the
full-precision backbone."""

from __future__ import annotations

import json

import pytest
import torch
from training_fixtures import common_args, make_prepared_corpus

from mllm_dr.checkpoints import load_adapter_export
from mllm_dr.commands import train

bitsandbytes = pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (pip install 'mllm-dr[qlora]')")


@pytest.fixture(scope="module")
def backbone_64(tmp_path_factory):
    """The tiny Llama with every linear layer's width a multiple of 64 (bitsandbytes' CPU 4-bit
    kernels pack weights in blocks of 64, as every real backbone's widths are)."""
    from transformers import LlamaForCausalLM

    from mllm_dr.testing import make_tokenizer, tiny_text_config

    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    config = tiny_text_config(len(tokenizer))
    config.intermediate_size, config.num_key_value_heads = 128, 4
    folder = tmp_path_factory.mktemp("backbone64")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_stage2_qlora_trains_on_a_4bit_backbone_and_exports_the_adapter(backbone_64, tmp_path):
    backbone_dir = backbone_64
    corpus = make_prepared_corpus(tmp_path / "corpus")
    train.main(["--stage", "1", "--backbone", str(backbone_dir), "--output_dir", str(tmp_path / "s1"), *common_args(corpus, steps=2)])
    out = tmp_path / "s2"
    train.main(["--stage", "2", "--init_from", str(tmp_path / "s1"), "--output_dir", str(out), "--load_in_4bit",
                *common_args(corpus, steps=3)])  # fmt: skip
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["arguments"]["model"]["load_in_4bit"] is True and manifest["global_step"] == 3
    losses = [entry["loss"] for entry in manifest["log_history"] if "loss" in entry]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and not (out / "merged").exists()
    model, processor = load_adapter_export(out / "adapter", merge=True)  # onto the full-precision backbone
    batch = processor(["I sleep badly"], [3], audio_features=[torch.randn(5, 12).numpy()], video_features=[None])
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


def test_qlora_is_stage_2_only(backbone_dir, tmp_path):
    corpus = make_prepared_corpus(tmp_path / "corpus")
    with pytest.raises(SystemExit, match="stage 2 only"):
        train.main(["--stage", "1", "--backbone", str(backbone_dir), "--output_dir", str(tmp_path / "o"), "--load_in_4bit",
                    *common_args(corpus)])  # fmt: skip
