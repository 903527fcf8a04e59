"""The review sample (seeded, stratified by item, refused when redrawn differently), the review
command on an evaluation folder, and the app in a real headless Chromium (Playwright driving the
system's browser, nothing downloaded): three samples rated blind, the page reloaded, the ratings kept.

The browser test needs Chromium (Debian: ``apt-get install chromium``; ``.ci/run`` installs it) or
``MLLM_DR_CHROMIUM`` naming a Chromium/Chrome executable, and is skipped, saying so, without one.
``MLLM_DR_REVIEW_SCREENSHOT=docs/review_app.png`` makes it refresh the README's screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from processing_mllm_dr import PHQ8_ITEMS
from mllm_dr.commands import review
from mllm_dr.io import append_jsonl, read_jsonl, write_json_atomic
from mllm_dr.review import draw_sample, prepare_sample, read_ratings, read_sample

PARTICIPANTS = ("301", "302", "303", "304", "305")


def predictions(broken_every: int = 7) -> list[dict]:
    """One record per (participant, item) in ``predictions.jsonl``'s shape; every ``broken_every``-th
    output broke the format (rationale null, no parsed score)."""
    records = []
    for n, (participant, item) in enumerate((p, i) for p in PARTICIPANTS for i in PHQ8_ITEMS):
        broken = n % broken_every == 3
        score = (int(participant) + item.index) % 4
        records.append({
            "participant_id": participant, "item_index": item.index, "item_name": item.name,
            "generated_text": "I cannot answer that." if broken else f"Evaluation Reason: ...\nScore: {score}",
            "rationale": None if broken else (
                f"The participant describes {item.aspect} on a few days of the last two weeks, not most days, "
                f"and says it has not stopped them working: a mild level (interview {participant})."),
            "parsed_score": None if broken else score, "head_score": None, "score": 0 if broken else score,
            "label": (int(participant) + 2 * item.index) % 4, "fell_back": False, "total": None, "gender": None,
        })  # fmt: skip
    return records


def evaluation_folder(root: Path) -> Path:
    """An evaluation output folder over a prepared corpus (``save_to_disk``) of the same rows."""
    import datasets

    from mllm_dr.data import ROW_FEATURES

    rows = [
        {"participant_id": p, "item_index": item.index, "item_name": item.name, "label": (int(p) + 2 * item.index) % 4,
         "transcript": (f"Ellie: how have you been sleeping lately?\nParticipant {p}: not great, a few nights a week I "
                        f"lie awake.\nEllie: and {item.aspect}?\nParticipant {p}: some days, not most. I still go to "
                        "work.\n(synthetic interview, not clinical data)"),
         "total": None, "rationale": None, "audio_files": [], "video_files": [], "split": "test", "gender": None,
         "corpus": "prepared"}
        for p in PARTICIPANTS for item in PHQ8_ITEMS
    ]  # fmt: skip
    corpus = root / "corpus"
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows, features=ROW_FEATURES)}).save_to_disk(str(corpus))
    folder = root / "eval"
    append_jsonl(folder / "predictions.jsonl", predictions())
    write_json_atomic(folder / "manifest.json", {"model": {"kind": "mllm_dr", "path": "runs/s2"}, "questionnaire": "phq8",
                                                 "data": {"format": "prepared", "dir": str(corpus), "split": "test"}})  # fmt: skip
    return folder


def test_the_sample_is_seeded_stratified_by_item_and_holds_only_ratable_outputs():
    records = predictions()
    ratable = [r for r in records if r["parsed_score"] is not None]
    drawn = draw_sample(records, 20, seed=3)
    assert sorted(Counter(s["item_index"] for s in drawn).values()) == [2, 2, 2, 2, 3, 3, 3, 3]  # 20 over 8 items
    assert [s["sample_id"] for s in drawn] == list(range(1, 21))
    assert all(s["rationale"] and s["model_score"] is not None for s in drawn)
    assert len({(s["participant_id"], s["item_index"]) for s in drawn}) == 20
    assert drawn == draw_sample(list(reversed(records)), 20, seed=3)  # the file's order does not matter
    assert drawn != draw_sample(records, 20, seed=4)
    assert len(draw_sample(records, 100, seed=0)) == len(ratable)  # fewer outputs than asked: all of them
    # An item with fewer outputs than its share leaves the rest to the other items.
    short = [r for r in records if r["item_index"] != 1 or r["participant_id"] == "301"]
    counts = Counter(s["item_index"] for s in draw_sample(short, 24, seed=0))
    assert counts[1] == 1 and sum(counts.values()) == 24 and min(v for k, v in counts.items() if k != 1) == 3
    with pytest.raises(ValueError, match="no prediction has a rationale"):
        draw_sample([{**r, "parsed_score": None, "rationale": None} for r in records], 10, seed=0)


def test_a_sample_is_drawn_once_and_a_different_one_is_refused(tmp_path):
    folder = evaluation_folder(tmp_path)
    reviews = tmp_path / "reviews"
    first = prepare_sample(folder, reviews, size=12, seed=1)
    assert read_sample(reviews) == first == prepare_sample(folder, reviews, size=12, seed=1)
    assert (first["outputs"], first["format_failures"]) == (40, 6)
    for size, seed in ((12, 2), (13, 1)):
        with pytest.raises(ValueError, match="other settings"):
            prepare_sample(folder, reviews, size=size, seed=seed)
    append_jsonl(folder / "predictions.jsonl", [{**predictions()[0], "participant_id": "999"}])
    with pytest.raises(ValueError, match="predictions_sha256"):
        prepare_sample(folder, reviews, size=12, seed=1)
    with pytest.raises(ValueError, match="not an mllm-dr-evaluate output folder"):
        prepare_sample(tmp_path, reviews, size=12, seed=1)


def test_the_command_finds_each_sampled_items_transcript_in_the_evaluated_corpus(tmp_path, capsys):
    defaults = review.build_parser().parse_args_into_dataclasses([])[0]
    assert (defaults.host, defaults.sample_size) == ("127.0.0.1", 100)  # loopback only; the paper's 100
    folder = evaluation_folder(tmp_path)
    assert review.main(["--eval_dir", str(folder), "--sample_size", "8", "--prepare_only"]) == 0
    out = capsys.readouterr().out
    assert "8 samples (seed 0)" in out and "6 of 40 outputs broke the format" in out
    sample = read_sample(folder / "reviews")
    transcripts = review.load_transcripts(
        review.CorpusArguments(data_dir=sample["data"]["dir"], dataset_format="prepared"),
        {(s["participant_id"], s["item_index"]) for s in sample["samples"]},
    )
    first = sample["samples"][0]
    assert f"Participant {first['participant_id']}" in transcripts[(first["participant_id"], first["item_index"])]
    elsewhere = tmp_path / "other"
    (tmp_path / "corpus").rename(elsewhere)
    with pytest.raises(SystemExit, match="not a datasets.save_to_disk folder"):
        review.main(["--eval_dir", str(folder), "--sample_size", "8", "--prepare_only"])
    assert review.main(["--eval_dir", str(folder), "--sample_size", "8", "--prepare_only", "--data_dir", str(elsewhere),
                        "--dataset_format", "prepared"]) == 0  # fmt: skip


# ----------------------------------------------------------------------------- the app in a browser
def chromium() -> str | None:
    for candidate in (os.environ.get("MLLM_DR_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def served(tmp_path):
    """``mllm-dr-review`` serving a 6-sample review of an evaluation folder; yields (url, reviews folder)."""
    folder = evaluation_folder(tmp_path)
    port = free_port()
    log = (tmp_path / "app.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mllm_dr.commands.review", "--eval_dir", str(folder), "--sample_size", "6",
         "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("the review app did not start:\n" + (tmp_path / "app.log").read_text()) from None
                time.sleep(0.3)
        yield url, folder / "reviews"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_the_app_in_a_browser_keeps_three_blind_ratings_across_a_reload(served, tmp_path):
    browser_path = chromium()
    if browser_path is None:
        pytest.skip("no Chromium browser installed (Debian: apt-get install chromium; .ci/run installs it), or set "
                    "MLLM_DR_CHROMIUM to a Chromium/Chrome executable")  # fmt: skip
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install -e '.[test]')")
    url, reviews = served
    screenshot = Path(os.environ.get("MLLM_DR_REVIEW_SCREENSHOT") or tmp_path / "review_app.png")
    hosts = set()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1000, "height": 1100}).new_page()
            page.on("request", lambda request: hosts.add(request.url.split("/")[2]))
            expect = playwright.expect
            page.goto(url)
            page.locator("#assessor-name textarea, #assessor-name input").first.fill("Ann Lee")
            page.locator("#start").click()
            for k in range(3):
                expect(page.locator("#progress")).to_contain_text(f"Sample {k + 1} of 6 · {k} of 6 rated")
                expect(page.locator("#rationale")).to_be_hidden()  # blind: the model's output waits
                page.locator("#reveal").click()
                expect(page.locator("#status")).to_contain_text("Choose your own score first")
                page.locator("#own-score").get_by_text(f"{k}: ").click()
                page.locator("#reveal").click()
                expect(page.locator("#rationale textarea")).to_have_value(read_sample(reviews)["samples"][k]["rationale"])
                expect(page.locator(f"#own-score input[value='{k}']")).to_be_disabled()  # locked once revealed
                page.locator("#rating").get_by_text(f"{3 - k}: ").click()
                if k == 2:
                    page.screenshot(path=str(screenshot), full_page=True)
                page.locator("#save").click()
            expect(page.locator("#progress")).to_contain_text("Sample 4 of 6 · 3 of 6 rated")

            page.reload()  # the name is not asked again; the first unrated sample comes up
            expect(page.locator("#progress")).to_contain_text("Sample 4 of 6 · 3 of 6 rated · assessor Ann Lee")
            page.locator("#previous").click()
            expect(page.locator("#progress")).to_contain_text("Sample 3 of 6")
            expect(page.locator("#own-score input[value='2']")).to_be_checked()
            expect(page.locator("#rating input[value='1']")).to_be_checked()

            fresh = browser.new_context().new_page()  # another browser: the name once, then where Ann stopped
            fresh.goto(url)
            fresh.locator("#assessor-name textarea, #assessor-name input").first.fill("Ann Lee")
            fresh.locator("#start").click()
            expect(fresh.locator("#progress")).to_contain_text("Sample 4 of 6 · 3 of 6 rated")

            fresh.locator("#switch").click()  # a second assessor, open mode: everything shown at once
            fresh.locator("#assessor-name textarea, #assessor-name input").first.fill("Bo")
            fresh.locator("#mode").get_by_text("Open: ").click()
            fresh.locator("#start").click()
            expect(fresh.locator("#progress")).to_contain_text("Sample 1 of 6 · 0 of 6 rated · assessor Bo (open)")
            expect(fresh.locator("#rationale textarea")).to_be_visible()
            expect(fresh.locator("#reveal")).to_be_hidden()
            fresh.locator("#own-score").get_by_text("3: ").click()
            fresh.locator("#rating").get_by_text("2: ").click()
            fresh.locator("#save").click()
            expect(fresh.locator("#progress")).to_contain_text("Sample 2 of 6 · 1 of 6 rated")
        finally:
            browser.close()
    assert hosts == {url.split("/")[2]}  # the page asked nothing of any other host
    sample = read_sample(reviews)
    ratings = read_ratings(reviews / "ann_lee.jsonl", sample)
    assert {n: (r["expert_score"], r["rationale_rating"], r["blind"]) for n, r in ratings.items()} == {
        1: (0, 3, True), 2: (1, 2, True), 3: (2, 1, True)
    }
    assert [(r["expert_score"], r["rationale_rating"], r["blind"]) for _, r in read_jsonl(reviews / "bo.jsonl")] == [
        (3, 2, False)
    ]
    lines = [record for _line, record in read_jsonl(reviews / "ann_lee.jsonl")]
    assert [r["rationale_rating"] for r in lines] == [None, 3, None, 2, None, 1]  # each reveal recorded first
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("MLLM_DR_REVIEW_SCREENSHOT"):  # the README's copy: fewer colours, a few tens of kB
        from PIL import Image

        Image.open(screenshot).convert("RGB").quantize(colors=64).save(screenshot, optimize=True)
    print(json.dumps({"screenshot": str(screenshot)}))
