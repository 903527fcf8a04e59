"""Corpus loaders and feature cache, on tiny folders written here in the real E-DAIC-WOZ, DAIC-WOZ and
CMDC layouts (see tests/corpus_fixtures.py)."""

from __future__ import annotations

import csv
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from corpus_fixtures import (
    CMDC_QUESTIONS,
    CMDC_SUBJECTS,
    DAIC_SPLITS,
    EDAIC_FRAMES,
    EDAIC_SPLITS,
    cmdc_answer,
    edaic_folder,
    remove,
    write_cmdc,
    write_csv,
    write_daic,
    write_edaic,
)

import mllm_dr.data as corpora
from configuration_mllm_dr import LQFormerConfig, MllmDrConfig
from mllm_dr.commands import synthetic_corpus
from mllm_dr.data import (
    ROW_FEATURES,
    build_feature_cache,
    cmdc_protocol_split,
    concatenate_corpora,
    load_cmdc,
    load_corpus,
    load_daic_woz,
    load_edaic,
    read_feature_file,
    read_features,
    write_rationales,
)
from processing_mllm_dr import PHQ8_ITEMS, PHQ9_ITEMS, apply_frame_policy

COLUMNS = list(ROW_FEATURES)
CACHE_COLUMNS = ["audio_cache", "audio_cache_policy", "video_cache", "video_cache_policy"]


def frames(audio: dict | None = None, video: dict | None = None) -> MllmDrConfig:
    """A config whose only job here is to carry each modality's frame policy to the cache."""
    return MllmDrConfig(
        audio_config=LQFormerConfig(**{"feature_dim": 768, **(audio or {})}),
        video_config=LQFormerConfig(**{"feature_dim": 2048, **(video or {})}),
    )


def ids(dataset) -> set[str]:
    return set(dataset["participant_id"])


def all_ids(dataset_dict) -> set[str]:
    return set().union(*(ids(split) for split in dataset_dict.values()))


def rows_of(dataset_dict, pid):
    return [row for split in dataset_dict.values() for row in split if row["participant_id"] == pid]


@pytest.fixture
def edaic(tmp_path):
    root = tmp_path / "edaic"
    return root, write_edaic(root)


@pytest.fixture
def cmdc(tmp_path):
    root = tmp_path / "cmdc"
    return root, write_cmdc(root)


# --------------------------------------------------------------------------------------------- E-DAIC-WOZ
def test_edaic_rows_and_columns(edaic):
    root, truth = edaic
    dd = load_edaic(root)
    assert list(dd) == ["train", "dev", "test"]
    for split, pids in EDAIC_SPLITS.items():
        assert dd[split].column_names == COLUMNS
        assert dd[split].features == ROW_FEATURES  # references only: no array column anywhere
        assert len(dd[split]) == 8 * len(pids)
        assert ids(dd[split]) == set(pids)
    for split in dd.values():
        for row in split:
            t = truth[row["participant_id"]]
            item = PHQ8_ITEMS[row["item_index"] - 1]
            assert row["item_name"] == item.name
            assert row["label"] == t["items"][item.index - 1]  # test labels come from detailed_lables.csv
            assert row["total"] == t["total"]
            assert row["split"] == t["split"] and row["gender"] == t["gender"] and row["corpus"] == "edaic"
            assert row["transcript"] == "\n".join(t["lines"])  # quoted commas survive
            assert row["rationale"] is None
            folder = edaic_folder(root, row["participant_id"])
            pid = row["participant_id"]
            assert row["audio_files"] == [os.path.abspath(folder / "features" / f"{pid}_HuBERT.npy")]
            assert row["video_files"] == [os.path.abspath(folder / "features" / f"{pid}_CNN_ResNet.mat")]
    assert [r["item_index"] for r in rows_of(dd, "300")] == list(range(1, 9))


def test_edaic_quoted_commas_in_transcript(edaic):
    root, _ = edaic
    row = load_edaic(root)["train"][0]
    assert 'she said "no, not really", and left' in row["transcript"].split("\n")
    assert "i sleep badly, wake up at 4, and feel tired" in row["transcript"].split("\n")


