"""Token shards: the decompiler's input, tokenized once per dataset shard and read on demand.

Seed 001 trains on 1.6M programs. Holding every example's weight tokens in the training
process (:func:`metamodels.decompiler.batches.load_split`) takes memory that grows with the
zoo: tens of GB at that scale. Instead the ``tokenize`` stage (one job per dataset or variant
shard) writes each program's tokens to a *token shard*, and training and evaluation open the
shards as a :class:`TokenStore`, which keeps only a few integers per program in memory and
reads each batch's rows from disk when the batch is built (``os.pread`` through
:class:`metamodels.core.shards.StoredColumns`). Peak memory is then the process, the model and
a few batches, whatever the number of programs; opening the store reads no weights, so the
first training step comes as soon as the step is compiled.

A token shard is an *uncompressed* ``.npz`` (``numpy.load`` reads it; docs/data-formats.md),
so that any row can be read without the rest. Its columns, for ``n`` programs kept:

* ``features_zlib`` (uint8) and ``features_zlib_offsets`` (n + 1, int64): program ``i``'s
  features, a (tokens, width) float32 little-endian array (symlog applied, width
  :func:`metamodels.decompiler.weights.feature_width`), deflate-compressed on its own
  (``zlib.decompress``); tracr's weights are mostly zeros, so this keeps the file near the
  dataset shard's size.
* ``kind``, ``layer``, ``index`` (int32, all tokens of all programs) and
  ``token_offsets`` (n + 1, int64): the token tags, program ``i`` at
  ``token_offsets[i]:token_offsets[i+1]``.
* ``program`` (n, max_program_tokens) int32: canonical program tokens, PAD-filled.
* ``residual_slot`` (n, max_residual) int8: what each residual dimension of program ``i``
  holds (:func:`metamodels.decompiler.weights.residual_slots`), the targets of the auxiliary
  residual supervision. Shards written before it existed lack it; they still train without
  that supervision.
* ``length`` (n,) int32 ops; ``row`` (n,) int32 the row of the dataset shard it came from.
* ``shard_json``: the source shard, the ``decompiler.input`` config and
  ``max_program_tokens`` it was made with, ``programs`` and ``skipped`` (per reason).

Programs that do not fit the meta-model (too many weight tokens, too wide, or a program longer
than ``max_program_tokens``) are skipped and counted, exactly as :func:`load_split` does, so a
store and ``load_split`` of the same shards hold the same examples in the same order and give
bitwise-identical batches.
"""

from __future__ import annotations

import bisect
import collections
import functools
import json
import sys
import zlib
from typing import Mapping, Sequence

import numpy as np

from metamodels.core import shards as S
from metamodels.decompiler import weights as W

FORMAT = "metamodels token shard 1"
TAGS = ("kind", "layer", "index")


# decompiler.input keys added after token shards were first written, and the value that
# gives the tokens those shards hold.
ADDED_KEYS = {"value_tables": False}


def tokenizer_input(input_cfg: Mapping) -> dict:
    """The ``decompiler.input`` keys that decide a model's weight tokens: all but ``buckets``,
    which only pads batches. What a token shard records and is checked against, so a shard
    stays usable after an edit of ``buckets``."""
    return {k: v for k, v in input_cfg.items() if k != "buckets"}


