#!/usr/bin/env python
"""Token lengths of E-DAIC-like interview transcripts against the transcript budget (issue 14).

Writes synthetic E-DAIC corpora whose interviews have more and more answer turns (up to the length
of a 20-minute session), reads the transcripts through the E-DAIC loader, and counts their tokens
with the SmolLM2 tokenizer (the only real one on this machine; LLaMA-3's 128k-entry BPE gives fewer
tokens per word, so these counts are an upper side). For each budget (the demo's 1,536, the
authors' ~2,800, the paper preset's on an 8,192 window) it reports how many transcripts are cut.

    python benchmarks/transcript_lengths.py     # ~1 minute on 2 CPU cores

Writes ``benchmarks/results/transcript_lengths.json``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from configuration_mllm_dr import transcript_budget
from mllm_dr.data import load_corpus
from mllm_dr.synthetic import make_synthetic_corpus

from _common import git_commit, machine_facts, markdown_table, result_path, smollm2_backbone, write_json

TURNS = (12, 40, 80, 120, 160)  # answers per interview; E-DAIC sessions run 7-33 minutes
BUDGETS = {"demo (1,536)": 1536, "authors (~2,800)": 2800, "paper preset, 8k window": transcript_budget(8192, "paper")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=12)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_backbone())
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for turns in TURNS:
            root = Path(scratch) / f"turns{turns}"
            make_synthetic_corpus(root, participants=args.participants, seed=0, seconds=1.0, turns=turns)
            corpus = load_corpus(root, "edaic")
            transcripts = {}
            for split in corpus.values():
                for pid, text in zip(split["participant_id"], split["transcript"], strict=True):
                    transcripts[pid] = text
            lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in transcripts.values()]
            words = [len(text.split()) for text in transcripts.values()]
            row = {"turns": turns, "participants": len(lengths), "words_mean": statistics.mean(words),
                   "tokens_mean": statistics.mean(lengths), "tokens_max": max(lengths)}  # fmt: skip
            for name, budget in BUDGETS.items():
                row[f"cut at {name}"] = sum(length > budget for length in lengths) / len(lengths)
            rows.append(row)
            print(row, flush=True)
    from datetime import date

    result = {"command": "python benchmarks/transcript_lengths.py", "date": date.today().isoformat(),
              "git_commit": git_commit(), "machine": machine_facts(), "budgets": BUDGETS, "rows": rows}  # fmt: skip
    write_json(result_path("transcript_lengths", False, None), result)
    headers = list(rows[0])
    print(markdown_table(headers, [[row[h] for h in headers] for row in rows]))


if __name__ == "__main__":
    main()
