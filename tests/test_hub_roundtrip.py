"""Issue 2, test 4: a saved checkpoint loads through AutoModel/AutoProcessor with remote code in a
fresh process whose working directory is elsewhere, and gives identical logits and scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import torch
from mllm_dr.testing import AUDIO_DIM, VIDEO_DIM, random_features
from safetensors.torch import load_file, save_file

LOADER = textwrap.dedent(
    """
    import json, sys
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, AutoProcessor

    checkpoint, inputs_file, out_file = sys.argv[1:4]
    model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    inputs = load_file(inputs_file)
    request = json.loads(open(inputs_file + ".json").read())
    features = {m: [inputs[f"{m}_{i}"] if f"{m}_{i}" in inputs else None for i in range(2)] for m in ("audio", "video")}
    batch = processor(
        request["transcripts"], request["items"], audio_features=features["audio"], video_features=features["video"],
        scores=request["scores"], rationales=request["rationales"],
    )
    with torch.no_grad():
        out = model(**batch)
    save_file({"logits": out.logits.contiguous(), "score": out.score, "loss": out.loss.reshape(1),
               "input_ids": batch["input_ids"]}, out_file)
    print(type(model).__module__, type(processor).__module__)
    """
)


def test_save_then_load_in_fresh_process_gives_identical_outputs(tiny, tmp_path):
    model, processor = tiny
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    files = set(os.listdir(checkpoint))
    assert {"configuration_mllm_dr.py", "modeling_mllm_dr.py", "processing_mllm_dr.py", "model.safetensors"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    auto_map = json.loads((checkpoint / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_mllm_dr.MllmDrForConditionalGeneration"

    rng = np.random.default_rng(11)
    request = {
        "transcripts": ["I sleep badly and feel tired", "hello, fine thanks"],
        "items": [3, 4],
        "scores": [2, 0],
        "rationales": ["Poor sleep reported.", None],
    }
    arrays = {
        "audio_0": random_features(rng, 8, AUDIO_DIM),
        "audio_1": random_features(rng, 3, AUDIO_DIM),
        "video_0": random_features(rng, 5, VIDEO_DIM),
    }
    inputs_file = tmp_path / "inputs.safetensors"
    save_file({k: torch.from_numpy(v) for k, v in arrays.items()}, str(inputs_file))
    (tmp_path / "inputs.safetensors.json").write_text(json.dumps(request))
    batch = processor(
        request["transcripts"],
        request["items"],
        audio_features=[arrays["audio_0"], arrays["audio_1"]],
        video_features=[arrays["video_0"], None],
        scores=request["scores"],
        rationales=request["rationales"],
    )
    with torch.no_grad():
        expected = model(**batch)

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    out_file = tmp_path / "out.safetensors"
    result = subprocess.run(
        [sys.executable, "-c", LOADER, str(checkpoint), str(inputs_file), str(out_file)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    # the classes came from the checkpoint's copy of the code, not from this repository
    assert "transformers_modules" in result.stdout
    got = load_file(str(out_file))
    assert torch.equal(got["input_ids"], batch["input_ids"])
    torch.testing.assert_close(got["logits"], expected.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(got["score"], expected.score, atol=1e-6, rtol=0)
    torch.testing.assert_close(got["loss"][0], expected.loss, atol=1e-6, rtol=0)
