"""Stage 1: sample random RASP programs of a requested length.

The sampler grows a program op by op from ``tokens`` and ``indices``
(shared/papers/001 §3.1, 000 App. D.1, 003 ch. 4, 004 §2), picking each op's
kind by ``sampler.op_weights`` and its operands from the variables in scope,
with operands that nothing consumes yet (``unused``) weighted up. It hits the
requested length by construction: at step k of n, an op must consume enough
unused variables that the remaining n-k ops can still join everything into one
output, and the last op consumes all that remain — so no op is dead and the
pruned length is exactly n. Ops are type-checked against what tracr compiles
(Select operands categorical; SequenceMap categorical; LinearSequenceMap
numerical; numerical Aggregate only over 0/1 values), their lambdas rewritten
to a canonical representative of their behaviour class as they are created,
and ops that would be constant, the identity, duplicates, have too many
values, or — for a categorical Aggregate — be mostly None or average values
(tracr's dynamic validator, checked on the input domain) are resampled. A
construction that paints itself into a corner restarts (``dead_end``).

Whole programs are then filtered on the input domain: tracr's static
validator, not reading tokens, evaluation errors, constant output, identity,
mostly-None output, duplicates. Every rejection is counted by reason.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import itertools
from typing import Mapping, Sequence

import numpy as np
from tracr.compiler import validating

from metamodels.rasp import evaluator as E
from metamodels.rasp import lambdas as L
from metamodels.rasp.program import (
    CAT,
    KINDS,
    NUM,
    Op,
    Program,
    canonical_fn,
    canonicalize,
    op_signature,
    op_value_set,
    prune,
    subprogram,
    to_rasp,
)
from metamodels.rasp.tokenizer import encode


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    vocab: tuple
    max_seq_len: int
    min_length: int
    max_length: int
    map_constants: tuple
    op_weights: Mapping[str, float]
    p_numerical: float
    unused_weight: float
    max_value_set: int
    max_tries_per_op: int
    max_none_fraction: float
    exhaustive_limit: int
    eval_samples: int

    @classmethod
    def from_params(cls, params: Mapping) -> "SamplerConfig":
        z, s, v = params["zoo"], params["sampler"], params["verify"]
        return cls(vocab=tuple(z["vocab"]), max_seq_len=z["max_seq_len"],
                   min_length=s["min_length"], max_length=s["max_length"],
                   map_constants=tuple(s["map_constants"]),
                   op_weights=dict(s["op_weights"]), p_numerical=s["p_numerical"],
                   unused_weight=s["unused_weight"], max_value_set=s["max_value_set"],
                   max_tries_per_op=s["max_tries_per_op"],
                   max_none_fraction=s["max_none_fraction"],
                   exhaustive_limit=v["exhaustive_limit"], eval_samples=v["samples"])


class _DeadEnd(Exception):
    pass


def _pick(rng: np.random.Generator, items: Sequence, weights: Sequence[float]):
    """One item with probability proportional to its weight (one uniform draw)."""
    cum = list(itertools.accumulate(weights))
    i = bisect.bisect_right(cum, rng.random() * cum[-1])
    return items[min(i, len(items) - 1)]


def construct(rng: np.random.Generator, cfg: SamplerConfig, tables: L.Tables,
              length: int, inputs: list[np.ndarray], *,
              canonical_fns: bool = True) -> tuple[Program, int]:
    """Build a program of exactly `length` ops (all ancestors of the output).

    Returns the program and how many of its lambdas/predicates were rewritten
    to their behaviour-class representative. Raises _DeadEnd when stuck.
    The first op reads ``tokens`` (tracr needs it; all ops are ancestors of
    the output). Variables that take the value None somewhere on `inputs` (a
    categorical Aggregate that selects nothing, and what is computed from it)
    are kept out of Selects and Aggregates, where rasp cannot compare or
    average None. With ``canonical_fns=False`` ops keep the lambda they were
    drawn with (for testing canonicalisation).
    """
    vs: dict[str, set] = {"tokens": set(cfg.vocab), "indices": set(range(cfg.max_seq_len))}
    enc: dict[str, str] = {"tokens": CAT, "indices": CAT}
    has_none: dict[str, bool] = {"tokens": False, "indices": False}
    order: list[str] = ["tokens", "indices"]  # variables in scope, creation order
    unused: list[str] = []
    ops: list[Op] = []
    signatures: set = set()
    rewrites = 0
    kinds = [k for k in KINDS if cfg.op_weights.get(k, 0) > 0]
    kind_w = [cfg.op_weights[k] for k in kinds]

    for k in range(length):
        remaining = length - 1 - k
        must = max(0, len(unused) - remaining)  # unused args this op must consume
        for _ in range(cfg.max_tries_per_op):
            kind = _pick(rng, kinds, kind_w)
            op = _propose(rng, cfg, tables, kind, f"t{k}", order, enc, vs, unused, must,
                          has_none)
            if op is None:
                continue
            if k == 0 and "tokens" not in op.args:
                continue  # tracr compiles only programs that read tokens
            canon = _canonical_op(op, vs, tables) if canonical_fns else op
            key = op_signature(canon, tables)
            if key in signatures:
                continue
            try:
                values = op_value_set(canon, vs, tables, cfg.max_seq_len)
            except Exception:  # noqa: BLE001 - unsupported value sets resample the op
                continue
            if len(values) < 2 and canon.kind != "Aggregate":
                continue  # constant op
            if _is_projection(canon, vs, tables):
                continue  # identity Map, or a SequenceMap that ignores an operand
            if len(values) > cfg.max_value_set:
                continue
            nullable = ((canon.kind == "Aggregate" and canon.encoding == CAT)
                        or any(has_none[a] for a in canon.args))
            yields_none = False
            if nullable:
                ok, yields_none = _check_nullable(Program(tuple(ops) + (canon,)), tables,
                                                  inputs, cfg)
                if not ok:
                    continue
            break
        else:
            raise _DeadEnd(f"no valid op at step {k}")
        rewrites += canon.fn != op.fn
        signatures.add(key)
        ops.append(canon)
        vs[canon.name], enc[canon.name] = values, canon.encoding
        order.append(canon.name)
        has_none[canon.name] = yields_none
        unused = [u for u in unused if u not in canon.args] + [canon.name]
    if unused != [ops[-1].name]:
        raise _DeadEnd("ops left unconsumed")
    return Program(tuple(ops)), rewrites


def _is_projection(op: Op, vs: Mapping[str, set], tables: L.Tables) -> bool:
    """True if the op returns one of its operands unchanged on every value reaching it."""
    if op.kind == "Map":
        fn = tables.map_by_token[op.fn].fn
        return all(L.value_key(fn(x)) == L.value_key(x) for x in vs[op.args[0]])
    if op.kind == "SequenceMap":
        fn = tables.sequence_map_by_token[op.fn].fn
        pairs = list(itertools.product(vs[op.args[0]], vs[op.args[1]]))
        return (all(L.value_key(fn(x, y)) == L.value_key(x) for x, y in pairs)
                or all(L.value_key(fn(x, y)) == L.value_key(y) for x, y in pairs))
    return False


def _canonical_op(op: Op, vs, tables) -> Op:
    return dataclasses.replace(op, fn=canonical_fn(op, vs, tables))


def _check_nullable(program: Program, tables: L.Tables, inputs, cfg) -> tuple[bool, bool]:
    """(acceptable, takes the value None) for a new op that may produce None.

    A categorical Aggregate must only move values (tracr's dynamic validator)
    and not be mostly None. Checked as the op is created, so the op is
    resampled instead of the whole program being rejected later by the same
    checks in :func:`check_program`.
    """
    op = program.ops[-1]
    expr = to_rasp(prune(program), tables)
    try:
        res = [E.evaluate_batch(expr, x) for x in inputs]
    except Exception:  # noqa: BLE001 - an op whose evaluation fails is resampled
        return False, True
    yields_none = any(bool((r.codes < 0).any()) for r in res)
    if op.kind == "Aggregate" and op.encoding == CAT:
        if E.none_fraction(res) > cfg.max_none_fraction:
            return False, yields_none
        if not _aggregate_moves_values(program, op, tables, inputs):
            return False, yields_none
    return True, yields_none


def _propose(rng, cfg, tables, kind, name, order, enc, vs, unused, must,
             has_none) -> Op | None:
    """A random op of `kind` with typed operands, or None if impossible."""
    def choose(pred, exclude=()):
        cands = [v for v in order if pred(v) and v not in exclude]
        if not cands:
            return None
        # Prefer unused variables and recent ones (deeper programs).
        w = [(cfg.unused_weight if v in unused else 1.0) * (1.0 + i / len(order))
             for i, v in enumerate(cands)]
        return _pick(rng, cands, w)

    is_cat = lambda v: enc[v] == CAT  # noqa: E731
    is_num = lambda v: enc[v] == NUM  # noqa: E731
    if kind == "Map":
        x = choose(lambda v: True)
        if x is None:
            return None
        family = _pick(rng, tables.map_families(), [1.0] * len(tables.map_families()))
        fn = _pick(rng, tables.maps_of_family(family), [1.0] * len(tables.maps_of_family(family)))
        out = NUM if rng.random() < cfg.p_numerical else CAT
        op = Op(name, "Map", fn.token, (x,), out)
    elif kind == "SequenceMap":
        x = choose(is_cat)
        y = choose(is_cat, exclude=(x,))
        if x is None or y is None:
            return None
        fn = _pick(rng, tables.sequence_maps, [1.0] * len(tables.sequence_maps))
        op = Op(name, "SequenceMap", fn.token, (x, y), CAT)
    elif kind == "LinearSequenceMap":
        x = choose(is_num)
        y = choose(is_num, exclude=(x,))
        if x is None or y is None:
            return None
        fn = _pick(rng, tables.linear, [1.0] * len(tables.linear))
        op = Op(name, "LinearSequenceMap", fn.token, (x, y), NUM)
    else:
        selectable = lambda v: enc[v] == CAT and not has_none[v]  # noqa: E731
        kq = choose(selectable), choose(selectable)
        if None in kq:
            return None
        pred = _pick(rng, L.PREDICATES, [1.0] * len(L.PREDICATES))
        if kind == "SelectorWidth":
            out = NUM if rng.random() < cfg.p_numerical else CAT
            op = Op(name, "SelectorWidth", pred, kq, out)
        else:
            s = choose(lambda v: not has_none[v])  # rasp cannot average None
            if s is None:
                return None
            if enc[s] == NUM and not {int(v) for v in vs[s]}.issubset({0, 1}):
                return None  # tracr averages only 0/1 numerical values
            op = Op(name, "Aggregate", pred, (*kq, s), enc[s])
    if len(set(op.args) & set(unused)) < must:
        return None
    return op


# ---------------------------------------------------------------------------
# Whole-program filters

REJECT_REASONS = ("dead_end", "validator", "no_tokens", "eval_error", "constant", "identity",
                  "mostly_none", "duplicate")


def domain(vocab: Sequence, max_seq_len: int, exhaustive_limit: int, samples: int,
           seed_seq: np.random.SeedSequence) -> list[np.ndarray]:
    """The verification inputs, grouped by length.

    The whole domain (every sequence of length 1..max_seq_len) when it has at
    most `exhaustive_limit` inputs, else `samples` random inputs drawn from
    `seed_seq` plus the structured inputs of every length (:func:`evaluator.edge_inputs`:
    each token repeated, the vocabulary cycled), which random samples almost never hold
    and which reach the widest selectors (a SelectorWidth too coarse for max_seq_len).
    """
    size = domain_size(vocab, max_seq_len)
    if size <= exhaustive_limit:
        return E.all_inputs(sorted(vocab), max_seq_len)
    rng = np.random.default_rng(seed_seq)
    sampled = {x.shape[1]: x for x in E.sample_inputs(sorted(vocab), max_seq_len, samples, rng)}
    out = []
    for edges in E.edge_inputs(sorted(vocab), max_seq_len):
        n = edges.shape[1]
        out.append(np.concatenate([sampled[n], edges]) if n in sampled else edges)
    return out


def domain_size(vocab: Sequence, max_seq_len: int) -> int:
    return sum(len(vocab) ** n for n in range(1, max_seq_len + 1))


def check_program(program: Program, tables: L.Tables, cfg: SamplerConfig,
                  inputs: list[np.ndarray]) -> tuple[str | None, dict]:
    """(reject reason or None, facts) for a program on the verification inputs."""
    expr = to_rasp(program, tables)
    if validating.static_validate(expr):
        return "validator", {}
    if "tokens" not in {a for op in program.ops for a in op.args}:
        return "no_tokens", {}  # tracr compiles only programs that read tokens
    try:
        results = [E.evaluate_batch(expr, x) for x in inputs]
    except Exception:  # noqa: BLE001 - evaluation errors reject the program
        return "eval_error", {}
    n_pos = sum(r.codes.size for r in results)
    n_none = sum(int((r.codes < 0).sum()) for r in results)
    none_fraction = n_none / n_pos
    facts = {"none_fraction": none_fraction}
    if none_fraction > cfg.max_none_fraction:
        return "mostly_none", facts
    observed = set()
    for r in results:
        used = np.unique(r.codes[r.codes >= 0])
        observed.update(L.value_key(r.values[i]) for i in used)
    if len(observed) <= 1:
        return "constant", facts
    if all(_equals_tokens(r, x) for r, x in zip(results, inputs)):
        return "identity", facts
    # tracr's dynamic validator (categorical Aggregates that would average) was
    # applied to every Aggregate as it was created, in construct().
    return None, facts


def _equals_tokens(r, x: np.ndarray) -> bool:
    return r.to_lists() == x.tolist()


def _key_ids_of(program: Program, name: str, tables: L.Tables, x: np.ndarray,
                index: dict) -> np.ndarray:
    """Value-key ids [B, L] of variable `name` on inputs `x` (-1 = None)."""
    if name == "tokens":
        return L.key_ids(x.ravel().tolist(), np.arange(x.size).reshape(x.shape), index)
    if name == "indices":
        pos = np.broadcast_to(np.arange(x.shape[1]), x.shape)
        return L.key_ids(list(range(x.shape[1])), pos, index)
    r = E.evaluate_batch(to_rasp(subprogram(program, name), tables), x)
    return L.key_ids(r.values, r.codes, index)


def _aggregate_moves_values(program: Program, op: Op, tables: L.Tables, inputs) -> bool:
    """tracr's dynamic validator: a categorical Aggregate only moves values.

    Where its selector is wider than one and values differ, rasp averages them
    but the compiled attention cannot; tracr flags outputs outside the inputs
    (compared with ==, as tracr's set check does).
    """
    for x in inputs:
        index: dict = {}
        out = _key_ids_of(program, op.name, tables, x, index)
        inn = _key_ids_of(program, op.args[2], tables, x, index)
        present = (out[:, :, None] == inn[:, None, :]).any(axis=-1)
        if not (present | (out < 0)).all():
            return False
    return True


@dataclasses.dataclass
class Sampled:
    program: Program
    rewrites: int
    none_fraction: float


def sample_shard(cfg: SamplerConfig, seed: int, shard: int, n_programs: int,
                 progress=None) -> tuple[list[Sampled], dict]:
    """Sample `n_programs` accepted programs for one shard, deterministically.

    The random stream derives only from (seed, shard). Returns the programs
    (canonical form) and statistics: tries, rejections by reason, acceptance.
    """
    tables = L.Tables(cfg.map_constants)
    ss = np.random.SeedSequence(entropy=seed, spawn_key=(shard,))
    rng = np.random.default_rng(ss)
    inputs = domain(cfg.vocab, cfg.max_seq_len, cfg.exhaustive_limit, cfg.eval_samples,
                    np.random.SeedSequence(entropy=seed, spawn_key=(shard, 1)))
    rejects: collections.Counter = collections.Counter()
    accepted: list[Sampled] = []
    seen: set[tuple] = set()
    tries = 0
    while len(accepted) < n_programs:
        tries += 1
        length = int(rng.integers(cfg.min_length, cfg.max_length + 1))
        try:
            program, rewrites = construct(rng, cfg, tables, length, inputs)
        except _DeadEnd:
            rejects["dead_end"] += 1
            continue
        program, more = canonicalize(program, tables, cfg.vocab, cfg.max_seq_len)
        reason, facts = check_program(program, tables, cfg, inputs)
        if reason is None:
            toks = tuple(encode(program))
            if toks in seen:
                reason = "duplicate"
            seen.add(toks)
        if reason is not None:
            rejects[reason] += 1
            continue
        accepted.append(Sampled(program, rewrites + more, facts["none_fraction"]))
        if progress is not None:
            progress(len(accepted), n_programs)
    stats = {"tries": tries, "accepted": len(accepted),
             "acceptance_rate": len(accepted) / tries,
             "rejected": {r: rejects.get(r, 0) for r in REJECT_REASONS},
             "ops_rewritten": sum(s.rewrites for s in accepted),
             "programs_with_rewrites": sum(1 for s in accepted if s.rewrites)}
    return accepted, stats
