"""Batches: rows tokenized once and then only padded give exactly the processor's batches; the
per-item sampler draws from the right distribution, per item, whatever the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from training_fixtures import make_prepared_corpus

from mllm_dr.data import MllmDrCollator, read_features, tokenize_rows
from mllm_dr.inference import PerItemSampler, item_seed


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    import datasets

    path = make_prepared_corpus(tmp_path_factory.mktemp("batches"), {"train": 4, "dev": 1, "test": 1}, items=(1, 2, 3))
    return datasets.load_from_disk(str(path))["train"]


@pytest.mark.parametrize(("mode", "with_rationale", "padding_side"), [
    ("full", True, "right"), ("features", False, "right"), ("text", True, "left"), ("text_audio", False, "left"),
])
def test_pretokenized_rows_give_the_processors_batches(tiny, rows, mode, with_rationale, padding_side):
    _, processor = tiny
    inputs = processor.inputs_for(mode)
    tokenized = tokenize_rows(rows, processor, mode, with_targets=True, with_rationale=with_rationale)
    collator = MllmDrCollator(processor, mode, with_rationale=with_rationale, padding_side=padding_side)
    for start in range(0, len(rows), 5):  # batches that mix participants
        chunk = [rows[i] for i in range(start, min(start + 5, len(rows)))]
        expected = processor(
            [r["transcript"] for r in chunk], [r["item_index"] for r in chunk],
            audio_features=[read_features(r["audio_files"]) for r in chunk] if inputs.audio else None,
            video_features=[read_features(r["video_files"]) for r in chunk] if inputs.video else None,
            scores=[r["label"] for r in chunk], rationales=[r["rationale"] for r in chunk] if with_rationale else None,
            mode=mode, padding_side=padding_side, with_rationale=with_rationale,
        )  # fmt: skip
        for got in (collator([tokenized[i] for i in range(start, min(start + 5, len(rows)))]), collator(chunk)):
            assert set(got) == set(expected)
            for key in expected:
                assert torch.equal(got[key], expected[key]), key


def test_rows_that_cannot_be_trained_are_refused_together_before_tokenizing(tiny, rows):
    _, processor = tiny
    broken = rows.map(lambda r, i: {"rationale": None if i in (1, 4) else r["rationale"]}, with_indices=True)
    with pytest.raises(ValueError, match=r"2 row\(s\) have no rationale .*participant 300, item 2; participant 301, item 2"):
        tokenize_rows(broken, processor, "full", with_targets=True, with_rationale=True)
    tokenize_rows(broken, processor, "features", with_targets=True, with_rationale=False)  # stage 1 needs none
    unlabelled = rows.map(lambda r, i: {"label": None if i == 0 else r["label"]}, with_indices=True)
    with pytest.raises(ValueError, match=r"1 row\(s\) have no item label .*participant 300, item 1"):
        tokenize_rows(unlabelled, processor, "features", with_targets=True, with_rationale=False)


def test_per_item_sampler_follows_the_top_k_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    temperature, top_k, draws = 0.8, 3, 4000
    top = (logits[0] / temperature).topk(top_k)
    expected = torch.zeros(6).index_put_((top.indices,), top.values.softmax(-1))
    counts = torch.zeros(6)
    for seed in range(draws):
        sampler = PerItemSampler([seed], temperature, top_k, max_steps=1)
        counts += (sampler(torch.zeros((1, 3), dtype=torch.long), logits.clone()) == 0).float()[0]
    assert set(top.indices.tolist()) == {0, 1, 2} and counts[[3, 4, 5]].sum() == 0  # nothing outside the top k
    frequencies = counts / draws
    assert torch.allclose(frequencies, expected, atol=0.025), (frequencies, expected)


def test_per_item_sampler_follows_the_nucleus_within_the_top_k():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    temperature, top_k, top_p, draws = 0.8, 4, 0.9, 4000
    probabilities = (logits[0] / temperature).topk(top_k).values.softmax(-1)  # 0.66, 0.19, 0.10, 0.05
    keep = int(((probabilities.cumsum(-1) - probabilities) < top_p).sum())  # the smallest prefix reaching 0.9
    assert keep == 3
    expected = torch.zeros(6)
    expected[:keep] = probabilities[:keep] / probabilities[:keep].sum()
    counts = torch.zeros(6)
    for seed in range(draws):
        sampler = PerItemSampler([seed], temperature, top_k, max_steps=1, top_p=top_p)
        counts += (sampler(torch.zeros((1, 3), dtype=torch.long), logits.clone()) == 0).float()[0]
    assert counts[keep:].sum() == 0  # the fourth of the top-k lies outside the nucleus
    assert torch.allclose(counts / draws, expected, atol=0.025), (counts / draws, expected)


def test_top_p_defaults_to_the_models_generation_config(tiny):
    from mllm_dr.inference import GenerationArguments

    model, _ = tiny
    assert GenerationArguments().for_model(model).top_p == 1.0  # the tiny backbone sets none
    model.generation_config.top_p = 0.9  # what LLaMA-3-Instruct's generation_config.json carries
    resolved = GenerationArguments().for_model(model)
    assert resolved.top_p == 0.9 and "top_p 0.9" in resolved.describe()
    assert GenerationArguments(top_p=0.5).for_model(model).top_p == 0.5
    with pytest.raises(ValueError, match="top_p"):
        GenerationArguments(top_p=0.0).for_model(model)


def test_per_item_sampler_gives_each_item_its_own_stream_whatever_the_batch():
    rng = np.random.default_rng(0)
    steps, vocab = 12, 50
    logits = [torch.tensor(rng.standard_normal((steps, vocab)), dtype=torch.float32) for _ in range(3)]
    seeds = [item_seed(0, "300", item) for item in (1, 2, 3)]

    def run(order: list[int]) -> dict[int, list[int]]:
        sampler = PerItemSampler([seeds[i] for i in order], 0.8, 10, max_steps=5)  # the noise is drawn in rounds
        chosen = {i: [] for i in order}
        for step in range(steps):
            scores = torch.stack([logits[i][step] for i in order])
            out = sampler(torch.zeros((len(order), 4 + step), dtype=torch.long), scores)
            for row, i in enumerate(order):
                chosen[i].append(int(out[row].argmax()))
        return chosen

    together, alone, reversed_order = run([0, 1, 2]), run([1]), run([2, 1, 0])
    assert together[1] == alone[1] and together == reversed_order
    assert together[0] != together[1]
