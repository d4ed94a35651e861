"""What every experiment's stages share; nothing here knows about one experiment.

``config``      params.yaml: the JSON schema (``schemas/params.schema.yaml``), cross-field
                rules, and the per-rule parameter sections that drive Snakemake's reruns.
``shards``      the data-file format: atomic writes, pickle-free ``.npz`` and JSON
                (docs/data-formats.md).
``versioning``  ``dvc.yaml`` generated from the Snakemake DAG (every output versioned by DVC).
``nn``          the transformer block, compute dtype and AdamW schedule of every meta-model.
``plotting``    matplotlib without a display; PDFs whose bytes depend only on what was drawn.
``cli``         ``--params``/``--config`` for every verb, and check-params, dvc-yaml, dvc-stages.
"""
