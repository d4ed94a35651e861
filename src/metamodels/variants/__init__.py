"""De-sparsified and distilled program zoos, and the decompiler on each (seed 001 §3.2;
compressed and natural students of the thesis, 003 ch. 6-7).

Stages (rules/variants.smk):  variant_shard (per variant, split, shard) ->
train_variant_decompiler -> evaluate_variant_decompiler (per variant) -> variants_report
-> figure_variants.

``stage``       ``run_variant`` (one variant shard in the zoo's format) and ``run_report``.
``desparsify``  a residual basis change folded into the weights: random rotation, PCA.
``distill``     compressed and natural students trained to match the compiled teacher.
``figure``      ``results/figure_variants.pdf``.

Inputs: ``data/dataset/``; outputs: ``data/variants/VARIANT/``, ``results/variants.csv``,
``results/metrics/variants.json``, ``results/figure_variants.pdf``. Details: docs/variants.md.
"""
