"""Writes tiny E-DAIC-WOZ, DAIC-WOZ and CMDC folders in exactly the published layouts
(``/work/shared/reference/datasets.md``), with the real feature widths but a handful of frames.

Each writer returns the ground truth it wrote, so tests compare the loaders' rows against it.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

EDAIC_SPLITS = {"train": ["300", "302"], "dev": ["303"], "test": ["600", "601"]}
EDAIC_ITEM_SUFFIXES = ("NoInterest", "Depressed", "Sleep", "Tired", "Appetite", "Failure", "Concentrating", "Moving")
# detailed_lables.csv (sic) names two items differently and numbers them.
LABLES_ITEM_COLUMNS = (
    "PHQ8_1_NoInterest", "PHQ8_2_Depressed", "PHQ8_3_Sleep", "PHQ8_4_Tired",
    "PHQ8_5_Appetite", "PHQ8_6_Failure", "PHQ8_7_Concentration", "PHQ8_8_Psychomotor",
)  # fmt: skip
OPENFACE_EDAIC_FEATURES = (
    [f"pose_{a}" for a in ("Tx", "Ty", "Tz", "Rx", "Ry", "Rz")]
    + [f"gaze_{i}_{a}" for i in (0, 1) for a in ("x", "y", "z")]
    + ["gaze_angle_x", "gaze_angle_y"]
    + [f"AU{n:02d}_r" for n in (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)]
    + [f"AU{n:02d}_c" for n in (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 28, 45)]
)
assert len(OPENFACE_EDAIC_FEATURES) == 49
EDAIC_FRAMES = {"audio": 10, "resnet": 7, "openface": 9}


def write_csv(path: Path, header: list[str], rows: list[list[Any]], delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def edaic_transcript_lines(pid: str) -> list[str]:
    return [
        "hi i'm ellie thanks for coming in today",
        f"well, I guess, I'm participant {pid}",
        'she said "no, not really", and left',
        "i sleep badly, wake up at 4, and feel tired",
    ]


def write_edaic(
    root: Path,
    *,
    splits: dict[str, list[str]] = EDAIC_SPLITS,
    labels_dir: str = "labels",
    data_dir: str = "data",
    nested: tuple[str, ...] = (),
    detailed_lables: bool = True,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """An E-DAIC-WOZ copy; ``labels_dir``/``data_dir`` ``"."`` put labels/participants at the root and
    ``nested`` ids get ``<ID>_P/<ID>_P/``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    labels = root / labels_dir
    truth: dict[str, dict[str, Any]] = {}
    for split, ids in splits.items():
        for index, pid in enumerate(ids):
            items = [int(v) for v in rng.integers(0, 4, size=8)]
            truth[pid] = {
                "split": split,
                "items": items,
                "total": sum(items),
                "gender": "female" if index % 2 else "male",
                "lines": edaic_transcript_lines(pid),
            }
    for split, ids in splits.items():
        write_csv(
            labels / f"{split}_split.csv",
            ["Participant_ID", "Gender", "PHQ_Binary", "PHQ_Score", "PCL-C (PTSD)", "PTSD Severity"],
            [[pid, truth[pid]["gender"], int(truth[pid]["total"] >= 10), truth[pid]["total"], 0, 20] for pid in ids],
        )
    write_csv(
        labels / "Detailed_PHQ8_Labels.csv",
        ["Participant_ID"] + [f"PHQ_8{s}" for s in EDAIC_ITEM_SUFFIXES] + ["PHQ_8Total"],
        [[pid, *t["items"], t["total"]] for pid, t in truth.items() if t["split"] != "test"],
    )
    if detailed_lables:
        # Column order differs on purpose: the loader must match names, not positions.
        order = [7, 0, 3, 1, 2, 6, 4, 5]
        header = ["Participant", "gender", "age"] + [LABLES_ITEM_COLUMNS[i] for i in order]
        header += ["Depression_severity", "Depression_label", "PTSD_severity", "PTSD_label", "split", "PCL-C_1"]
        rows = [
            [pid, t["gender"], 40] + [t["items"][i] for i in order]
            + [t["total"], int(t["total"] >= 10), 20, 0, t["split"], 1]
            for pid, t in truth.items()
        ]  # fmt: skip
        write_csv(labels / "detailed_lables.csv", header, rows)
    for pid, t in truth.items():
        folder = root / data_dir / f"{pid}_P"
        if pid in nested:
            folder = folder / f"{pid}_P"
        write_csv(
            folder / f"{pid}_Transcript.csv",
            ["Start_Time", "End_Time", "Text", "Confidence"],
            [[f"{i * 2.5:.1f}", f"{i * 2.5 + 2:.1f}", line, 0.93] for i, line in enumerate(t["lines"])],
        )
        features = folder / "features"
        features.mkdir(parents=True, exist_ok=True)
        np.save(features / f"{pid}_HuBERT.npy", rng.standard_normal((EDAIC_FRAMES["audio"], 768)).astype(np.float32))
        scipy.io.savemat(
            features / f"{pid}_CNN_ResNet.mat",
            {"feature": rng.random((EDAIC_FRAMES["resnet"], 2048)).astype(np.float32)},
        )
        frames = EDAIC_FRAMES["openface"]
        openface = rng.standard_normal((frames, 49)).round(4)
        write_csv(
            features / f"{pid}_OpenFace2.1.0_Pose_gaze_AUs.csv",
            ["frame"] + [f" {c}" for c in ["timestamp", "confidence", "success", *OPENFACE_EDAIC_FEATURES]],
            [[i + 1, round(i / 30, 3), 0.98, 1, *openface[i]] for i in range(frames)],
        )
        (folder / f"{pid}_AUDIO.wav").write_bytes(b"RIFF")  # present in the release; never read
    return truth