def tokenize_shard(input_cfg: Mapping, max_program_tokens: int, dataset_path: str,
                   out_path: str, pad_id: int = 0) -> dict:
    """Tokenize every program of one dataset (or variant) shard into a token shard.

    ``input_cfg`` is ``decompiler.input`` and ``max_program_tokens`` is
    ``decompiler.max_program_tokens`` (seed 001 App. B.2). Returns the ``shard_json`` record.
    Raises :class:`~metamodels.core.shards.FileFormatError` naming ``dataset_path`` when it is
    not a zoo-format shard."""
    from metamodels.decompiler.batches import example, row_slots
    from metamodels.zoo.rows import row
    arrays = S.load_npz(dataset_path)
    blobs, tags, progs, lengths, rows, slots = [], {t: [] for t in TAGS}, [], [], [], []
    skipped: collections.Counter = collections.Counter()
    n = int(arrays["length"].shape[0])
    for i in range(n):
        r = row(arrays, i)
        t, p = example(r, input_cfg, max_program_tokens, pad_id)
        if isinstance(t, str):
            skipped[t] += 1
            continue
        blobs.append(np.frombuffer(
            zlib.compress(np.ascontiguousarray(t.features, "<f4").tobytes(), 6), np.uint8))
        for k in TAGS:
            tags[k].append(getattr(t, k))
        progs.append(p)
        slots.append(row_slots(r, input_cfg))
        lengths.append(int(r["meta"]["length"]))
        rows.append(i)
    record = {"format": FORMAT, "source": str(dataset_path), "input": tokenizer_input(input_cfg),
              "max_program_tokens": int(max_program_tokens),
              "feature_width": W.feature_width(input_cfg), "programs": len(progs),
              "skipped": dict(sorted(skipped.items()))}
    out: dict[str, np.ndarray] = {}
    out["features_zlib"], out["features_zlib_offsets"] = S.ragged(blobs, np.uint8)
    for k in TAGS:
        out[k], offsets = S.ragged(tags[k], np.int32)
    out["token_offsets"] = offsets
    out["program"] = (np.stack(progs) if progs
                      else np.zeros((0, max_program_tokens), np.int32))
    out["residual_slot"] = (np.stack(slots) if slots
                            else np.zeros((0, int(input_cfg["max_residual"])), np.int8))
    out["length"] = np.array(lengths, np.int32)
    out["row"] = np.array(rows, np.int32)
    out["shard_json"] = S.text_array([S.dumps_json(record)])
    S.save_npz(out_path, out, compress=False)
    print(f"[tokenize] {dataset_path}: {len(progs)} of {n} programs, "
          f"{int(offsets[-1])} weight tokens, skipped {record['skipped']} -> {out_path}",
          file=sys.stderr)
    return record


def is_token_shard(path: str) -> bool:
    """Whether ``path`` is a token shard (else a zoo-format shard, or not readable as either)."""
    try:
        cols = S.StoredColumns(path)
    except S.FileFormatError:
        return False
    ok = "features_zlib" in cols.columns
    cols.close()
    return ok


