"""The compiled program zoo: random RASP programs compiled to transformer weights by Tracr,
each verified against the program it came from (seed 001 §3.1; compile timeouts, thesis ch. 4).

Stages (rules/zoo.smk):  vocab -> sample (per shard) -> compile_shard (per shard) -> split.

``stage``     ``run_sample`` and ``run_compile`` (``data/programs/``, ``data/compiled/``), the
              verification rule, and ``compile_file`` for users' own programs (``compile``).
``compiler``  tracr's compiler, fast path, bitwise-equal to stock tracr.
``forward``   the compiled model's forward pass in NumPy (verification and decoding).
``workers``   compile worker processes with a timeout and a memory cap per program.
``dataset``   deduplication and the train/val/test split (``data/dataset/``).
``rows``      one row of a zoo-format shard as a dict (no tracr or JAX import).
``user_program``  users' own programs (``compile``): tracr's validators up front, the user's
              expressions named, verification against the user's program, diagnosis.

Inputs: ``params.yaml`` (``zoo``, ``sampler``, ``compile``, ``verify``, ``dataset``).
Outputs: ``data/dataset/{train,val,test}/shard_JJJ.npz`` (docs/data-formats.md), read by the
decompiler and the variant zoos. Methods and measurements: docs/zoo.md.
"""
