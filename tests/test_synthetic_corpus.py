"""The synthetic E-DAIC-WOZ-layout corpus: exact layout and formats, consistent labels, byte-identical
reruns, atomic writes, schema-valid rationales, and planted signals that are learnable and confined to
their modality (checked with scikit-learn probes, cross-validated)."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from scipy.stats import spearmanr
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import mllm_dr.synthetic as synth
from mllm_dr.commands import synthetic_corpus
from mllm_dr.data import load_rationales, write_rationales

SPLIT_HEADER = "Participant_ID,Gender,PHQ_Binary,PHQ_Score,PCL-C (PTSD),PTSD Severity"
DETAILED_PHQ8_HEADER = (
    "Participant_ID,PHQ_8NoInterest,PHQ_8Depressed,PHQ_8Sleep,PHQ_8Tired,PHQ_8Appetite,PHQ_8Failure,"
    "PHQ_8Concentrating,PHQ_8Moving,PHQ_8Total"
)
DETAILED_LABELS_HEADER = (
    "Participant,PHQ8_1_NoInterest,PHQ8_2_Depressed,PHQ8_3_Sleep,PHQ8_4_Tired,PHQ8_5_Appetite,PHQ8_6_Failure,"
    "PHQ8_7_Concentration,PHQ8_8_Psychomotor,Depression_severity,Depression_label,PTSD_severity,PTSD_label,"
    "gender,age,split"
)
TRANSCRIPT_HEADER = "Start_Time,End_Time,Text,Confidence"
# Words that would leak an audio/visual item (4 Tired, 5 Appetite, 7 Concentrating, 8 Moving) into text.
FEATURE_ITEM_WORDS = re.compile(
    r"\b(tired\w*|energ\w*|exhaust\w*|appetite|eat\w*|ate|food|hungry|meals?|concentrat\w*|focus\w*|distract\w*"
    r"|restless\w*|fidget\w*|slow\w*|sluggish)\b"
)


# ---------------------------------------------------------------------------------------------
# Corpora (built once per session; tiny T keeps them fast)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def corpus60(tmp_path_factory) -> tuple[Path, dict]:
    """The demo configuration: 60 participants, 4 s, 12 turns, default item correlation."""
    out = tmp_path_factory.mktemp("synth") / "corpus60"
    return out, synth.make_synthetic_corpus(out, 60, seed=0, seconds=4, turns=12)


@pytest.fixture(scope="session")
def independent80(tmp_path_factory) -> tuple[Path, dict]:
    """Independent items (item_correlation=0): a modality can only know its own items."""
    out = tmp_path_factory.mktemp("synth") / "independent80"
    return out, synth.make_synthetic_corpus(out, 80, seed=1, seconds=2, turns=6, item_correlation=0.0)


@pytest.fixture(scope="session")
def text_independent200(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "text200"
    return out, synth.make_synthetic_corpus(out, 200, seed=3, seconds=0.1, turns=12, item_correlation=0.0)


@pytest.fixture(scope="session")
def large300(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "large300"
    return out, synth.make_synthetic_corpus(out, 300, seed=2, seconds=0.1, turns=5)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def first_line(path: Path) -> str:
    return path.read_text(encoding="utf-8").split("\n", 1)[0]


def item_labels(root: Path) -> tuple[list[str], np.ndarray]:
    rows = read_csv(root / "labels" / "detailed_lables.csv")
    ids = [row["Participant"] for row in rows]
    return ids, np.array([[int(row[c]) for c in synth.DETAILED_LABELS_ITEMS] for row in rows])


def transcript_text(root: Path, pid: str) -> str:
    return " ".join(row["Text"] for row in read_csv(root / "data" / f"{pid}_P" / f"{pid}_Transcript.csv"))


def cv_spearman(model_factory, x, y: np.ndarray) -> float:
    predictions = cross_val_predict(model_factory(), x, y, cv=KFold(5, shuffle=True, random_state=0))
    return float(spearmanr(predictions, y)[0])


def feature_probe(features: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    """Cross-validated Spearman of a ridge probe on mean-pooled features, per PHQ item."""
    factory = lambda: make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(0, 5, 11)))  # noqa: E731
    return {item: cv_spearman(factory, features, labels[:, item - 1]) for item in range(1, 9)}


def pooled_features(root: Path, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    audio = np.stack([
        np.load(root / "data" / f"{i}_P" / "features" / f"{i}_HuBERT.npy", allow_pickle=False).mean(0) for i in ids
    ])
    video = np.stack([
        scipy.io.loadmat(root / "data" / f"{i}_P" / "features" / f"{i}_CNN_ResNet.mat")["feature"].mean(0) for i in ids
    ])
    return audio, video


# ---------------------------------------------------------------------------------------------
# Layout and formats
# ---------------------------------------------------------------------------------------------


def test_layout_headers_and_ids(corpus60):
    root, summary = corpus60
    labels = root / "labels"
    assert sorted(p.name for p in labels.iterdir()) == sorted(
        ["train_split.csv", "dev_split.csv", "test_split.csv", "Detailed_PHQ8_Labels.csv", "detailed_lables.csv"]
    )
    for split in ("train", "dev", "test"):
        assert first_line(labels / f"{split}_split.csv") == SPLIT_HEADER
    assert first_line(labels / "Detailed_PHQ8_Labels.csv") == DETAILED_PHQ8_HEADER
    assert first_line(labels / "detailed_lables.csv") == DETAILED_LABELS_HEADER
    top = sorted(p.name for p in root.iterdir())
    assert top == ["SYNTHETIC.md", "data", "labels", "rationales.jsonl", "signal_map.json"]

    splits = {
        s: [int(r["Participant_ID"]) for r in read_csv(labels / f"{s}_split.csv")] for s in ("train", "dev", "test")
    }
    assert {s: len(v) for s, v in splits.items()} == {"train": 36, "dev": 12, "test": 12}
    assert splits == summary["splits"]
    assert all(300 <= i <= 492 for i in splits["train"] + splits["dev"])
    assert all(600 <= i <= 718 for i in splits["test"])
    everyone = sorted(splits["train"] + splits["dev"] + splits["test"])
    assert len(set(everyone)) == 60
    assert sorted(int(p.name[:-2]) for p in (root / "data").iterdir()) == everyone
    for pid in everyone:
        folder = root / "data" / f"{pid}_P"
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        assert files == [f"{pid}_Transcript.csv", f"features/{pid}_CNN_ResNet.mat", f"features/{pid}_HuBERT.npy"]
    info = json.loads((root / "signal_map.json").read_text())
    assert info["synthetic"] is True and info["seed"] == 0 and info["arguments"]["participants"] == 60
    assert {k: v["modality"] for k, v in info["items"].items()} == {
        "1": "text", "2": "text", "3": "text", "4": "audio", "5": "video", "6": "text", "7": "video", "8": "audio"
    }
    assert "NOT clinical data" in (root / "SYNTHETIC.md").read_text()


def test_transcripts_are_asr_like_csv_with_quoted_commas(corpus60):
    root, summary = corpus60
    ids, _ = item_labels(root)
    for pid in ids:
        path = root / "data" / f"{pid}_P" / f"{pid}_Transcript.csv"
        raw = path.read_text(encoding="utf-8")
        assert raw.split("\n", 1)[0] == TRANSCRIPT_HEADER
        rows = list(csv.reader(io.StringIO(raw)))[1:]
        assert len(rows) >= 12 and all(len(row) == 4 for row in rows)
        assert any("," in row[2] for row in rows) and ',"' in raw  # a quoted field holding a comma
        previous_end = 0.0
        for start, end, text, confidence in rows:
            start, end, confidence = float(start), float(end), float(confidence)
            assert previous_end <= start <= end <= 4.0 and 0.0 <= confidence <= 1.0 and text.strip()
            previous_end = end
        assert not FEATURE_ITEM_WORDS.findall(raw.lower()), f"{path} mentions an audio/visual item"
    # The planted answers are in the transcripts (and are what the rationales quote).
    for p in synth.plan_corpus(60, 0):
        text = transcript_text(root, str(p.pid))
        assert all(p.phrases[item] in text for item in synth.TEXT_ITEMS)


def test_feature_files_shapes_dtypes_and_readers(corpus60):
    root, summary = corpus60
    assert summary["frames"] == {"audio": 200, "video": 120}
    for pid in summary["splits"]["train"][:3] + summary["splits"]["test"][:2]:
        features = root / "data" / f"{pid}_P" / "features"
        audio = np.load(features / f"{pid}_HuBERT.npy", allow_pickle=False)
        assert audio.shape == (200, 768) and audio.dtype == np.float32 and np.isfinite(audio).all()
        mat = scipy.io.loadmat(features / f"{pid}_CNN_ResNet.mat")
        video = mat["feature"]
        assert video.shape == (120, 2048) and video.dtype == np.float32
        assert video.min() >= 0.0 and 0.2 < (video == 0).mean() < 0.8  # post-ReLU-like
        assert (features / f"{pid}_CNN_ResNet.mat").read_bytes().startswith(synth.MAT_HEADER_TEXT)


@pytest.mark.parametrize("shape", [(1, 2048), (3, 5), (7, 3), (130, 2048), (1001, 7)])
def test_streaming_writers_equal_numpy_and_scipy(tmp_path, shape):
    """Chunked writers give exactly np.save's bytes and savemat's (bar savemat's timestamped header)."""
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    chunks = [x[i:i + 64] for i in range(0, shape[0], 64)]
    synth.write_npy_streaming(tmp_path / "a.npy", *shape, iter(chunks))
    synth.write_mat_streaming(tmp_path / "a.mat", *shape, iter(chunks))
    reference = io.BytesIO()
    np.save(reference, x)
    assert (tmp_path / "a.npy").read_bytes() == reference.getvalue()
    reference = io.BytesIO()
    scipy.io.savemat(reference, {"feature": x})
    ours = (tmp_path / "a.mat").read_bytes()
    assert len(ours) == len(reference.getvalue()) and ours[116:] == reference.getvalue()[116:]
    assert np.array_equal(scipy.io.loadmat(tmp_path / "a.mat")["feature"], x)


def test_long_sequences_are_chunked_and_chunking_does_not_change_values(monkeypatch):
    p = synth.plan_corpus(3, 0)[0]
    whole = list(synth.feature_chunks(synth.VIDEO, 50, p, 0))
    monkeypatch.setattr(synth, "CHUNK_FRAMES", 7)
    pieces = list(synth.feature_chunks(synth.VIDEO, 50, p, 0))
    assert len(whole) == 1 and len(pieces) == 8 and max(len(c) for c in pieces) == 7
    assert np.array_equal(np.concatenate(pieces), whole[0])
    assert synth.frame_counts(1200) == {"audio": 60000, "video": 36000}


# ---------------------------------------------------------------------------------------------
# Labels and rationales
# ---------------------------------------------------------------------------------------------


def test_label_files_are_consistent(corpus60):
    root, summary = corpus60
    labels = root / "labels"
    split_rows = {s: read_csv(labels / f"{s}_split.csv") for s in ("train", "dev", "test")}
    detailed = {r["Participant_ID"]: r for r in read_csv(labels / "Detailed_PHQ8_Labels.csv")}
    everything = {r["Participant"]: r for r in read_csv(labels / "detailed_lables.csv")}
    assert set(detailed) == {r["Participant_ID"] for s in ("train", "dev") for r in split_rows[s]}
    assert set(everything) == {r["Participant_ID"] for rows in split_rows.values() for r in rows}
    for split, rows in split_rows.items():
        for row in rows:
            pid = row["Participant_ID"]
            total = int(row["PHQ_Score"])
            assert row["Gender"] in ("male", "female")
            assert int(row["PHQ_Binary"]) == int(total >= 10)
            assert int(row["PCL-C (PTSD)"]) == int(float(row["PTSD Severity"]) >= synth.PTSD_CUTOFF)
            assert 17 <= float(row["PTSD Severity"]) <= 85
            full = everything[pid]
            items = [int(full[c]) for c in synth.DETAILED_LABELS_ITEMS]
            assert all(0 <= v <= 3 for v in items) and sum(items) == total == int(full["Depression_severity"])
            assert int(full["Depression_label"]) == int(total >= 10) and full["split"] == split
            assert full["gender"] == row["Gender"] and 18 <= int(full["age"]) <= 90
            if split != "test":
                names = [c for c in synth.DETAILED_PHQ8_COLUMNS[1:-1]]
                assert [int(detailed[pid][c]) for c in names] == items and int(detailed[pid]["PHQ_8Total"]) == total
    assert summary["totals"] == {pid: int(r["Depression_severity"]) for pid, r in everything.items()}


def test_no_test_item_labels_flag(tmp_path):
    summary = synth.make_synthetic_corpus(tmp_path / "c", 5, seed=4, seconds=0.5, turns=5, test_item_labels=False)
    labels = tmp_path / "c" / "labels"
    assert not (labels / "detailed_lables.csv").exists()
    assert sorted(p.name for p in labels.iterdir()) == sorted(
        ["train_split.csv", "dev_split.csv", "test_split.csv", "Detailed_PHQ8_Labels.csv"]
    )
    test_ids = {str(i) for i in summary["splits"]["test"]}
    assert not test_ids & {r["Participant_ID"] for r in read_csv(labels / "Detailed_PHQ8_Labels.csv")}
    assert not test_ids & {k[0] for k in load_rationales(tmp_path / "c" / "rationales.jsonl")}
    assert "--no_test_item_labels" in (tmp_path / "c" / "SYNTHETIC.md").read_text()


def test_rationales_valid_train_dev_only_and_agree_with_labels(corpus60, tmp_path):
    root, summary = corpus60
    records = load_rationales(root / "rationales.jsonl")
    train_dev = [str(i) for s in ("train", "dev") for i in summary["splits"][s]]
    assert set(records) == {(pid, item) for pid in train_dev for item in range(1, 9)}
    detailed = {r["Participant_ID"]: r for r in read_csv(root / "labels" / "Detailed_PHQ8_Labels.csv")}
    for (pid, item), record in records.items():
        assert record.teacher == "synthetic-template" and record.prompt_version == "synthetic-v1"
        assert record.item_name == synth.PHQ8_ITEMS[item - 1].name
        assert record.label == int(detailed[pid][synth.DETAILED_PHQ8_COLUMNS[item]])
        assert record.rationale.startswith("(Synthetic template rationale.) ")
        assert record.rationale.endswith(f"The frequency that fits best is '{synth.FREQUENCY[record.label]}'.")
        assert "Score:" not in record.rationale and "\n" not in record.rationale
        if synth.ITEM_MODALITY[item] == "text":  # cites the planted answer, verbatim from the transcript
            quoted = record.rationale.split('"')[1]
            assert quoted in transcript_text(root, pid)
        else:
            assert "transcript does not touch on this" in record.rationale
    # Same bytes as the schema owner's writer would produce for these records.
    write_rationales(tmp_path / "r.jsonl", records.values())
    assert (tmp_path / "r.jsonl").read_bytes() == (root / "rationales.jsonl").read_bytes()


def test_score_distribution_is_e_daic_like(large300):
    root, summary = large300
    _, labels = item_labels(root)
    totals = labels.sum(1)
    assert 0.10 <= (totals >= 10).mean() <= 0.40
    assert 4.0 <= totals.mean() <= 9.0 and totals.max() >= 18 and (totals == 0).mean() < 0.25
    assert all(set(labels[:, k]) == {0, 1, 2, 3} for k in range(8))
    assert summary["depressed_share"] == pytest.approx((totals >= 10).mean())
    item_corr = np.corrcoef(labels.T)[np.triu_indices(8, 1)]
    assert 0.2 < item_corr.mean() < 0.7  # items share a latent severity


# ---------------------------------------------------------------------------------------------
# Determinism, atomicity, ids
# ---------------------------------------------------------------------------------------------


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_arguments_give_byte_identical_files_and_seeds_differ(tmp_path):
    kwargs = dict(participants=5, seconds=1.0, turns=8)
    synth.make_synthetic_corpus(tmp_path / "a", seed=7, **kwargs)
    synth.make_synthetic_corpus(tmp_path / "nested" / "b", seed=7, **kwargs)
    synth.make_synthetic_corpus(tmp_path / "c", seed=8, **kwargs)
    a, b, c = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "nested" / "b"), tree_bytes(tmp_path / "c")
    assert len(a) == 5 + 5 * 3 + 3 and a == b  # labels, data, rationales + SYNTHETIC.md + signal_map.json
    assert a["labels/detailed_lables.csv"] != c["labels/detailed_lables.csv"]
    a_features = {k: v for k, v in a.items() if k.endswith((".npy", ".mat"))}
    c_features = {k: v for k, v in c.items() if k.endswith((".npy", ".mat"))}
    assert not set(a_features.values()) & set(c_features.values())