def edaic_folder(root: Path, pid: str, data_dir: str = "data") -> Path:
    folder = root / data_dir / f"{pid}_P"
    while (folder / folder.name).is_dir():
        folder = folder / folder.name
    return folder


# --------------------------------------------------------------------------------------------- DAIC-WOZ
DAIC_SPLITS = {"train": ["300", "301"], "dev": ["302"], "test": ["303", "304"]}
DAIC_TURNS = [
    ("Ellie", "hi i'm ellie"),
    ("Ellie", "how are you doing today"),
    ("Participant", "i'm fine"),
    ("Participant", "thanks, i guess"),
    ("Ellie", "when was the last time you felt really happy"),
    ("Participant", "i don't remember"),
]


def write_daic(root: Path, *, splits: dict[str, list[str]] = DAIC_SPLITS, seed: int = 1) -> dict[str, dict[str, Any]]:
    """A DAIC-WOZ copy: ``<ID>_P/<ID>_TRANSCRIPT.csv`` (tab-separated) and the AVEC2017 label files at the root."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    truth: dict[str, dict[str, Any]] = {}
    for split, ids in splits.items():
        for pid in ids:
            items = [int(v) for v in rng.integers(0, 4, size=8)]
            truth[pid] = {"split": split, "items": items, "total": sum(items), "gender": str(int(pid) % 2)}
    item_header = [f"PHQ8_{s}" for s in EDAIC_ITEM_SUFFIXES]
    for split in ("train", "dev"):
        write_csv(
            root / f"{split}_split_Depression_AVEC2017.csv",
            ["Participant_ID", "PHQ8_Binary", "PHQ8_Score", "Gender", *item_header],
            [[pid, int(truth[pid]["total"] >= 10), truth[pid]["total"], truth[pid]["gender"], *truth[pid]["items"]]
             for pid in splits[split]],
        )  # fmt: skip
    write_csv(
        root / "test_split_Depression_AVEC2017.csv",
        ["participant_ID", "Gender"],
        [[pid, truth[pid]["gender"]] for pid in splits["test"]],
    )
    write_csv(
        root / "full_test_split.csv",
        ["Participant_ID", "PHQ_Binary", "PHQ_Score", "Gender"],
        [[pid, int(truth[pid]["total"] >= 10), truth[pid]["total"], truth[pid]["gender"]] for pid in splits["test"]],
    )
    for pid in truth:
        folder = root / f"{pid}_P"
        rows = [[f"{i * 1.5:.2f}", f"{i * 1.5 + 1:.2f}", speaker, text] for i, (speaker, text) in enumerate(DAIC_TURNS)]
        write_csv(
            folder / f"{pid}_TRANSCRIPT.csv", ["start_time", "stop_time", "speaker", "value"], rows, delimiter="\t"
        )
        (folder / "features").mkdir()
        np.save(folder / "features" / f"{pid}_HuBERT.npy", rng.standard_normal((5, 768)).astype(np.float32))
    return truth


# --------------------------------------------------------------------------------------------- CMDC
CMDC_SUBJECTS = ["HC01", "HC02", "HC41", "MDD01", "MDD21", "MDD22"]
CMDC_NO_VIDEO = ("HC02",)
CMDC_IRREGULAR = {"HC02": {"Q4.txt": "Q4-.txt"}}  # the release has a few clip names with a trailing "-"
CMDC_META = ["frame", "face_id", "timestamp", "confidence", "success"]
CMDC_QUESTIONS = 12


def cmdc_answer(subject: str, question: int) -> str:
    return f"{subject} 对第{question}个问题的回答。"


def write_cmdc(
    root: Path,
    *,
    subjects: list[str] = CMDC_SUBJECTS,
    no_video: tuple[str, ...] = CMDC_NO_VIDEO,
    irregular: dict[str, dict[str, str]] = CMDC_IRREGULAR,
    labels_header: tuple[str, ...] = ("subject_id", *[f"PHQ9_{i}" for i in range(1, 10)], "PHQ9_Total", "gender"),
    seed: int = 2,
) -> dict[str, dict[str, Any]]:
    """A CMDC copy: ``HC/HCxx`` and ``MDD/MDDxx`` with per-question ``Q<n>.txt``, ``Q<n>_HuBERT.npy``,
    OpenFace ``Q<n>.csv`` (714 columns; not for subjects in ``no_video``) and ``labels.csv`` at the root."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    truth: dict[str, dict[str, Any]] = {}
    openface_header = CMDC_META + [f" f{i}" for i in range(709)]
    for subject in subjects:
        group = "HC" if subject.startswith("HC") else "MDD"
        folder = root / group / subject
        folder.mkdir(parents=True)
        items = [int(v) for v in rng.integers(0, 4, size=9)]
        truth[subject] = {"items": items, "total": sum(items), "gender": "F" if len(truth) % 2 else "M"}
        renames = irregular.get(subject, {})
        for q in range(1, CMDC_QUESTIONS + 1):
            (folder / renames.get(f"Q{q}.txt", f"Q{q}.txt")).write_text(cmdc_answer(subject, q), encoding="utf-8")
            (folder / f"Q{q}.wav").write_bytes(b"RIFF")
            np.save(folder / renames.get(f"Q{q}_HuBERT.npy", f"Q{q}_HuBERT.npy"),
                    rng.standard_normal((2 + q % 3, 768)).astype(np.float32))  # fmt: skip
            if subject not in no_video:
                frames = 2 + q % 2
                values = rng.standard_normal((frames, 709)).round(3)
                rows = [[i, 0, round(i / 25, 2), 0.9, 1, *values[i]] for i in range(frames)]
                write_csv(folder / renames.get(f"Q{q}.csv", f"Q{q}.csv"), openface_header, rows)
    write_csv(
        root / "labels.csv",
        list(labels_header),
        [[s, *t["items"], t["total"], t["gender"]] for s, t in truth.items()],
    )
    return truth


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