@pytest.mark.parametrize(
    "labels_dir,data_dir,nested",
    [("labels", "data", ("302", "600")), (".", "data", ()), ("labels", ".", ("303",)), (".", ".", ("300",))],
)
def test_edaic_layout_variants(tmp_path, labels_dir, data_dir, nested):
    reference = load_edaic(write_edaic_root(tmp_path / "ref"))
    root = tmp_path / "variant"
    write_edaic(root, labels_dir=labels_dir, data_dir=data_dir, nested=nested)
    variant = load_edaic(root)
    for split in reference:
        for a, b in zip(reference[split], variant[split], strict=True):
            assert {k: v for k, v in a.items() if not k.endswith("_files")} == {
                k: v for k, v in b.items() if not k.endswith("_files")
            }
            assert all(Path(p).is_file() for p in b["audio_files"] + b["video_files"])
            assert len(b["audio_files"]) == len(b["video_files"]) == 1
    for pid in nested:
        assert f"{pid}_P/{pid}_P/features" in rows_of(variant, pid)[0]["audio_files"][0]


def write_edaic_root(root: Path) -> Path:
    write_edaic(root)
    return root


def test_edaic_without_detailed_lables(tmp_path, caplog):
    root = tmp_path / "edaic"
    truth = write_edaic(root, detailed_lables=False)
    with caplog.at_level(logging.WARNING, logger="mllm_dr.data"):
        dd, report = load_edaic(root, return_report=True)
    assert all(label is None for label in dd["test"]["label"])
    assert dd["test"]["total"] == [truth[pid]["total"] for pid in dd["test"]["participant_id"]]  # from PHQ_Score
    assert dd["train"]["label"] == [truth[r["participant_id"]]["items"][r["item_index"] - 1] for r in dd["train"]]
    assert any("detailed_lables.csv not found" in note for note in report.notes)
    assert "detailed_lables.csv not found" in caplog.text
    assert not report.skipped


def test_edaic_openface_visual_and_feature_reading(edaic):
    root, _ = edaic
    dd = load_edaic(root, visual="openface")
    path = dd["train"][0]["video_files"][0]
    assert path.endswith("300_OpenFace2.1.0_Pose_gaze_AUs.csv")
    assert read_feature_file(path).shape == (EDAIC_FRAMES["openface"], 49)  # meta columns dropped, spaces stripped
    assert read_feature_file(dd["train"][0]["audio_files"][0]).shape == (EDAIC_FRAMES["audio"], 768)
    assert load_edaic(root, visual="none")["train"][0]["video_files"] == []
    resnet = load_edaic(root)["train"][0]["video_files"][0]
    assert read_feature_file(resnet).shape == (EDAIC_FRAMES["resnet"], 2048)
    with pytest.raises(ValueError, match="visual must be one of"):
        load_edaic(root, visual="vgg")


def test_edaic_missing_feature_is_a_missing_modality(edaic):
    root, _ = edaic
    remove(edaic_folder(root, "303") / "features" / "303_CNN_ResNet.mat")
    dd, report = load_edaic(root, return_report=True)
    assert all(row["video_files"] == [] for row in rows_of(dd, "303"))
    assert all(row["audio_files"] for row in rows_of(dd, "303"))
    assert any("no video feature file" in note and "303" in note for note in report.notes)


def test_edaic_rationales(edaic, tmp_path):
    root, truth = edaic
    path = tmp_path / "rationales.jsonl"
    write_rationales(
        path,
        [
            {"participant_id": "302", "item_index": 3, "item_name": "Sleep", "label": truth["302"]["items"][2],
             "rationale": "Reports waking at 4.", "teacher": "test", "prompt_version": "v1"},
        ],
    )  # fmt: skip
    dd = load_edaic(root, rationales_path=path)
    by_key = {(r["participant_id"], r["item_index"]): r["rationale"] for r in dd["train"]}
    assert by_key[("302", 3)] == "Reports waking at 4."
    assert sum(v is not None for v in by_key.values()) == 1


# Broken data: each case breaks participant 302 (train) and names what the error must mention.
def _rewrite_csv(path: Path, edit) -> None:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    edit(rows)
    write_csv(path, rows[0], rows[1:])