def test_the_regenerate_command_in_synthetic_md_gives_the_same_bytes(tmp_path):
    """SYNTHETIC.md prints the command that regenerates the corpus: run it, as a user would."""
    original = tmp_path / "original"
    synth.make_synthetic_corpus(original, 4, seed=5, seconds=0.5, turns=6, item_correlation=0.3, test_item_labels=False)
    text = (original / "SYNTHETIC.md").read_text()
    command = text.split("Regenerate byte-identically with:\n\n", 1)[1].splitlines()[0].strip()
    assert command.startswith("mllm-dr-synthetic-corpus --output_dir DIR ")
    argv = command.replace("DIR", str(tmp_path / "again")).split()
    done = subprocess.run([str(Path(sys.executable).parent / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert tree_bytes(tmp_path / "again") == tree_bytes(original)


def test_atomic_write_and_force(tmp_path, monkeypatch):
    out = tmp_path / "corpus"
    out.mkdir()  # an existing empty folder is fine
    synth.make_synthetic_corpus(out, 3, seed=0, seconds=0.2, turns=5)
    with pytest.raises(FileExistsError, match="not empty"):
        synth.make_synthetic_corpus(out, 3, seed=1, seconds=0.2, turns=5)
    synth.make_synthetic_corpus(out, 3, seed=1, seconds=0.2, turns=5, force=True)
    assert json.loads((out / "signal_map.json").read_text())["seed"] == 1

    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a synthetic corpus"):
        synth.make_synthetic_corpus(other, 3, seed=0, seconds=0.2, turns=5, force=True)
    assert (other / "notes.txt").read_text() == "keep me"

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "write_rationale_file", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        synth.make_synthetic_corpus(tmp_path / "never", 3, seed=0, seconds=0.2, turns=5)
    with pytest.raises(RuntimeError, match="disk full"):
        synth.make_synthetic_corpus(out, 3, seed=2, seconds=0.2, turns=5, force=True)
    assert not (tmp_path / "never").exists()
    assert json.loads((out / "signal_map.json").read_text())["seed"] == 1  # the old corpus is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "precious"]  # no staging left behind


@pytest.mark.parametrize("n", [1, 2, 3, 5, 60, 275, 600, 1500])
def test_ids_and_split_sizes(n):
    ids = synth.assign_ids(n, seed=0)
    sizes = {s: len(v) for s, v in ids.items()}
    assert sum(sizes.values()) == n and (min(sizes.values()) >= 1 or n < 3) and sizes["train"] >= 1
    assert abs(sizes["train"] / n - 0.6) < 0.15 or n < 10
    everyone = ids["train"] + ids["dev"] + ids["test"]
    assert len(set(everyone)) == n
    assert all(i >= 600 for i in ids["test"])
    if sizes["train"] + sizes["dev"] <= 193 and sizes["test"] <= 119:  # fits E-DAIC's own ranges
        assert all(300 <= i <= 492 for i in ids["train"] + ids["dev"]) and all(i <= 718 for i in ids["test"])


def test_invalid_arguments():
    with pytest.raises(ValueError, match="participants"):
        synth.split_sizes(0)
    with pytest.raises(ValueError, match="seed"):
        synth.make_synthetic_corpus("unused", 3, seed=-1)
    with pytest.raises(ValueError, match="seconds"):
        synth.make_synthetic_corpus("unused", 3, seed=0, seconds=0)


# ---------------------------------------------------------------------------------------------
# The planted signals: learnable, and only in their modality
# ---------------------------------------------------------------------------------------------


def test_feature_signals_are_learnable_on_the_demo_corpus(corpus60):
    root, _ = corpus60
    ids, labels = item_labels(root)
    audio, video = pooled_features(root, ids)
    for features, planted in ((audio, (4, 8)), (video, (5, 7))):
        scores = feature_probe(features, labels)
        others = [scores[i] for i in range(1, 9) if i not in planted]
        assert min(scores[i] for i in planted) >= 0.5, scores
        # Other items are predicted only indirectly (shared severity), and clearly worse.
        assert min(scores[i] for i in planted) >= max(others) + 0.15, scores


def test_feature_signals_are_modality_specific(independent80):
    root, _ = independent80
    ids, labels = item_labels(root)
    audio, video = pooled_features(root, ids)
    for features, planted in ((audio, (4, 8)), (video, (5, 7))):
        scores = feature_probe(features, labels)
        assert all(scores[i] >= 0.5 for i in planted), scores
        assert all(scores[i] <= 0.35 for i in range(1, 9) if i not in planted), scores


def test_transcript_signals_are_learnable_and_modality_specific(text_independent200):
    root, _ = text_independent200
    ids, labels = item_labels(root)
    texts = [transcript_text(root, pid) for pid in ids]
    factory = lambda: make_pipeline(  # noqa: E731
        CountVectorizer(ngram_range=(1, 2), binary=True), RidgeCV(alphas=np.logspace(-1, 3, 9))
    )
    scores = {item: cv_spearman(factory, texts, labels[:, item - 1]) for item in range(1, 9)}
    assert all(scores[i] >= 0.4 for i in synth.TEXT_ITEMS), scores
    assert all(scores[i] <= 0.3 for i in range(1, 9) if i not in synth.TEXT_ITEMS), scores


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def test_cli_smoke_from_another_directory(tmp_path):
    command = [str(Path(sys.executable).parent / "mllm-dr-synthetic-corpus"), "--output_dir", "out", "--participants",
               "3", "--seed", "0", "--seconds", "0.5", "--turns", "5", "--no_test_item_labels"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and "3 participants" in done.stdout
    assert (tmp_path / "out" / "labels" / "train_split.csv").is_file()
    assert not (tmp_path / "out" / "labels" / "detailed_lables.csv").exists()



def test_cli_refuses_a_non_empty_output(tmp_path, capsys):
    args = ["--output_dir", str(tmp_path / "out"), "--participants", "3", "--seed", "0", "--seconds", "0.2", "--turns", "5"]
    assert synthetic_corpus.main(args) == 0
    assert synthetic_corpus.main(args) == 2 and "not empty" in capsys.readouterr().err
    assert synthetic_corpus.main(args + ["--force"]) == 0


# ----------------------------------------------------------------------------- signal layouts (issue 15)
def _file_hashes(root: Path, skip: tuple[str, ...] = ("SYNTHETIC.md", "signal_map.json")) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}  # fmt: skip


def test_standard_layout_is_byte_identical_to_the_generator_before_layouts(tmp_path):
    """The data files (labels, transcripts, features, rationales) of a small corpus, pinned to the
    output of the generator before --signal_layout existed (only the two docs now name the layout)."""
    import hashlib

    synth.make_synthetic_corpus(tmp_path / "c", participants=10, seed=3)
    listing = "".join(f"{digest}  ./{name}\n" for name, digest in _file_hashes(tmp_path / "c").items())
    assert hashlib.sha256(listing.encode()).hexdigest() == "5aff2ee671ea3ce8ebc6704df72d02d63bf9952fd9ca1734b7bac4e26f7c8fce"


def _pooled(corpus: Path, pid: int, modality: str) -> np.ndarray:
    from mllm_dr.data import read_features

    spec = synth.AUDIO if modality == "audio" else synth.VIDEO
    return read_features([corpus / "data" / f"{pid}_P" / "features" / f"{pid}{spec.file_suffix}"], as_float32=True).mean(axis=0)


@pytest.mark.parametrize("layout", [name for name in synth.LAYOUTS if name != "standard"])
def test_each_layout_plants_its_items_recoverably_and_only_there(tmp_path, layout):
    a, b, standard = tmp_path / "a", tmp_path / "b", tmp_path / "standard"
    synth.make_synthetic_corpus(a, participants=30, seed=5, signal_layout_name=layout)
    synth.make_synthetic_corpus(b, participants=30, seed=5, signal_layout_name=layout)
    synth.make_synthetic_corpus(standard, participants=30, seed=5)
    hashes, other = _file_hashes(a), _file_hashes(standard)
    assert hashes == _file_hashes(b)  # deterministic
    features = {name for name in hashes if name.endswith((".npy", ".mat"))}
    assert all(hashes[n] != other[n] for n in features)  # other features...
    assert all(hashes[n] == other[n] for n in set(hashes) - features)  # ...the same labels, transcripts, rationales
    info = json.loads((a / "signal_map.json").read_text())
    assert info["signal_layout"]["name"] == layout and info["arguments"]["signal_layout"] == layout
    assert f"--signal_layout {layout}" in (a / "SYNTHETIC.md").read_text()
    scores = {int(r["Participant"]): r for r in csv.DictReader(io.StringIO((a / "labels" / "detailed_lables.csv").read_text()))}
    directions = synth.signal_directions(layout)
    pids = sorted(scores)
    recovered = []
    for modality, items, others in (("audio", (4, 8), (5, 7)), ("video", (5, 7), (4, 8))):
        pooled = np.stack([_pooled(a, pid, modality) for pid in pids])
        for item in items:  # the mean-pooled projection on the planted direction follows the item's score
            projection = pooled @ directions[item]
            item_scores = [int(float(scores[pid][synth.DETAILED_LABELS_ITEMS[item - 1]])) for pid in pids]
            recovered.append(spearmanr(projection, item_scores).statistic)
            assert recovered[-1] > 0.3, (layout, modality, item, recovered[-1])
        for item in others:  # this modality says nothing about the other modality's items beyond their correlation
            other_scores = [int(float(scores[pid][synth.DETAILED_LABELS_ITEMS[item - 1]])) for pid in pids]
            partial = [spearmanr(pooled @ directions[i], other_scores).statistic for i in items]
            assert max(partial) < 0.9, (layout, modality, item)
    assert np.mean(recovered) > 0.5, (layout, recovered)  # measured (30 participants, 4 s): 0.67-0.86 per layout
    if layout == "sparse":
        dims = info["items"]["4"]["dimensions"]
        assert len(dims) == 8 and set(np.flatnonzero(directions[4])) == set(dims)


def test_unknown_layout_and_cmdc_layout_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown signal layout 'loud'; known: standard"):
        synth.make_synthetic_corpus(tmp_path / "x", participants=6, seed=0, signal_layout_name="loud")
    code = synthetic_corpus.main(["--layout", "cmdc", "--output_dir", str(tmp_path / "c"), "--participants", "6",
                                  "--seed", "0", "--signal_layout", "sparse"])  # fmt: skip
    assert code == 2 and "--signal_layout does not apply to --layout cmdc" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "c").exists()
