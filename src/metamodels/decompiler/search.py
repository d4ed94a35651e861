"""Verified decompilation: candidate programs from the meta-model, checked against the input
model itself (issue 13 part 1; no published decompiler checks its answers).

The meta-model's grammar-constrained beam search (:func:`metamodels.decompiler.decode.ranked`)
gives up to ``decompiler.search.candidates`` programs per model, best first. Each is
evaluated with the vectorised RASP evaluator and compared with the *input model's* decoded
outputs (its own forward pass, :func:`metamodels.zoo.stage.model_output`) on the
verification inputs, by the zoo's rule (:func:`metamodels.zoo.stage.verify`): the whole
input domain when it has at most ``verify.exhaustive_limit`` inputs, else
``verify.samples`` sampled inputs plus the structured ones; RASP's None positions are not
compared, numerical outputs match within ``verify.atol``, and at least
``verify.min_compared`` of the positions must be compared. Only the forward pass is needed,
so this works on every variant (rotated, PCA, distilled students) as on compiled models.

The first candidate that passes is returned as **verified**, with a certificate (inputs and
positions checked, its rank, candidates tried, seconds). When none passes within the budget
the best-scoring candidate is returned, marked **unverified**. For compiled (``standard``)
models the verified program is also recompiled, and the certificate says whether its
weights are bitwise identical to the input's.

A cheap probe (a few inputs of each length) rejects most wrong candidates before the full
check; it can only reject a candidate that the full check would reject too.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Mapping, Sequence

import numpy as np

from metamodels.rasp.tokenizer import Vocab

__all__ = ["Checker", "Result", "is_exact", "search", "summarize", "seconds_per_model",
           "verification_inputs", "weights_identical"]

PROBE_PER_LENGTH = 8


@dataclasses.dataclass
class Result:
    """What the verified search says about one model.

    ``tokens``: the program, BOS..EOS (the verified candidate, or the best guess);
    ``verified``: whether it passed; ``rank``: its 1-based rank among the candidates (best
    first); ``tried``: candidates checked; ``candidates``: finished candidates the beam
    search gave; ``inputs`` / ``positions``: inputs and output positions the verified
    program was compared on (0 when unverified); ``exhaustive``: the inputs are the whole
    domain; ``seconds``: wall time of the search for this model (its share of decoding
    included); ``identical_weights``: recompiling the verified program gives the input's
    weights bit for bit (None when not asked or not verified); ``reason``: why unverified.
    """

    tokens: list[str]
    verified: bool
    rank: int | None
    tried: int
    candidates: int
    inputs: int
    positions: int
    exhaustive: bool
    seconds: float
    identical_weights: bool | None = None
    reason: str | None = None

    def certificate(self, timing: bool = True) -> dict:
        """Every field but ``tokens``; without ``timing`` also without ``seconds`` (the
        pipeline's outputs are bitwise reproducible, wall times are not)."""
        drop = {"tokens"} | (set() if timing else {"seconds"})
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in drop}


class Checker:
    """The input model's decoded outputs on the verification inputs, computed once, and
    :meth:`check` of candidate programs against them.

    ``model``: a :class:`metamodels.zoo.compiler.CompiledModel` (any variant);
    ``inputs``: the verification inputs, one (n, L) array per length
    (:func:`metamodels.rasp.sampler.domain`); ``verify``: the ``verify`` params section
    (``atol``, ``min_compared``); ``exhaustive``: whether ``inputs`` are the whole domain.
    """

    def __init__(self, model, inputs: Sequence[np.ndarray], verify: Mapping, exhaustive: bool):
        from metamodels.zoo.stage import model_output
        self.model = model
        self.inputs = [np.asarray(x) for x in inputs]
        self.outputs = [model_output(model, x) for x in self.inputs]
        self.atol, self.min_compared = float(verify["atol"]), float(verify["min_compared"])
        self.exhaustive = bool(exhaustive)
        picks = [np.unique(np.linspace(0, len(x) - 1, PROBE_PER_LENGTH).astype(int))
                 for x in self.inputs]
        self.probe_inputs = [x[i] for x, i in zip(self.inputs, picks)]
        self.probe_outputs = [o[i] for o, i in zip(self.outputs, picks)]

    def check(self, expr) -> dict:
        """:func:`metamodels.zoo.stage.verify`'s record of program ``expr`` (a RASP SOp)
        against the model; ``passed`` is False with a ``reason`` for a program of the other
        output encoding, one the evaluator cannot run, or one the probe already rejects."""
        from tracr.rasp import rasp

        from metamodels.zoo.stage import verify
        if rasp.is_categorical(expr) != bool(self.model.categorical_output):
            return {"passed": False, "reason": "output encoding differs from the model's"}
        try:
            probe = verify(self.model, expr, self.probe_inputs, self.atol, 0.0,
                           outputs=self.probe_outputs)
            if probe["mismatched_positions"]:
                return dict(probe, passed=False, reason="differs on the probe inputs")
            return verify(self.model, expr, self.inputs, self.atol, self.min_compared,
                          outputs=self.outputs)
        except Exception as e:  # noqa: BLE001 - a candidate RASP cannot evaluate is rejected
            return {"passed": False, "reason": f"RASP evaluation failed: {e}"}