def _label_out_of_range(root):
    _rewrite_csv(
        root / "labels" / "Detailed_PHQ8_Labels.csv",
        lambda rows: [r.__setitem__(3, "5") for r in rows if r[0] == "302"],
    )


def _ragged_split_row(root):
    path = root / "labels" / "train_split.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(line + ",extra" if line.startswith("302,") else line for line in lines) + "\n")


def _ragged_transcript(root):
    with (edaic_folder(root, "302") / "302_Transcript.csv").open("a") as handle:
        handle.write("20.0,21.0,an unquoted, comma,0.8\n")


EDAIC_BROKEN = {
    "missing_transcript": (lambda root: remove(edaic_folder(root, "302") / "302_Transcript.csv"), {},
                           ["302_Transcript.csv", "missing file"]),
    "ragged_transcript": (_ragged_transcript, {}, ["302_Transcript.csv", "ragged", "line 6"]),
    "wrong_audio_dim": (lambda root: np.save(edaic_folder(root, "302") / "features" / "302_HuBERT.npy",
                                             np.zeros((4, 100), np.float32)), {},
                        ["302_HuBERT.npy", "wrong audio feature dimension", "768", "100"]),
    "wrong_resnet_dim": (lambda root: scipy.io.savemat(edaic_folder(root, "302") / "features" / "302_CNN_ResNet.mat",
                                                       {"feature": np.zeros((3, 4096), np.float32)}), {},
                         ["302_CNN_ResNet.mat", "wrong video feature dimension", "2048", "4096"]),
    "wrong_openface_dim": (lambda root: write_csv(
        edaic_folder(root, "302") / "features" / "302_OpenFace2.1.0_Pose_gaze_AUs.csv",
        ["frame", " timestamp", " confidence", " success", " AU01_r"], [[1, 0.0, 0.9, 1, 0.5]]),
        {"visual": "openface"}, ["302_OpenFace2.1.0_Pose_gaze_AUs.csv", "dimension", "49"]),
    "mat_without_feature_variable": (lambda root: scipy.io.savemat(
        edaic_folder(root, "302") / "features" / "302_CNN_ResNet.mat", {"other": np.zeros((2, 2048))}), {},
        ["302_CNN_ResNet.mat", "no variable 'feature'"]),
    "pickled_npy": (lambda root: np.save(edaic_folder(root, "302") / "features" / "302_HuBERT.npy",
                                         np.array([{"a": 1}], dtype=object), allow_pickle=True), {},
                    ["302_HuBERT.npy", "not a plain numeric .npy"]),
    "no_folder": (lambda root: remove(root / "data" / "302_P"), {}, ["train_split.csv", "no folder 302_P"]),
    "label_out_of_range": (_label_out_of_range, {}, ["Detailed_PHQ8_Labels.csv", "outside 0-3", "= 5"]),
    "ragged_split_row": (_ragged_split_row, {}, ["train_split.csv", "ragged"]),
    "missing_required_audio": (lambda root: remove(edaic_folder(root, "302") / "features" / "302_HuBERT.npy"),
                               {"require_audio": True}, ["302_HuBERT.npy", "missing audio feature file"]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(EDAIC_BROKEN))
def test_edaic_broken_data_raises(edaic, case):
    root, _ = edaic
    breaker, kwargs, expected = EDAIC_BROKEN[case]
    breaker(root)
    with pytest.raises(ValueError) as info:
        load_edaic(root, on_error="raise", **kwargs)
    message = str(info.value)
    assert message.startswith("participant 302: ")
    for fragment in expected:
        assert fragment in message


@pytest.mark.parametrize("case", sorted(EDAIC_BROKEN))
def test_edaic_broken_data_skips(edaic, case, caplog):
    root, _ = edaic
    breaker, kwargs, expected = EDAIC_BROKEN[case]
    breaker(root)
    with caplog.at_level(logging.WARNING, logger="mllm_dr.data"):
        dd, report = load_edaic(root, on_error="skip", return_report=True, **kwargs)
    assert all_ids(dd) == {"300", "303", "600", "601"}
    assert report.skipped_participants == ["302"]
    assert expected[0] in report.skipped[0].path + report.skipped[0].problem
    assert "skipped participant 302" in caplog.text and expected[-1] in caplog.text


def test_on_error_is_validated(edaic):
    with pytest.raises(ValueError, match="on_error"):
        load_edaic(edaic[0], on_error="ignore")


def test_missing_split_file_is_an_error(edaic):
    root, _ = edaic
    remove(root / "labels" / "dev_split.csv")
    with pytest.raises(ValueError, match=r"dev_split\.csv not found"):
        load_edaic(root, on_error="skip")


def test_detailed_lables_columns_matched_by_name(edaic):
    root, _ = edaic
    _rewrite_csv(
        root / "labels" / "detailed_lables.csv",
        lambda rows: rows[0].__setitem__(rows[0].index("PHQ8_3_Sleep"), "PHQ8_3_Slp"),
    )
    with pytest.raises(ValueError, match=r"detailed_lables.csv: expected one column per PHQ-8 item.*3 \(Sleep\)"):
        load_edaic(root)


# --------------------------------------------------------------------------------------------- DAIC-WOZ
def test_daic_rows(tmp_path):
    root = tmp_path / "daic"
    truth = write_daic(root)
    dd = load_daic_woz(root)
    for split, pids in DAIC_SPLITS.items():
        assert dd[split].column_names == COLUMNS
        assert ids(dd[split]) == set(pids) and len(dd[split]) == 8 * len(pids)
    row = dd["train"][0]
    assert row["transcript"].split("\n") == [
        "Interviewer: hi i'm ellie how are you doing today",
        "Participant: i'm fine thanks, i guess",
        "Interviewer: when was the last time you felt really happy",
        "Participant: i don't remember",
    ]
    assert row["corpus"] == "daic" and row["video_files"] == [] and row["audio_files"][0].endswith("300_HuBERT.npy")
    for r in dd["train"]:
        assert r["label"] == truth[r["participant_id"]]["items"][r["item_index"] - 1]
    assert all(label is None for label in dd["test"]["label"])  # DAIC-WOZ never released test item labels
    assert dd["test"]["total"] == [truth[p]["total"] for p in dd["test"]["participant_id"]]  # full_test_split.csv


def test_daic_broken_transcript_and_label(tmp_path):
    root = tmp_path / "daic"
    write_daic(root)
    with (root / "301_P" / "301_TRANSCRIPT.csv").open("a") as handle:
        handle.write("9.0\t10.0\tParticipant\tyes\textra\n")
    with pytest.raises(ValueError, match=r"participant 301: .*301_TRANSCRIPT.csv: ragged CSV: line 8"):
        load_daic_woz(root)
    _rewrite_csv(root / "dev_split_Depression_AVEC2017.csv", lambda rows: rows[1].__setitem__(5, "-1"))
    dd, report = load_daic_woz(root, on_error="skip", return_report=True)
    assert report.skipped_participants == ["301", "302"]
    assert "outside 0-3" in str(report.skipped[1]) and "dev_split_Depression_AVEC2017.csv" in str(report.skipped[1])
    assert all_ids(dd) == {"300", "303", "304"}


def test_edaic_and_daic_cannot_be_mixed(tmp_path, cmdc):
    edaic_dd = load_edaic(write_edaic_root(tmp_path / "edaic"))
    daic_root = tmp_path / "daic"
    write_daic(daic_root)
    daic_dd = load_corpus(daic_root, "daic-woz")
    with pytest.raises(ValueError, match=r"share 3 participant id\(s\): 300, 302, 303"):
        concatenate_corpora(edaic_dd, daic_dd)
    mixed = concatenate_corpora(edaic_dd, load_corpus(cmdc[0], "cmdc"))
    assert set(mixed["train"]["corpus"]) == {"edaic", "cmdc"}
    assert len(mixed["train"]) == len(edaic_dd["train"]) + 3 * 9
    with pytest.raises(ValueError, match="dataset_format"):
        load_corpus(daic_root, "avec")


# --------------------------------------------------------------------------------------------- CMDC
def test_cmdc_rows_mapping_and_missing_video(cmdc):
    root, truth = cmdc
    dd, report = load_cmdc(root, return_report=True)
    assert dd["train"].column_names == COLUMNS
    assert ids(dd["train"]) == {"HC01", "HC02", "MDD01"} and ids(dd["test"]) == {"HC41", "MDD21", "MDD22"}
    assert len(dd["dev"]) == 0 and dd["dev"].features == ROW_FEATURES  # authors' protocol: no dev set
    rows = {(r["participant_id"], r["item_index"]): r for split in dd.values() for r in split}
    assert len(rows) == 9 * len(CMDC_SUBJECTS)
    for (pid, item), row in rows.items():
        assert row["item_name"] == PHQ9_ITEMS[item - 1].name and row["corpus"] == "cmdc"
        assert row["label"] == truth[pid]["items"][item - 1] and row["total"] == truth[pid]["total"]
        assert row["gender"] == truth[pid]["gender"]
    item1 = rows[("HC01", 1)]
    assert item1["transcript"] == f"Q4: {cmdc_answer('HC01', 4)}\nQ6: {cmdc_answer('HC01', 6)}"
    assert [Path(p).name for p in item1["audio_files"]] == ["Q4_HuBERT.npy", "Q6_HuBERT.npy"]
    assert [Path(p).name for p in item1["video_files"]] == ["Q4.csv", "Q6.csv"]
    assert rows[("HC01", 2)]["transcript"].startswith("Q9: ") and "\nQ10: " in rows[("HC01", 2)]["transcript"]
    assert rows[("MDD21", 9)]["transcript"] == f"Q8: {cmdc_answer('MDD21', 8)}"
    whole = rows[("HC01", 3)]  # unconfirmed item: whole interview
    assert whole["transcript"].split("\n") == [f"Q{q}: {cmdc_answer('HC01', q)}" for q in range(1, CMDC_QUESTIONS + 1)]
    assert len(whole["audio_files"]) == len(whole["video_files"]) == CMDC_QUESTIONS
    # HC02: no video at all (missing modality), and its Q4 transcript is named "Q4-.txt".
    assert all(rows[("HC02", i)]["video_files"] == [] for i in range(1, 10))
    assert rows[("HC02", 1)]["transcript"].startswith(f"Q4: {cmdc_answer('HC02', 4)}")
    assert any("Q4-.txt" in note for note in report.notes)
    assert any("no video files" in note and "HC02" in note for note in report.notes)
    read = read_feature_file(item1["video_files"][0])
    assert read.shape[1] == 709


def test_cmdc_folds_are_subject_independent(cmdc):
    root, _ = cmdc
    tested: list[str] = []
    for k in range(1, 6):
        dd = load_cmdc(root, split=f"fold{k}")
        assert load_cmdc(root, fold=k)["test"]["participant_id"] == dd["test"]["participant_id"]
        train, test = ids(dd["train"]), ids(dd["test"])
        assert not train & test and train | test == set(CMDC_SUBJECTS)
        tested += sorted(test)
    assert sorted(tested) == sorted(CMDC_SUBJECTS)  # every subject tested exactly once
    carved = load_cmdc(root, dev_fraction=0.98)  # dev: the highest-numbered 98% of each group's protocol train ids
    assert ids(carved["dev"]) == {"HC02"} and ids(carved["train"]) == {"HC01", "MDD01"}
    with pytest.raises(ValueError, match="fold1"):
        load_cmdc(root, split="fold6")


def test_cmdc_protocol_sizes_on_the_full_corpus():
    subjects = [f"HC{n:02d}" for n in range(1, 53)] + [f"MDD{n:02d}" for n in range(1, 27)]
    authors = cmdc_protocol_split(subjects)
    test = sorted(s for s, v in authors.items() if v == "test")
    assert test == [f"HC{n}" for n in range(41, 53)] + [f"MDD{n}" for n in range(21, 27)]
    sizes = []
    for k in range(1, 6):
        fold = cmdc_protocol_split(subjects, f"fold{k}")
        test = [s for s, v in fold.items() if v == "test"]
        sizes.append((sum(s.startswith("HC") for s in test), sum(s.startswith("MDD") for s in test)))
    assert sizes == [(11, 6), (11, 5), (10, 5), (10, 5), (10, 5)]
    carved = cmdc_protocol_split(subjects, "authors", dev_fraction=0.1)
    assert sorted(s for s, v in carved.items() if v == "dev") == ["HC37", "HC38", "HC39", "HC40", "MDD19", "MDD20"]
    assert sum(v == "train" for v in carved.values()) == 54 and sum(v == "test" for v in carved.values()) == 18


def test_cmdc_configurable_labels_and_question_map(tmp_path):
    root = tmp_path / "cmdc"
    header = ("ID", *[f"item{i}" for i in range(1, 10)], "sum", "sex")
    truth = write_cmdc(root, labels_header=header)
    with pytest.raises(ValueError, match="no participant id column"):
        load_cmdc(root)
    # Subject ids written as "hc_1" / "mdd_21" still match the HC01 / MDD21 folders.
    _rewrite_csv(
        root / "labels.csv",
        lambda rows: [
            r.__setitem__(0, re.sub(r"(\D+)0*(\d+)", lambda m: f"{m[1].lower()}_{m[2]}", r[0])) for r in rows[1:]
        ],
    )
    assert "hc_1" in (root / "labels.csv").read_text()
    dd = load_cmdc(
        root, id_column="id", item_columns=[f"Item{i}" for i in range(1, 10)], total_column="sum",
        gender_column="sex", question_map={"3": [1, 2], "1": []},
    )  # fmt: skip
    rows = {(r["participant_id"], r["item_index"]): r for r in dd["train"]}
    assert rows[("HC01", 3)]["transcript"] == f"Q1: {cmdc_answer('HC01', 1)}\nQ2: {cmdc_answer('HC01', 2)}"
    assert rows[("HC01", 1)]["transcript"].count("\n") == CMDC_QUESTIONS - 1  # emptied: whole interview
    assert rows[("HC01", 5)]["label"] == truth["HC01"]["items"][4]
    assert corpora.load_question_map()[1] == [4, 6] and corpora.load_question_map()[9] == [8]


def test_cmdc_shipped_question_map_marks_unconfirmed_items():
    import json

    shipped = json.loads(corpora.cmdc.QUESTION_MAP.read_text(encoding="utf-8"))["items"]
    assert {k: v["questions"] for k, v in shipped.items() if v["questions"]} == {"1": [4, 6], "2": [9, 10], "9": [8]}
    assert all(v["status"] == "unconfirmed" for k, v in shipped.items() if not v["questions"])


CMDC_BROKEN = {
    "label_out_of_range": (lambda root: _rewrite_csv(root / "labels.csv", lambda rows: rows[2].__setitem__(4, "7")),
                           {}, ["labels.csv", "item label PHQ9_4 = 7 is outside 0-3"]),
    "no_label_row": (lambda root: _rewrite_csv(root / "labels.csv", lambda rows: rows.pop(2)), {},
                     ["labels.csv", "has no row in the label file"]),
    "wrong_video_dim": (lambda root: write_csv(root / "HC" / "HC02" / "Q3.csv", ["frame", "face_id", "timestamp",
                        "confidence", "success", "AU01_r"], [[1, 0, 0.0, 0.9, 1, 0.3]]), {},
                        ["Q3.csv", "wrong video feature dimension", "709"]),
    "wrong_audio_dim": (lambda root: np.save(root / "HC" / "HC02" / "Q7_HuBERT.npy", np.zeros((2, 1024), np.float32)),
                        {}, ["Q7_HuBERT.npy", "expected (frames, 768), got width 1024"]),
    "required_video": (lambda root: None, {"require_video": True}, ["Q1.csv", "missing video feature file"]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CMDC_BROKEN))
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_cmdc_broken_data(cmdc, case, on_error):
    root, _ = cmdc
    breaker, kwargs, expected = CMDC_BROKEN[case]
    breaker(root)  # every case breaks HC02 (labels.csv row 2 is HC02)
    if on_error == "raise":
        with pytest.raises(ValueError) as info:
            load_cmdc(root, **kwargs)
        assert str(info.value).startswith("participant HC02: ")
        assert all(fragment in str(info.value) for fragment in expected)
    else:
        dd, report = load_cmdc(root, on_error="skip", return_report=True, **kwargs)
        assert all_ids(dd) == set(CMDC_SUBJECTS) - {"HC02"}
        assert report.skipped_participants == ["HC02"]
        assert expected[-1] in report.summary()


# --------------------------------------------------------------------------------------------- feature files
def test_read_feature_file_formats(tmp_path):
    vector = tmp_path / "Q1.npy"
    np.save(vector, np.arange(768, dtype=np.float32))
    assert read_feature_file(vector).shape == (1, 768)  # a per-question vector is one frame
    fake_v73 = tmp_path / "x_CNN_ResNet.mat"
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116, b" ") + bytes(8) + b"\x00\x02IM"
    fake_v73.write_bytes(header + bytes(512))
    try:
        import h5py  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"x_CNN_ResNet.mat: MATLAB v7.3 \(HDF5\) file: install h5py"):
            read_feature_file(fake_v73)
        with pytest.raises(ValueError, match=r"v7\.3"):
            corpora.feature_shape(fake_v73)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text(
        "frame, timestamp, confidence, success, AU01_r, AU02_r\n1, 0, 1, 1, 0.5, 0.2\n2, 0.03, 1, 1, 0.1\n"
    )
    with pytest.raises(ValueError, match=r"ragged.csv: ragged or non-numeric CSV"):
        read_feature_file(ragged)
    (tmp_path / "x.wav").write_bytes(b"RIFF")
    with pytest.raises(ValueError, match="unsupported feature file type"):
        read_feature_file(tmp_path / "x.wav")
    with pytest.raises(ValueError, match="missing file"):
        read_feature_file(tmp_path / "absent.npy")