class TokenStore:
    """The examples of a split's token shards, read on demand (see the module docstring).

    Same interface as :class:`metamodels.decompiler.batches.Examples`: ``len``, ``n_tokens``
    (n,), ``length`` (n,), ``program_width``, ``ids``, ``skipped``, ``programs`` (n,
    max_program_tokens, read on first use: validation and test only) and :meth:`read`.
    In memory: four int64 and two int32 per program.

    Raises :class:`ValueError` naming the shard and the key when a shard was tokenized with
    other ``decompiler.input`` / ``max_program_tokens`` values than ``input_cfg`` /
    ``max_program_tokens`` (rerun its ``tokenize`` job), and when the shards hold no program."""

    def __init__(self, paths: Sequence[str], input_cfg: Mapping, max_program_tokens: int):
        self.paths = list(paths)
        self.width = W.feature_width(input_cfg)
        self.max_residual = int(input_cfg["max_residual"])
        self.program_width = int(max_program_tokens)
        self._cols: list[S.StoredColumns] = []
        self._starts = [0]
        tok_off, blob_off, lengths, rows, sources = [], [], [], [], []
        self.skipped: dict[str, int] = collections.Counter()
        for path in self.paths:
            cols = S.StoredColumns(path)
            record = json.loads(str(cols.all("shard_json").reshape(-1)[0]))
            _check_record(path, record, input_cfg, max_program_tokens)
            self._cols.append(cols)
            n = int(cols.shape("length")[0])
            self._starts.append(self._starts[-1] + n)
            tok_off.append(cols.all("token_offsets"))
            blob_off.append(cols.all("features_zlib_offsets"))
            lengths.append(cols.all("length"))
            rows.append(cols.all("row"))
            sources.append(record["source"])
            self.skipped.update(record["skipped"])
        self.skipped = dict(self.skipped)
        # shards written before the residual_slot column: width-1 zeros, which the residual
        # supervision refuses (train.residual_targets) instead of training on empty targets
        self._has_slots = all("residual_slot" in c.columns for c in self._cols)
        self._tok_off, self._blob_off = tok_off, blob_off
        self.n_tokens = (np.concatenate([np.diff(o) for o in tok_off]) if tok_off
                         else np.zeros(0, np.int64))
        self.length = np.concatenate(lengths) if lengths else np.zeros(0, np.int32)
        self._rows, self._sources = rows, sources
        self._programs: np.ndarray | None = None
        if len(self) == 0:
            raise ValueError(f"no usable programs in {self.paths} (skipped: {self.skipped}); "
                             "check decompiler.input.max_tokens / max_residual and "
                             "decompiler.max_program_tokens, or sample more programs")

    def __len__(self) -> int:
        return self._starts[-1]

    def _locate(self, i: int) -> tuple[int, int]:
        k = bisect.bisect_right(self._starts, int(i)) - 1
        return k, int(i) - self._starts[k]

    @functools.cached_property
    def ids(self) -> list[str]:
        """``"dataset_shard:row"`` of every program (as :func:`load_split` names them)."""
        return [f"{src}:{r}" for src, rows in zip(self._sources, self._rows) for r in rows]

    @property
    def programs(self) -> np.ndarray:
        if self._programs is None:
            self._programs = np.concatenate([c.all("program") for c in self._cols])
        return self._programs

    def read(self, idx: Sequence[int]) -> dict[str, np.ndarray]:
        """Tokens of programs ``idx``, concatenated in that order: ``features`` (sum of their
        tokens, width) float32, ``kind``/``layer``/``index`` int32, ``program``
        (len(idx), max_program_tokens) int32 and ``residual_slot`` (len(idx), max_residual)
        int8 ((len(idx), 1) zeros when a shard was written without that column)."""
        feats, tags, progs, slots = [], {t: [] for t in TAGS}, [], []
        for i in idx:
            k, j = self._locate(i)
            cols = self._cols[k]
            b0, b1 = self._blob_off[k][j], self._blob_off[k][j + 1]
            t0, t1 = int(self._tok_off[k][j]), int(self._tok_off[k][j + 1])
            raw = zlib.decompress(cols.rows("features_zlib", int(b0), int(b1)).tobytes())
            f = np.frombuffer(raw, "<f4").reshape(t1 - t0, self.width)
            feats.append(f)
            for t in TAGS:
                tags[t].append(cols.rows(t, t0, t1))
            progs.append(cols.rows("program", j, j + 1))
            slots.append(cols.rows("residual_slot", j, j + 1) if self._has_slots
                         else np.zeros((1, 1), np.int8))
        out = {"features": np.concatenate(feats).astype(np.float32, copy=False)}
        for t in TAGS:
            out[t] = np.concatenate(tags[t])
        out["program"] = np.concatenate(progs)
        out["residual_slot"] = np.concatenate(slots)
        return out

    def close(self) -> None:
        for c in self._cols:
            c.close()


def _check_record(path: str, record: Mapping, input_cfg: Mapping, max_program_tokens: int):
    if record.get("format") != FORMAT:
        raise S.FileFormatError(path, f"not a token shard ({FORMAT!r}); make one with "
                                "`python -m metamodels tokenize`", "shard_json")
    stored, wanted = record.get("input", {}), tokenizer_input(input_cfg)
    for key in sorted(set(stored) | set(wanted)):
        # a key added since the shard was written holds its old behaviour's value there
        was, now = stored.get(key, ADDED_KEYS.get(key)), wanted.get(key, ADDED_KEYS.get(key))
        if was != now:
            raise ValueError(f"{path} was tokenized with decompiler.input.{key} = "
                             f"{was!r}, this run asks for {now!r}; "
                             "rerun its tokenize job (snakemake does when params change)")
    if record.get("max_program_tokens") != int(max_program_tokens):
        raise ValueError(f"{path} was tokenized with decompiler.max_program_tokens = "
                         f"{record.get('max_program_tokens')!r}, this run asks for "
                         f"{max_program_tokens}; rerun its tokenize job")


def open_split(paths: Sequence[str], input_cfg: Mapping, max_program_tokens: int):
    """A split's examples: a :class:`TokenStore` over token shards (read on demand), or, for
    zoo-format shards, :func:`metamodels.decompiler.batches.load_split` (all in memory; fine
    for small sets). Mixing the two kinds raises :class:`ValueError`."""
    from metamodels.decompiler import batches as B
    kinds = [is_token_shard(p) for p in paths]
    if all(kinds):
        return TokenStore(paths, input_cfg, max_program_tokens)
    if any(kinds):
        raise ValueError(f"{list(paths)} mix token shards and zoo-format shards; pass one kind")
    return B.load_split(paths, input_cfg, max_program_tokens)
