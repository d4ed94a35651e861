"""Decompiler examples in memory, and deterministic padded batches of them.

A split (its dataset shards) is loaded once: each program's weights become
feature tokens (:mod:`metamodels.decompiler.weights`), stored ragged (all tokens of all
programs concatenated, with offsets), and its canonical program tokens are
padded to ``max_program_tokens``. Programs whose weights or tokens do not fit
the configured sizes are skipped and counted per reason, never silently.

Batches have a fixed number of programs and one of a few padded weight-token
lengths (``buckets`` edges taken from the training set's length quantiles), so
the jitted step compiles at most ``buckets`` times. Training order is a pure
function of ``(seed, epoch)``: each epoch is a seeded permutation cut into
groups of ``batch_size * group`` programs, each group sorted by length and cut
into batches, and the batches shuffled; the last incomplete batch is dropped.
Step ``s`` always sees the same batch, which is what makes a resumed run equal
to an uninterrupted one.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from typing import Iterator, Mapping, Protocol, Sequence

import numpy as np

from metamodels.core import shards as S
from metamodels.decompiler import weights as W
from metamodels.zoo.rows import row

SORT_GROUP = 16  # batches per length-sorting group


class Split(Protocol):
    """What training and evaluation read of a split: :class:`Examples` (in memory) or
    :class:`metamodels.decompiler.tokens.TokenStore` (token shards, read on demand)."""

    n_tokens: np.ndarray   # (n,) weight tokens per program
    length: np.ndarray     # (n,) ops per program
    skipped: dict

    def __len__(self) -> int: ...

    @property
    def program_width(self) -> int: ...

    @property
    def programs(self) -> np.ndarray: ...

    @property
    def ids(self) -> list[str]: ...

    def read(self, idx: Sequence[int]) -> dict[str, np.ndarray]: ...


@dataclasses.dataclass
class Examples:
    features: np.ndarray    # (total_tokens, F) float32
    kind: np.ndarray        # (total_tokens,) int32
    layer: np.ndarray       # (total_tokens,) int32
    index: np.ndarray       # (total_tokens,) int32
    offsets: np.ndarray     # (n + 1,) int64
    programs: np.ndarray    # (n, max_program_tokens) int32, PAD-filled
    length: np.ndarray      # (n,) number of ops
    ids: list[str]          # "shard_path:row"
    skipped: dict[str, int]
    residual_slot: np.ndarray | None = None  # (n, max_residual) int8; None: all 0

    def __len__(self) -> int:
        return int(self.programs.shape[0])

    @property
    def n_tokens(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def program_width(self) -> int:
        return int(self.programs.shape[1])

    def read(self, idx: Sequence[int]) -> dict[str, np.ndarray]:
        """Tokens of programs ``idx`` concatenated in that order (``features``, ``kind``,
        ``layer``, ``index``), their ``program`` and ``residual_slot`` rows; as
        :meth:`metamodels.decompiler.tokens.TokenStore.read`."""
        idx = np.asarray(idx, np.int64)
        starts, counts = self.offsets[idx], np.diff(self.offsets)[idx]
        pos = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        src = np.repeat(starts, counts) + pos
        slots = (np.zeros((len(idx), 1), np.int8) if self.residual_slot is None
                 else self.residual_slot[idx])
        return {"features": self.features[src], "kind": self.kind[src],
                "layer": self.layer[src], "index": self.index[src],
                "program": self.programs[idx], "residual_slot": slots}


def example(r: Mapping, input_cfg: Mapping, max_program_tokens: int, pad_id: int = 0):
    """One zoo row (:func:`metamodels.zoo.rows.row`) as an example: ``(WeightTokens, program
    tokens PAD-filled to max_program_tokens)``, or ``(reason, None)`` when it does not fit:
    ``"program_too_long"`` or ``"weights_too_large"`` (the skip counts' keys)."""
    tokens = r["tokens"]
    if len(tokens) > max_program_tokens:
        return "program_too_long", None
    try:
        t = W.tokenize(r["weights"], r["layout"], input_cfg, r["meta"].get("model"))
    except W.InputTooLarge:
        return "weights_too_large", None
    p = np.full(max_program_tokens, pad_id, np.int32)
    p[:len(tokens)] = tokens
    return t, p


def row_slots(r: Mapping, input_cfg: Mapping) -> np.ndarray:
    """(max_residual,) int8 residual slots of one zoo row (all 0 when its metadata has no
    residual labels)."""
    labels = r["meta"].get("model", {}).get("residual_labels", [])
    return W.residual_slots(labels, int(input_cfg["max_residual"]))


def load_split(paths: Sequence[str], input_cfg: Mapping, max_program_tokens: int,
               pad_id: int = 0, limit: int | None = None) -> Examples:
    feats, kinds, layers, index, progs, lengths, ids, slots = [], [], [], [], [], [], [], []
    skipped: collections.Counter = collections.Counter()
    for path in paths:
        arrays = S.load_npz(path)
        for i in range(int(arrays["length"].shape[0])):
            if limit is not None and len(progs) >= limit:
                break
            r = row(arrays, i)
            t, p = example(r, input_cfg, max_program_tokens, pad_id)
            if isinstance(t, str):
                skipped[t] += 1
                continue
            feats.append(t.features)
            kinds.append(t.kind)
            layers.append(t.layer)
            index.append(t.index)
            progs.append(p)
            slots.append(row_slots(r, input_cfg))
            lengths.append(int(r["meta"]["length"]))
            ids.append(f"{path}:{i}")
    if not progs and not skipped:
        raise ValueError(f"{list(paths)} hold no programs: sample more (zoo.programs_per_shard) "
                         "or give this split a larger fraction (dataset.split)")
    if not progs:
        raise ValueError(f"no usable programs in {list(paths)} (skipped: {dict(skipped)}); "
                         "check decompiler.input.max_tokens / max_residual and "
                         "decompiler.max_program_tokens")
    offsets = np.zeros(len(feats) + 1, np.int64)
    offsets[1:] = np.cumsum([len(f) for f in feats])
    ex = Examples(np.concatenate(feats), np.concatenate(kinds), np.concatenate(layers),
                  np.concatenate(index), offsets, np.stack(progs), np.array(lengths, np.int32),
                  ids, dict(skipped), np.stack(slots))
    if skipped:
        print(f"[batches] skipped {dict(skipped)} of {len(ex) + sum(skipped.values())} programs "
              f"in {len(paths)} shard(s)", file=sys.stderr)
    return ex


def bucket_edges(n_tokens: np.ndarray, buckets: int, multiple: int = 8) -> list[int]:
    """Padded weight-token lengths: length quantiles rounded up to a multiple."""
    qs = np.quantile(n_tokens, np.linspace(0, 1, buckets + 1)[1:], method="higher")
    edges = sorted({int(-(-int(q) // multiple) * multiple) for q in qs})
    return edges


def padded_length(n: int, edges: Sequence[int]) -> int:
    for e in edges:
        if n <= e:
            return e
    return int(-(-n // 8) * 8)  # longer than any training example (eval only)


def make_batch(ex: Split, idx: np.ndarray, edges: Sequence[int],
               batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Arrays of one batch; rows beyond len(idx) (up to batch_size) are padding (valid=0).

    ``ex`` is an :class:`Examples` (in memory) or a
    :class:`metamodels.decompiler.tokens.TokenStore` (read from disk); both give the same
    arrays for the same programs."""
    b = batch_size or len(idx)
    n_tok = ex.n_tokens[idx]
    t = padded_length(int(n_tok.max()), edges)
    tok = ex.read(idx)
    f = tok["features"].shape[1]
    out = {"features": np.zeros((b, t, f), np.float32),
           "kind": np.zeros((b, t), np.int32), "layer": np.zeros((b, t), np.int32),
           "index": np.zeros((b, t), np.int32), "mask": np.zeros((b, t), bool),
           "program": np.zeros((b, ex.program_width), np.int32),
           "residual_slot": np.zeros((b, tok["residual_slot"].shape[1]), np.int32),
           "valid": np.zeros(b, bool)}
    # one scatter for the whole batch: (row, position) <- the idx-ordered tokens
    rows = np.repeat(np.arange(len(idx)), n_tok)
    pos = np.arange(int(n_tok.sum())) - np.repeat(np.cumsum(n_tok) - n_tok, n_tok)
    for k in ("features", "kind", "layer", "index"):
        out[k][rows, pos] = tok[k]
    out["mask"][rows, pos] = True
    out["program"][:len(idx)] = tok["program"]
    out["residual_slot"][:len(idx)] = tok["residual_slot"]
    out["valid"][:len(idx)] = True
    return out


class TrainOrder:
    """Which programs form the batch of each step (pure function of seed and step)."""

    def __init__(self, ex: Split, batch_size: int, seed: int):
        if len(ex) < batch_size:
            raise ValueError(f"training set has {len(ex)} programs < decompiler.train.batch_size "
                             f"= {batch_size}; lower the batch size or sample more programs")
        self.n_tokens = np.asarray(ex.n_tokens)
        self.n, self.batch_size, self.seed = len(ex), batch_size, seed
        self.per_epoch = self.n // batch_size
        self._cache: dict[int, list[np.ndarray]] = {}

    def epoch(self, e: int) -> list[np.ndarray]:
        if e not in self._cache:
            self._cache = {e: self._plan(e)}
        return self._cache[e]

    def _plan(self, e: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, e])
        perm = rng.permutation(self.n)[:self.per_epoch * self.batch_size]
        group = self.batch_size * SORT_GROUP
        batches = []
        for g in range(0, len(perm), group):
            chunk = perm[g:g + group]
            chunk = chunk[np.argsort(self.n_tokens[chunk], kind="stable")]
            batches += [chunk[k:k + self.batch_size] for k in range(0, len(chunk), self.batch_size)]
        order = rng.permutation(len(batches))
        return [batches[k] for k in order]

    def step(self, s: int) -> np.ndarray:
        return self.epoch(s // self.per_epoch)[s % self.per_epoch]


def eval_batches(ex: Split, batch_size: int, edges: Sequence[int],
                 subset: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, dict]]:
    """All (or `subset` of) programs in length order, in fixed-size padded batches."""
    idx = np.arange(len(ex)) if subset is None else np.asarray(subset)
    idx = idx[np.argsort(ex.n_tokens[idx], kind="stable")]
    for k in range(0, len(idx), batch_size):
        part = idx[k:k + batch_size]
        yield part, make_batch(ex, part, edges, batch_size)
