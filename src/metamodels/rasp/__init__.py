"""RASP programs as data: the ground truth that every program-zoo experiment recovers.

Seed 001 §3.1 (rasp-gen sampling and filtering) and seed 000 Fig. 17 / Table 2 (the lambda
and predicate tables); canonical, depth-ordered programs from the thesis (003) ch. 5.

``program``    a program as a list of ops; conversion to and from tracr's ``rasp``, canonical
               form, value sets, tracr's layer allocation.
``lambdas``    the Map/SequenceMap lambda and Select predicate tables.
``sampler``    random programs, filtered by their dynamic behaviour on the input domain.
``evaluator``  a vectorised RASP evaluator (every input of the domain at once).
``tokenizer``  programs as token sequences (fused SelectAggregate, EOO/EOL markers).
``grammar``    the token grammar, for constrained decoding of well-formed programs.

Inputs: ``params.yaml`` (``zoo``, ``sampler``); outputs: plain data, used by ``zoo`` and
``decompiler``. No stage of its own.
"""