# --------------------------------------------------------------------------------------------- feature cache
def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_feature_cache_built_once_and_reused(edaic, tmp_path):
    root, _ = edaic
    dd = load_edaic(root)
    cache = tmp_path / "cache"
    policies = frames({"max_frames": 4}, {"frame_policy": "truncate_maxpool", "truncate_frames": 6, "pool_size": 2})
    cached = build_feature_cache(dd, cache, policies)
    assert cached["train"].column_names == [*COLUMNS, *CACHE_COLUMNS]
    files = _mtimes(cache)
    assert len(files) == 2 * len(all_ids(dd))  # one per unique source sequence, not per item
    assert not [name for name in files if name.endswith(".tmp")]
    for split in cached.values():
        for row in split:
            assert len(row["audio_files"]) == 1
            audio = read_features([row["audio_cache"]])
            assert isinstance(audio, np.memmap) and audio.dtype == np.float16
            assert audio.shape == (4, 768)  # uniform: 10 frames -> 4
            expected = apply_frame_policy(read_feature_file(row["audio_files"][0]), "uniform", 4).astype(np.float16)
            np.testing.assert_array_equal(audio, expected)
            video = read_features([row["video_cache"]])
            assert video.shape == (3, 2048)  # first 6 of 7 frames max-pooled by 2
            direct = apply_frame_policy(read_feature_file(row["video_files"][0]), "truncate_maxpool", 0, 6, 2)
            np.testing.assert_array_equal(video, direct.astype(np.float16))
            assert row["video_cache_policy"] == '{"policy": "truncate_maxpool", "pool_size": 2, "truncate_frames": 6}'
    again = build_feature_cache(dd, cache, policies)
    assert _mtimes(cache) == files  # nothing rewritten
    assert again["test"]["video_cache"] == cached["test"]["video_cache"]
    # Re-running on an already cached dataset replaces the columns instead of duplicating them.
    assert build_feature_cache(cached, cache, policies)["dev"].column_names == cached["dev"].column_names
    # Other settings or an edited source file give new cache files; the old ones stay.
    other = frames({"max_frames": 5}, {"frame_policy": "truncate_maxpool", "truncate_frames": 6, "pool_size": 2})
    build_feature_cache(dd, cache, other)
    assert len(_mtimes(cache)) == len(files) + len(all_ids(dd))
    source = Path(dd["dev"][0]["audio_files"][0])
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    rebuilt = build_feature_cache(dd, cache, policies)
    assert rebuilt["dev"][0]["audio_cache"] != cached["dev"][0]["audio_cache"]
    assert read_features([]) is None