def search(checker: Checker, sequences: np.ndarray, scores: np.ndarray, vocab: Vocab,
           seconds: float | None = None, recompile: Mapping | None = None,
           decode_seconds: float = 0.0) -> Result:
    """Walk the ranked candidates of one model (``sequences`` (K, T) token ids, ``scores``
    (K,), best first, as :func:`metamodels.decompiler.decode.ranked` gives them) until one
    verifies, the candidates run out, or ``seconds`` (None: no limit) have passed.

    ``recompile``: ``{"vocab", "max_seq_len", "mlp_exactness"}`` to recompile a verified
    program and compare its weights with the input model's (compiled models only).
    ``decode_seconds``: this model's share of the beam search, added to ``seconds`` of the
    result. Deterministic when ``seconds`` is None.
    """
    from metamodels.decompiler.metrics import strip
    from metamodels.rasp.program import to_rasp
    from metamodels.rasp.tokenizer import decode as decode_tokens
    t0 = time.perf_counter()
    finished = [i for i in range(len(scores)) if np.isfinite(scores[i])]
    best = strip(vocab.strs(sequences[finished[0] if finished else 0].tolist()))
    tried, reason = 0, "no candidate finished within max_program_tokens"
    for rank, i in enumerate(finished, 1):
        if seconds is not None and time.perf_counter() - t0 > seconds:
            reason = f"the search budget (decompiler.search.seconds={seconds}) ran out"
            break
        tried += 1
        tokens = strip(vocab.strs(sequences[i].tolist()))
        try:
            expr = to_rasp(decode_tokens(tokens, vocab.tables), vocab.tables)
        except Exception:  # noqa: BLE001 - a malformed candidate is skipped
            continue
        rec = checker.check(expr)
        if rec["passed"]:
            same = _recompiles_identically(expr, checker.model, recompile) if recompile else None
            return Result(tokens, True, rank, tried, len(finished), rec["inputs"],
                          rec["positions"] - rec["none_positions"], checker.exhaustive,
                          time.perf_counter() - t0 + decode_seconds, same, None)
    else:
        if finished:
            reason = f"none of the {len(finished)} candidates matches the model's outputs"
    return Result(best, False, None, tried, len(finished), 0, 0, checker.exhaustive,
                  time.perf_counter() - t0 + decode_seconds, None, reason)


def weights_identical(a, b) -> bool:
    """Two CompiledModels have the same weights bit for bit: the same layout (array names
    and shapes) and the same flat float32 bytes, which is all a meta-model reads. (Their
    encoders' value tables may differ.)"""
    return a.layout() == b.layout() and a.flat().tobytes() == b.flat().tobytes()


def _recompiles_identically(expr, model, recompile: Mapping) -> bool:
    from metamodels.zoo.compiler import compile_program
    try:
        again = compile_program(expr, set(recompile["vocab"]), int(recompile["max_seq_len"]),
                                mlp_exactness=recompile["mlp_exactness"])
    except Exception:  # noqa: BLE001 - tracr refuses it: not the input's weights
        return False
    return weights_identical(again, model)


def verification_inputs(domain: Mapping, params: Mapping) -> tuple[list[np.ndarray], bool]:
    """(inputs, exhaustive) for a model of input ``domain`` (``vocab``, ``max_seq_len``), by
    the zoo's rule (``verify`` section; sampled inputs are seeded by ``zoo.seed``, as the
    zoo's own verification inputs are)."""
    from metamodels.rasp.sampler import domain as domain_inputs
    from metamodels.rasp.sampler import domain_size
    v = params["verify"]
    inputs = domain_inputs(domain["vocab"], domain["max_seq_len"], v["exhaustive_limit"],
                           v["samples"], np.random.SeedSequence(entropy=params["zoo"]["seed"],
                                                                spawn_key=(2 ** 31,)))
    return inputs, domain_size(domain["vocab"], domain["max_seq_len"]) <= v["exhaustive_limit"]


def summarize(results: Sequence[Result], exact: Sequence[bool], lengths: Sequence[int]) -> dict:
    """The verified search's test metrics: ``verified_accuracy`` (a verified program found),
    ``verified_exact`` (of the verified programs, the share equal to the label token for
    token), ``rank_histogram`` ({rank: count} of verified programs), and ``by_length``
    {length: {programs, verified_accuracy}}. Deterministic: wall times are left to
    :func:`seconds_per_model`."""
    n = len(results)
    ver = [r.verified for r in results]
    ranks: dict[str, int] = {}
    for r in results:
        if r.verified:
            ranks[str(r.rank)] = ranks.get(str(r.rank), 0) + 1
    by_len: dict[str, dict] = {}
    for r, length in zip(results, lengths):
        e = by_len.setdefault(str(int(length)), {"programs": 0, "verified": 0})
        e["programs"] += 1
        e["verified"] += int(r.verified)
    same = [r.identical_weights for r in results if r.identical_weights is not None]
    return {
        "verified_accuracy": float(np.mean(ver)) if n else 0.0,
        "verified_exact": (float(np.mean([e for e, v in zip(exact, ver) if v]))
                           if any(ver) else 0.0),
        "verified_identical_weights": float(np.mean(same)) if same else None,
        "rank_histogram": dict(sorted(ranks.items(), key=lambda kv: int(kv[0]))),
        "by_length": {k: {"programs": e["programs"],
                          "verified_accuracy": e["verified"] / e["programs"]}
                      for k, e in sorted(by_len.items(), key=lambda kv: int(kv[0]))},
    }


def is_exact(result: Result, target: Sequence[str]) -> bool:
    """The result's program equals ``target`` (BOS..EOS tokens) token for token."""
    from metamodels.decompiler.metrics import strip
    return result.tokens == strip(list(target))


def seconds_per_model(results: Sequence[Result]) -> dict:
    """Wall seconds of the search per model: ``{"mean", "max"}`` (for timing logs)."""
    secs = [r.seconds for r in results]
    return {"mean": round(float(np.mean(secs)), 3) if secs else 0.0,
            "max": round(float(np.max(secs)), 3) if secs else 0.0}
