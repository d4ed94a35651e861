"""Backdoor detection from weights: a zoo of clean and poisoned CNNs and a meta-model that
tells them apart (seed 000 §3.1, Fig. 2; CNN of its App. A, Fig. 6).

Stages (rules/backdoor.smk):  cnn_zoo_shard (per shard) -> detect_backdoors (per setting)
-> backdoor_report -> figure2.

``stage``     ``run_zoo_shard``, ``run_detect``, ``run_report``; the zoo shard format.
``images``    image sets read from local files: Fashion-MNIST (IDX), CIFAR-10 (binary).
``poisons``   the triggers: patches, blends, and out-of-distribution patches.
``cnn``       the base CNN, many trained at once.
``detector``  the meta-model over chunks of flattened weights (permutation augmentation)
              and the weight-statistics baseline.
``figure``    ``results/figure2.pdf``.

Inputs: ``params.yaml`` (``images``, ``cnn_zoo``, ``detector``); outputs: ``data/cnn_zoo/``,
``results/backdoor/``, ``results/metrics/backdoor.json``, ``results/figure2.pdf``.
Details: docs/backdoor.md.
"""
