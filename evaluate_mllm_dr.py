#!/usr/bin/env python
"""Evaluates an MLlm-DR checkpoint: ``python evaluate_mllm_dr.py ...``.

The same command as the console script ``mllm-dr-evaluate`` (``mllm_dr.commands.evaluate.main``);
run ``python evaluate_mllm_dr.py --help`` for every flag.

    python evaluate_mllm_dr.py --model runs/s2 --data_dir CORPUS --dataset_format edaic --split test --output_dir runs/eval
    python evaluate_mllm_dr.py --zero_shot --model BACKBONE ...          # the untrained backbone, same prompts
    python evaluate_mllm_dr.py --train_mean --data_dir CORPUS ...        # each item's training-set mean
    python evaluate_mllm_dr.py --aggregate runs/eval1 runs/eval2 ...     # a Table-11-style summary
"""

import sys

from mllm_dr.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
