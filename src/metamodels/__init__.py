"""metamodels: model zoos with known ground truth, and meta-models that read weights.

One package per experiment, each with its stages (``stage.py``), its figure and its verbs
(``cli.py``); ``rules/<package>.smk`` runs them:

``rasp``        RASP programs as data (sampler, evaluator, tokens, grammar)
``zoo``         the compiled, verified program zoo
``decompiler``  weights -> program meta-model, seed 001 Fig. 3
``variants``    de-sparsified and distilled zoos, the decompiler on each
``backdoor``    CNN zoo with backdoors and the detector, seed 000 Fig. 2
``modadd``      modular-addition backdoor heads, seed 002
``core``        what every stage shares: params schema, file format, DVC, plotting, nn
"""

__version__ = "0.1.0"