def test_feature_cache_cmdc_concatenates_questions(cmdc, tmp_path):
    root, _ = cmdc
    dd = load_cmdc(root, split="fold1")
    policies = frames(video={"feature_dim": 709, "frame_policy": "none"})
    cached = build_feature_cache(dd, tmp_path / "cache", policies, dtype="float32")
    row = next(r for r in cached["test"] if r["participant_id"] == "HC01" and r["item_index"] == 1)
    video = read_features([row["video_cache"]])
    direct = np.concatenate([read_feature_file(p) for p in row["video_files"]])
    assert video.dtype == np.float32 and video.shape == direct.shape and video.shape[1] == 709
    np.testing.assert_array_equal(video, direct)
    hc02 = next(r for split in cached.values() for r in split if r["participant_id"] == "HC02")
    assert hc02["video_cache"] is None and hc02["video_files"] == []


def test_feature_cache_applies_the_policy_to_the_whole_sequence(cmdc, tmp_path):
    """A CMDC item's question files are concatenated first, then shortened once: the policy's frame
    budget holds for the item, however many questions it reads."""
    root, _ = cmdc
    dd = load_cmdc(root, split="fold1")
    policies = frames(video={"feature_dim": 709, "max_frames": 3})
    cached = build_feature_cache(dd, tmp_path / "cache", policies, dtype="float32")
    row = next(r for r in cached["test"] if r["participant_id"] == "HC01" and len(r["video_files"]) > 1)
    direct = np.concatenate([read_feature_file(p) for p in row["video_files"]])
    assert direct.shape[0] > 3
    np.testing.assert_array_equal(read_features([row["video_cache"]]), apply_frame_policy(direct, "uniform", 3))


