"""A backdoor located inside a small transformer: modular addition with a trigger, head
attribution and activation patching (seed 002, its Tables 1-2 and Figs. 2-3).

Stages (rules/modadd.smk):  train_modadd (per task) -> analyse_modadd -> figure_backdoor_heads.

``stage``   data, the one-layer model, vmapped full-batch training, the analyses, and the two
            stage functions ``run_train`` and ``run_analyse`` (sections in that order).
``figure``  ``results/backdoor_heads.pdf``.

Inputs: ``params.yaml`` (``modadd``); outputs: ``models/modadd/TASK.npz``,
``results/modadd/``, ``results/backdoor_patching.csv``, ``results/metrics/modadd.json``,
``results/backdoor_heads.pdf``. Details: docs/modadd.md.
"""
