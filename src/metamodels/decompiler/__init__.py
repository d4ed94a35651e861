"""The decompiler meta-model: compiled weights in, RASP program out (seed 001 §3, Fig. 3;
TraDe's encoder-decoder and metrics, paper 004).

Stages (rules/decompiler.smk):  tokenize (per shard) -> train_decompiler -> evaluate_decompiler
-> figure3.

``stage``        ``run_train``, ``run_evaluate``, model files, ``decompile_file`` (``decompile``).
``weights``      weights as input tokens (chunked or per-residual-row, symlog; seed 001 App. B.2).
``tokens``       ``tokenize`` (token shards) and ``TokenStore``: examples read row by row from
                 disk, so memory does not grow with the zoo.
``batches``      examples in memory, length buckets, the seeded order of training batches.
``transformer``  the Flax model (prefix LM of seed 001, or encoder-decoder of TraDe).
``train``        ``train_and_evaluate(cfg, workdir, ...)``: the training loop, Orbax resume.
``decode``       greedy and beam decoding, grammar-constrained.
``metrics``      exact, functionally equivalent and well-formed programs.
``figure``       ``results/figure3.pdf``.

Inputs: ``data/dataset/`` (tokenized into ``data/tokens/dataset/``); outputs: ``models/decompiler.npz``, ``results/decompiler/``,
``results/metrics/decompiler.json``, ``results/figure3.pdf``. Details: docs/decompiler.md.
"""