def test_feature_cache_errors(edaic, tmp_path, caplog):
    root, _ = edaic
    # A ragged OpenFace CSV passes the loader's cheap header check and is caught when the cache reads it.
    with (edaic_folder(root, "600") / "features" / "600_OpenFace2.1.0_Pose_gaze_AUs.csv").open("a") as handle:
        handle.write("99, 3.3, 0.9, 1, 0.5\n")
    dd = load_edaic(root, visual="openface")
    with pytest.raises(ValueError, match=r"participant\(s\) 600: .*600_OpenFace2.1.0_Pose_gaze_AUs.csv: ragged"):
        build_feature_cache(dd, tmp_path / "cache", frames(video={"feature_dim": 49}))
    with caplog.at_level(logging.WARNING, logger="mllm_dr.data"):
        cached, report = build_feature_cache(
            dd, tmp_path / "cache", frames(video={"feature_dim": 49}), on_error="skip", return_report=True
        )
    assert report.skipped_participants == ["600"] and ids(cached["test"]) == {"601"}
    assert "600_OpenFace2.1.0_Pose_gaze_AUs.csv" in caplog.text
    np.save(edaic_folder(root, "300") / "features" / "300_HuBERT.npy", np.full((3, 768), 1e6, np.float32))
    with pytest.raises(ValueError, match="overflow float16; use dtype='float32'"):
        build_feature_cache(load_edaic(root), tmp_path / "cache2", frames())


