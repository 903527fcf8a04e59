#!/usr/bin/env python
"""Two-stage MLlm-DR training: ``python train.py ...`` or ``accelerate launch train.py ...``.

The same command as the console script ``mllm-dr-train`` (``mllm_dr.commands.train.main``); run
``python train.py --help`` for every flag.

    # stage 1: LLM frozen, LQ-formers learn to make it say "Score: N" from the features alone
    python train.py --stage 1 --backbone BACKBONE --data_dir CORPUS --dataset_format edaic --output_dir runs/s1
    # stage 2: LQ-formers frozen, LoRA (q_proj, v_proj) + MAA head on rationale + score targets
    python train.py --stage 2 --init_from runs/s1 --data_dir CORPUS --dataset_format edaic \\
        --rationales CORPUS/rationales.jsonl --output_dir runs/s2
"""

import sys

from mllm_dr.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
