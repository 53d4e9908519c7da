"""What only the workflow needs: the Snakefile's reading of params.yaml (``config``), what the rules
know of the methods without importing them (``catalog``, cached by ``parsecache``), each step's
code hash (``codeversion``) and `flyp sync` after `dvc pull` (``sync``).

The core library (models, data, methods, training, evaluation) imports nothing from here
(tests/test_layout.py), so that it can be used, and reasoned about, without the workflow.
"""