# --------------------------------------------------------------------------------------------- synthetic corpus
def test_synthetic_corpus_loads(tmp_path):
    """The synthetic E-DAIC-layout corpus (mllm-dr-synthetic-corpus) loads cleanly and caches."""
    out = tmp_path / "synthetic"
    # Its command line, run in this process (a subprocess would import torch a second time).
    argv = ["--output_dir", str(out), "--participants", "4", "--seed", "0", "--seconds", "3"]
    assert synthetic_corpus.main(argv) == 0
    rationales = out / "rationales.jsonl"
    dd, report = load_edaic(out, rationales_path=rationales, return_report=True)
    assert not report.skipped
    assert sum(len(split) for split in dd.values()) == 8 * 4
    for split in dd.values():
        for row in split:
            assert row["transcript"] and row["label"] in (0, 1, 2, 3) and row["total"] is not None
            assert len(row["audio_files"]) == len(row["video_files"]) == 1
    assert any(row["rationale"] for row in dd["train"])
    cached = build_feature_cache(dd, tmp_path / "cache", frames({"max_frames": 16}, {"max_frames": 16}))
    assert read_features([cached["train"][0]["audio_cache"]]).shape == (16, 768)
    assert read_features([cached["train"][0]["video_cache"]]).shape == (16, 2048)
