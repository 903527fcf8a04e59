"""Issue 13: a tiny stage-2 run becomes one self-contained Hub folder that loads with the Auto classes
from a clean process and gives the trained model's outputs; every card we write validates; the upload
is exercised against a loopback HTTP server that records what it was sent."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from training_fixtures import common_args, make_prepared_corpus

from mllm_dr.cards import PAPER_URL, check_card, is_hub_id
from mllm_dr.checkpoints import load_adapter_export
from mllm_dr.commands import push, train
from mllm_dr.hub import PublishError, stage_export
from mllm_dr.testing import AUDIO_DIM, VIDEO_DIM, random_features
from modeling_mllm_dr import PAPER_SAMPLING

ROOT = Path(__file__).resolve().parents[1]
REPO = "mllm-dr-tests/tiny-mllm-dr"
BASE_REPO = "mllm-dr-tests/tiny-backbone"


@pytest.fixture(scope="module")
def run(tmp_path_factory, backbone_dir) -> Path:
    """A tiny stage-1 then stage-2 run; returns the stage-2 output (stage 1 is its sibling ``s1``)."""
    root = tmp_path_factory.mktemp("publish")
    corpus = make_prepared_corpus(root / "corpus")
    train.main(["--stage", "1", "--backbone", str(backbone_dir), "--output_dir", str(root / "s1"), *common_args(corpus)])
    train.main(["--stage", "2", "--init_from", str(root / "s1"), "--output_dir", str(root / "s2"), *common_args(corpus)])
    return root / "s2"


def put_in_hub_cache(folder: Path, repo_id: str, cache: Path) -> None:
    """``folder`` as the cached snapshot of ``repo_id`` (huggingface_hub's cache layout), so an offline
    process resolves the repo id exactly as it would after a download."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(folder, repo / "snapshots" / revision)


def clean_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHONPATH"))}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "hf_home")}


def card_snippets(card: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card.read_text(), flags=re.S)


# The outputs of one fixed batch, computed after the card's load snippet has defined model and processor.
PROBE = textwrap.dedent(
    """
    import sys, torch
    from safetensors.torch import load_file, save_file
    inputs = load_file(sys.argv[1])
    batch = processor(["I sleep badly and feel tired"], [3], audio_features=[inputs["audio"]],
                      video_features=[inputs["video"]])
    model.eval()
    with torch.no_grad():
        out = model(**batch)
    gen = model.generation_config
    save_file({"logits": out.logits.float().contiguous(), "score": out.score.float(),
               "sampling": torch.tensor([gen.do_sample, gen.temperature, gen.top_k, gen.max_new_tokens])}, sys.argv[2])
    print(type(model).__module__)
    """
)


def probe_inputs(path: Path) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(3)
    inputs = {"audio": torch.from_numpy(random_features(rng, 9, AUDIO_DIM)), "video": torch.from_numpy(random_features(rng, 7, VIDEO_DIM))}
    save_file(inputs, str(path))
    return inputs


def expected_outputs(run: Path, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    model, processor = load_adapter_export(run / "adapter", merge=True)
    batch = processor(["I sleep badly and feel tired"], [3], audio_features=[inputs["audio"]], video_features=[inputs["video"]])
    with torch.no_grad():
        out = model(**batch)
    return {"logits": out.logits.float(), "score": out.score.float()}


def run_snippet(snippet: str, cwd: Path, env: dict[str, str], inputs: Path, result: Path) -> str:
    program = cwd / "load.py"
    program.write_text(snippet + PROBE)
    done = subprocess.run([sys.executable, str(program), str(inputs), str(result)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("kind", ["merged", "adapter"])
def test_the_staged_repo_loads_from_a_clean_process_with_its_cards_snippet_and_matches(run, backbone_dir, tmp_path, kind):
    staged, left_out = stage_export(run, tmp_path / "staged", kind=kind, repo_id=REPO, base_model_id=BASE_REPO)
    files = {p.name for p in staged.iterdir()}
    assert {"configuration_mllm_dr.py", "modeling_mllm_dr.py", "processing_mllm_dr.py", "config.json",
            "generation_config.json", "README.md", "tokenizer.json", "processor_config.json"} <= files  # fmt: skip
    assert not {"run_manifest.json", "mllm_dr_data.json", "optimizer.pt", "trainer_state.json"} & files
    assert all(not name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    if kind == "merged":
        assert "model.safetensors" in files and "mllm_dr_modules.safetensors" not in files
    else:  # LoRA in PEFT's format beside MLlm-DR's modules; no copy of the backbone
        assert {"adapter_config.json", "adapter_model.safetensors", "mllm_dr_modules.safetensors"} <= files
        assert "model.safetensors" not in files
        assert json.loads((staged / "mllm_dr_adapter.json").read_text())["base_model"] == BASE_REPO
    assert json.loads((staged / "generation_config.json").read_text()).items() >= PAPER_SAMPLING.items()

    # The card's snippet, verbatim (repo id included), in a process that has only the Hub cache.
    cache = tmp_path / "hub_cache"
    put_in_hub_cache(staged, REPO, cache)
    put_in_hub_cache(backbone_dir, BASE_REPO, cache)
    (snippet,) = card_snippets(staged / "README.md")
    assert f'"{REPO}"' in snippet
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    inputs = probe_inputs(tmp_path / "inputs.safetensors")
    stdout = run_snippet(snippet, workdir, clean_env(cache), tmp_path / "inputs.safetensors", tmp_path / "out.safetensors")
    got, want = load_file(str(tmp_path / "out.safetensors")), expected_outputs(run, inputs)
    torch.testing.assert_close(got["logits"], want["logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["score"], want["score"], rtol=1e-4, atol=1e-4)
    assert got["sampling"].tolist() == pytest.approx([1.0, 0.8, 10.0, 200.0])
    if kind == "merged":  # trust_remote_code ran the repo's own modeling file
        assert "transformers_modules" in stdout


@pytest.mark.parametrize("export", ["s1", "s2/adapter", "s2/merged"])
def test_the_load_snippet_of_every_training_output_card_runs_in_a_clean_process(run, tmp_path, export):
    folder = run.parent / export
    (snippet,) = card_snippets(folder / "README.md")
    assert "<this folder>" in snippet
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    inputs = probe_inputs(tmp_path / "inputs.safetensors")
    run_snippet(snippet.replace("<this folder>", str(folder)), workdir, clean_env(tmp_path / "empty_cache"),
                tmp_path / "inputs.safetensors", tmp_path / "out.safetensors")  # fmt: skip
    got = load_file(str(tmp_path / "out.safetensors"))
    assert torch.isfinite(got["logits"]).all() and got["sampling"].tolist() == pytest.approx([1.0, 0.8, 10.0, 200.0])
    if export != "s1":  # the stage-2 exports are the trained model
        want = expected_outputs(run, inputs)
        torch.testing.assert_close(got["logits"], want["logits"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got["score"], want["score"], rtol=1e-4, atol=1e-4)


def test_every_card_we_write_validates_and_names_no_local_path(run, tmp_path):
    cards = [run.parent / "s1" / "README.md", run / "merged" / "README.md", run / "adapter" / "README.md"]
    staged, _ = stage_export(run, tmp_path / "staged", repo_id=REPO)
    cards.append(staged / "README.md")
    for path in cards:
        card = ModelCard.load(path)
        assert check_card(card) == [], path
        assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
        assert PAPER_URL in card.text and "@article{" in card.text
        assert str(run.parent) not in path.read_text(), path
        assert card.data.base_model is None or is_hub_id(card.data.base_model)
        assert "| lora_learning_rate | 1e-05 |" in card.text or path.parent.name == "s1"
    assert "No held-out evaluation" in ModelCard.load(cards[-1]).text


def test_an_attached_evaluation_becomes_model_index(run, tmp_path):
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    metrics = {"ccc": 0.61, "rmse": 3.5, "mae": 2.75, "f1": 0.8, "cutoff": 10.0, "format_failure_rate": 0.125}
    (evaluation / "metrics.json").write_text(json.dumps(metrics))
    (evaluation / "manifest.json").write_text(json.dumps({"data": {"format": "edaic", "split": "test", "participants": 12}}))
    staged, _ = stage_export(run, tmp_path / "staged", repo_id=REPO, evaluation_dir=evaluation, license="apache-2.0")
    card = ModelCard.load(staged / "README.md")
    assert check_card(card) == []
    assert card.data.license == "apache-2.0"
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values == {"ccc": 0.61, "rmse": 3.5, "mae": 2.75, "f1": 0.8}
    assert {r.dataset_split for r in card.data.eval_results} == {"test"}
    assert "| format failures (rate) | 0.125 strict, - permissive" in card.text


def test_staging_refuses_what_cannot_be_published(run, tmp_path):
    with pytest.raises(PublishError, match="Hub id that holds exactly those weights"):
        stage_export(run, tmp_path / "a", kind="adapter", repo_id=REPO)  # the tiny backbone is a local folder
    with pytest.raises(PublishError, match="no merged export"):
        stage_export(run.parent / "s1", tmp_path / "b", kind="merged")
    with pytest.raises(PublishError, match="not a Hub id"):
        stage_export(run, tmp_path / "c", base_model_id=str(run))
    with pytest.raises(PublishError, match="not empty"):
        stage_export(run, run, repo_id=REPO)
    leaky = tmp_path / "leaky"
    shutil.copytree(run / "merged", leaky / "merged")
    config = json.loads((leaky / "merged" / "processor_config.json").read_text())
    config["note"] = str(run / "run_manifest.json")  # a path of this machine inside a shipped JSON file
    (leaky / "merged" / "processor_config.json").write_text(json.dumps(config))
    with pytest.raises(PublishError, match="processor_config.json: note"):
        stage_export(leaky, tmp_path / "d", repo_id=REPO)


# ----------------------------------------------------------------------------- a loopback Hub
class RecordingHub(BaseHTTPRequestHandler):
    """Answers the Hub API calls ``create_repo`` and ``upload_folder`` make, and records them."""

    requests: list[dict] = []

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        record = {"method": "POST", "path": self.path.split("?")[0], "auth": self.headers.get("authorization")}
        if record["path"] == "/api/repos/create":
            record["json"] = json.loads(raw)
            self.requests.append(record)
            repo = f"{record['json'].get('organization')}/{record['json']['name']}"
            return self._reply(200, {"url": f"http://{self.headers['Host']}/{repo}", "name": repo})
        if record["path"] == "/api/validate-yaml":  # the Hub's check of the card's metadata, before the commit
            self.requests.append({**record, "json": json.loads(raw)})
            return self._reply(200, {"errors": [], "warnings": []})
        if "/preupload/" in record["path"]:
            files = json.loads(raw)["files"]
            self.requests.append({**record, "files": [f["path"] for f in files]})
            return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if "/commit/" in record["path"]:
            lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
            files = {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}
            self.requests.append({**record, "commit": files, "header": lines[0]["value"]})
            url = f"http://{self.headers['Host']}/{record['path'].split('/')[3]}/{record['path'].split('/')[4]}/commit/{'a' * 40}"
            return self._reply(200, {"commitOid": "a" * 40, "commitUrl": url, "pullRequestUrl": None})
        self.requests.append(record)
        return self._reply(404, {"error": f"not served: {self.path}"})

    def do_GET(self):
        self.requests.append({"method": "GET", "path": self.path})
        self._reply(404, {"error": f"not served: {self.path}"})


@pytest.fixture
def hub(monkeypatch):
    RecordingHub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordingHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_loopbacktoken")
    yield RecordingHub.requests
    server.shutdown()


def test_mllm_dr_push_uploads_one_private_folder(run, hub, capsys):
    assert push.main(["--run_dir", str(run), "--hub_model_id", REPO, "--i_may_share_weights"]) == 0
    creates = [r for r in hub if r["path"] == "/api/repos/create"]
    commits = [r for r in hub if "/commit/" in r["path"]]
    assert len(creates) == 1 and creates[0]["json"]["visibility"] == "private"
    assert creates[0]["json"]["name"] == REPO.split("/")[1] and creates[0]["json"]["organization"] == REPO.split("/")[0]
    assert len(commits) == 1 and commits[0]["path"] == f"/api/models/{REPO}/commit/main"
    sent = commits[0]["commit"]
    assert set(sent) == {p.name for p in (run / "merged").iterdir()}  # README.md is ours, rewritten
    assert sent["model.safetensors"] == (run / "merged" / "model.safetensors").read_bytes()
    assert b"@article{" in sent["README.md"] and b"run_manifest" not in sent["README.md"]
    (validated,) = [r["json"] for r in hub if r["path"] == "/api/validate-yaml"]
    assert validated["content"].encode() == sent["README.md"] and validated["repoType"] == "model"
    assert all(r["auth"] == "Bearer hf_loopbacktoken" for r in hub if "auth" in r)
    assert "published" in capsys.readouterr().out

    hub.clear()
    assert push.main(["--run_dir", str(run), "--hub_model_id", REPO, "--i_may_share_weights", "--no_hub_private_repo",
                      "--hub_export", "adapter", "--base_model_id", BASE_REPO]) == 0  # fmt: skip
    assert [r["json"]["visibility"] for r in hub if r["path"] == "/api/repos/create"] == ["public"]
    (commit,) = [r for r in hub if "/commit/" in r["path"]]
    assert {"adapter_model.safetensors", "mllm_dr_modules.safetensors"} <= set(commit["commit"])
    assert "model.safetensors" not in commit["commit"]


def test_train_push_to_hub_publishes_the_export_once_and_nothing_else(backbone_dir, hub, tmp_path):
    corpus = make_prepared_corpus(tmp_path / "corpus")
    out = tmp_path / "s1"
    train.main(["--stage", "1", "--backbone", str(backbone_dir), "--output_dir", str(out), "--push_to_hub",
                "--hub_model_id", REPO, "--i_may_share_weights", "--hub_export", "adapter", "--base_model_id", BASE_REPO,
                *common_args(corpus, steps=2)])  # fmt: skip
    commits = [r for r in hub if "/commit/" in r["path"]]
    assert [r["json"]["visibility"] for r in hub if r["path"] == "/api/repos/create"] == ["private"]
    assert len(commits) == 1, [r["path"] for r in hub]  # the Trainer's own pushes are off
    sent = set(commits[0]["commit"])
    assert "mllm_dr_modules.safetensors" in sent and not any(name.startswith("checkpoint-") for name in sent)
    assert not {"run_manifest.json", "mllm_dr_data.json", "training_args.bin"} & sent
    assert json.loads(commits[0]["commit"]["mllm_dr_adapter.json"])["base_model"] == BASE_REPO


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mllm_dr.commands.push", *args], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip


def test_publishing_without_a_network_fails_in_one_line_and_the_licence_guard_comes_first(run, tmp_path):
    refused = _cli("--run_dir", str(tmp_path / "missing"), "--hub_model_id", REPO)
    assert refused.returncode != 0 and "--i_may_share_weights" in refused.stderr and "Traceback" not in refused.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    for extra in ({"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_x"}):
        failed = _cli("--run_dir", str(run), "--hub_model_id", REPO, "--i_may_share_weights", env={**env, **extra})
        assert failed.returncode != 0
        assert "Traceback" not in failed.stderr
        lines = [line for line in failed.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: could not publish to {REPO}"), failed.stderr


def test_train_refuses_a_push_it_could_not_finish_before_training(backbone_dir, tmp_path):
    corpus = make_prepared_corpus(tmp_path / "corpus")
    base = ["--stage", "1", "--backbone", str(backbone_dir), "--output_dir", str(tmp_path / "o"), *common_args(corpus)]
    with pytest.raises(SystemExit, match="i_may_share_weights"):
        train.main([*base, "--push_to_hub", "--hub_model_id", REPO])
    with pytest.raises(SystemExit, match="OWNER/NAME"):
        train.main([*base, "--push_to_hub", "--i_may_share_weights", "--hub_export", "adapter"])
    with pytest.raises(SystemExit, match="no merged export"):
        train.main([*base, "--push_to_hub", "--i_may_share_weights", "--hub_model_id", REPO])
    with pytest.raises(SystemExit, match="no Hub id holding its weights"):
        train.main([*base, "--push_to_hub", "--i_may_share_weights", "--hub_model_id", REPO, "--hub_export", "adapter"])
    assert not (tmp_path / "o").exists()


def test_dry_run_stages_and_uploads_nothing(run, tmp_path, capsys):
    assert push.main(["--run_dir", str(run), "--staging_dir", str(tmp_path / "st"), "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "nothing was uploaded" in out and "left out: checkpoint" not in out
    assert check_card(tmp_path / "st" / "README.md") == []


def test_licence_and_citation_files():
    import tomllib

    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]["text"] == "Apache-2.0"
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "Apache-2.0"
    paper = citation["preferred-citation"]
    assert paper["url"] == PAPER_URL and paper["year"] == 2025 and len(paper["authors"]) == 6
    assert paper["title"].startswith("MLlm-DR: Towards Explainable Depression Recognition")
