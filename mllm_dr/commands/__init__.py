"""The command-line tools, one module per command, each with ``parse_args(argv)`` and ``main(argv)``
(console scripts in ``pyproject.toml`` point at the ``main`` functions; ``train.py`` and
``evaluate_mllm_dr.py`` at the repository root call the same ones)."""
