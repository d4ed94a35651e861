"""Stage 3 of the program zoo: deduplicate compiled shards and split them.

Programs are deduplicated by canonical tokens (first occurrence in shard,
then row order wins). Each distinct program goes to train/val/test by a hash
of its tokens compared with the cumulative ``dataset.split`` fractions, so a
canonical program can never sit in two splits and changing the fractions moves
programs without resampling or recompiling anything. Programs equal to one of
tracr's ``compiler/lib.py`` examples (in canonical form) are reference
programs: they always go to test, never to train or validation.

Within a split, programs are ordered by hash and dealt round-robin into
``dataset.shards[split]`` files with the same columns as the compiled shards.

Memory does not grow with the zoo: it is about one input shard plus one output
shard, plus a few numbers per program. A first pass reads only the small
columns of each input (tokens and the ragged offsets, lengths) to deduplicate
and assign every program its output file and row. A second pass loads each
input once, in full, and appends the rows it gives each output file, as one
deflated block per (input, output), to that output's spill file in a fresh
``OUTDIR/.split-*`` folder; the small numeric columns are kept in memory.
Each output is then assembled from its spill alone, rows placed at their final
positions, and written; the folder is removed at the end, and one that a
killed run left behind is removed at the start. The files are the ones an
in-memory split would write, byte for byte (the column dtypes are those of
the first input shard). The spill takes about as much disk as the compressed
outputs, until each is written.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
import zlib
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from tracr.compiler import lib
from tracr.rasp import rasp

from metamodels.core import shards as S
from metamodels.rasp import lambdas as L
from metamodels.rasp.program import UnsupportedProgram, canonicalize, from_rasp
from metamodels.rasp.tokenizer import Vocab, encode

SPLITS = ("train", "val", "test")
# Per-program columns of a shard (ragged columns carry an offsets array).
RAGGED = ("tokens", "weights")
COLUMNS = ("length", "n_layers", "residual_width", "n_params", "program_json", "source",
           "layout_json", "meta_json")
# Temporary folder of a running split inside its output folder (see the module docstring).
SPILL_PREFIX = ".split-"


def lib_examples(vocab: Iterable[Any], max_seq_len: int) -> dict[str, Callable[[], rasp.SOp]]:
    """tracr's lib.py example programs, instantiated for an integer vocabulary."""
    v = sorted(vocab)
    a, b = v[0], v[1]
    return {
        "length": lambda: lib.make_length(),
        "reverse": lambda: lib.make_reverse(rasp.tokens),
        "hist": lambda: lib.make_hist(),
        "sort_unique": lambda: lib.make_sort_unique(rasp.tokens, rasp.tokens),
        "sort": lambda: lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=max_seq_len, min_key=1),
        "sort_freq": lambda: lib.make_sort_freq(max_seq_len),
        "frac_prevs": lambda: lib.make_frac_prevs(
            rasp.numerical(rasp.Map(lambda x: x == a, rasp.tokens))),
        "pair_balance": lambda: lib.make_pair_balance(rasp.tokens, a, b),
        "shift_by_1": lambda: lib.shift_by(1, rasp.tokens),
        "detect_pattern": lambda: lib.detect_pattern(rasp.tokens, [a, b]),
        "count_less_freq": lambda: lib.make_count_less_freq(2),
        "count": lambda: lib.make_count(rasp.tokens, a),
        "nary_sequencemap": lambda: lib.make_nary_sequencemap(
            lambda x, y, z: x + y - z, rasp.tokens, rasp.tokens, rasp.indices),
    }


def reference_programs(params: Mapping) -> dict[str, tuple[str, ...]]:
    """Canonical tokens of every lib example the program grammar can express."""
    z, s = params["zoo"], params["sampler"]
    tables = L.Tables(s["map_constants"])
    out = {}
    for name, make in lib_examples(z["vocab"], z["max_seq_len"]).items():
        try:
            program = from_rasp(make(), tables, z["vocab"], z["max_seq_len"])
            canon, _ = canonicalize(program, tables, z["vocab"], z["max_seq_len"])
        except (UnsupportedProgram, NotImplementedError, ValueError, TypeError):
            continue
        out[name] = tuple(encode(canon))
    return out


def _hash01(token_ids: np.ndarray) -> tuple[float, bytes]:
    digest = hashlib.sha256(np.asarray(token_ids, np.int32).tobytes()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64, digest


def assign_split(u: float, fractions: Mapping[str, float]) -> str:
    edge = 0.0
    for split in SPLITS:
        edge += fractions[split]
        if u < edge:
            return split
    return SPLITS[-1]


def run_split(params: Mapping, shard_paths: list[str], vocab_path: str, outdir: str) -> dict:
    """Deduplicate and split `shard_paths` into ``OUTDIR/{split}/shard_JJJ.npz`` and
    ``OUTDIR/summary.json``: two passes over the inputs, each input loaded in full once."""
    d = params["dataset"]
    vocab = Vocab.load(vocab_path)
    refs = reference_programs(params)
    # (a reference program with more ops than the vocabulary has names cannot be sampled)
    ref_ids = {tuple(vocab.ids(t)): name for name, t in refs.items()
               if all(tok in vocab.index for tok in t)}
    plan = _plan(shard_paths, d, ref_ids)
    summary: dict[str, Any] = {"input_programs": plan.n_in, "duplicates": plan.n_dup,
                               "reference_programs": sorted(refs),
                               "reference_programs_sampled": sorted(plan.matched_refs),
                               "splits": {}}
    for split in SPLITS:
        lengths = plan.lengths[split]
        summary["splits"][split] = {"programs": len(lengths), "shards": d["shards"][split],
                                    "by_length": {str(n): lengths.count(n)
                                                  for n in sorted(set(lengths))}}
    created = not os.path.exists(outdir)
    os.makedirs(outdir, exist_ok=True)
    for stale in glob.glob(os.path.join(glob.escape(outdir), SPILL_PREFIX + "*")):
        shutil.rmtree(stale, ignore_errors=True)  # a killed run's (one split per outdir)
    spill = tempfile.mkdtemp(dir=outdir, prefix=SPILL_PREFIX)
    try:
        fmt = _Format.default()
        for k, path in enumerate(shard_paths):
            fmt = _spill_shard(plan, k, path, fmt, spill)
            print(f"[split] spilled {path}", file=sys.stderr, flush=True)
        for o, out in enumerate(plan.outputs):
            arrays = _assemble(out, fmt, _spill_file(spill, o))
            arrays["shard_json"] = S.text_array([S.dumps_json(
                {"split": out.split, "shard": out.shard, "programs": out.n})])
            target = f"{outdir}/{out.split}/shard_{out.shard:03d}.npz"
            S.save_npz(target, arrays)
            del arrays
            _spill_file(spill, o).unlink(missing_ok=True)  # frees its disk space now
            print(f"[split] wrote {target}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
        if created and not os.listdir(outdir):  # failed before writing anything
            os.rmdir(outdir)
    S.write_json(f"{outdir}/summary.json", summary)
    print(f"[split] {json.dumps(summary['splits'])}", file=sys.stderr)
    return summary


@dataclasses.dataclass
class _Output:
    """One output shard: its rows, and what the spill pass gathered for it.

    ``offsets`` are its ragged columns' offsets (known after the first pass, from the inputs'
    offsets); ``numbers`` its numeric columns, filled in place by the spill pass; ``blocks``
    the spill file's blocks in file order: (output rows of the block's programs, their text
    columns' UTF-8 byte lengths [rows, text columns], compressed size in bytes)."""
    split: str
    shard: int
    n: int
    offsets: dict[str, np.ndarray]
    numbers: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    blocks: list[tuple[np.ndarray, np.ndarray, int]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Plan:
    """Where every kept program goes, from the first pass (small columns only).

    ``picks[k]`` lists, for input shard k, (output index, its rows in shard k, their rows in
    that output); ``offsets[k]`` are shard k's ragged offsets, to check the second pass."""
    n_in: int
    n_dup: int
    matched_refs: list[str]
    lengths: dict[str, list[int]]
    offsets: list[dict[str, np.ndarray]]
    outputs: list[_Output]
    picks: list[list[tuple[int, np.ndarray, np.ndarray]]]


@dataclasses.dataclass(frozen=True)
class _Format:
    """Output dtypes per column and which of :data:`COLUMNS` hold text: those of the first
    input shard, as :func:`take` gives them (its defaults when there is no input)."""
    dtypes: dict[str, np.dtype]
    text: tuple[str, ...]

    @classmethod
    def default(cls) -> _Format:
        return cls({"tokens": np.dtype(np.int32), "weights": np.dtype(np.float32),
                    **{c: np.dtype(np.int64) for c in COLUMNS}}, ())

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray]) -> _Format:
        return cls({c: arrays[c].dtype for c in RAGGED + COLUMNS},
                   tuple(c for c in COLUMNS if arrays[c].dtype.kind == "U"))


def _plan(shard_paths: list[str], d: Mapping, ref_ids: Mapping[tuple, str]) -> _Plan:
    """First pass: deduplicate, assign splits and output rows, reading only small columns."""
    seen: set[bytes] = set()
    # (hash, shard, row, length) of the programs kept
    rows: dict[str, list[tuple[bytes, int, int, int]]] = {s: [] for s in SPLITS}
    offsets: list[dict[str, np.ndarray]] = []
    n_in = n_dup = 0
    matched_refs: list[str] = []
    for k, path in enumerate(shard_paths):
        # every column but the weights: a damaged or malformed file (a JSON column that does
        # not parse, a missing column) fails here, before anything is written; the text
        # columns are dropped with the shard
        arrays = S.load_npz(path, keys=[c for c in ("tokens", *COLUMNS)]
                            + [f"{c}_offsets" for c in RAGGED])
        offsets.append({c: arrays[f"{c}_offsets"] for c in RAGGED})
        off = arrays["tokens_offsets"]
        for i in range(len(arrays["length"])):
            n_in += 1
            toks = arrays["tokens"][off[i]:off[i + 1]]
            u, digest = _hash01(toks)
            if digest in seen:
                n_dup += 1
                continue
            seen.add(digest)
            split = assign_split(u, d["split"])
            ref = ref_ids.get(tuple(int(t) for t in toks))
            if ref is not None:
                matched_refs.append(ref)
                split = "test"
            rows[split].append((digest, k, i, int(arrays["length"][i])))
        print(f"[split] read {path}", file=sys.stderr, flush=True)
    del seen
    outputs: list[_Output] = []
    picks: list[list[tuple[int, np.ndarray, np.ndarray]]] = [[] for _ in shard_paths]
    lengths: dict[str, list[int]] = {}
    for split in SPLITS:
        items = sorted(rows[split], key=lambda r: r[0])
        lengths[split] = [n for _, _, _, n in items]
        n_shards = d["shards"][split]
        for j in range(n_shards):
            mine = items[j::n_shards]
            out_offsets = {}
            for c in RAGGED:
                out_offsets[c] = np.zeros(len(mine) + 1, dtype=np.int64)  # as S.ragged
                out_offsets[c][1:] = np.cumsum(
                    [offsets[k][c][i + 1] - offsets[k][c][i] for _, k, i, _ in mine],
                    dtype=np.int64)
            o = len(outputs)
            outputs.append(_Output(split, j, len(mine), out_offsets))
            grouped: dict[int, tuple[list[int], list[int]]] = {}
            for p, (_, k, i, _) in enumerate(mine):
                in_rows, out_rows = grouped.setdefault(k, ([], []))
                in_rows.append(i)
                out_rows.append(p)
            for k, (in_rows, out_rows) in grouped.items():
                picks[k].append((o, np.array(in_rows, np.int64), np.array(out_rows, np.int64)))
    return _Plan(n_in, n_dup, matched_refs, lengths, offsets, outputs, picks)


def _spill_file(spill: str, o: int) -> pathlib.Path:
    return pathlib.Path(spill, f"out_{o:05d}.z")


def _spill_shard(plan: _Plan, k: int, path: str, fmt: _Format, spill: str) -> _Format:
    """Second pass, input shard k: load it once and append, for each output it feeds, one
    deflated block of those rows' ragged values (in the output dtypes, column after column)
    and text columns (UTF-8, row after row) to the output's spill file; fill numeric columns
    in place. Returns the output format (read from input shard 0)."""
    arrays = S.load_npz(path)
    if k == 0:
        fmt = _Format.of(arrays)
        for out in plan.outputs:
            out.numbers = {c: np.empty(out.n, fmt.dtypes[c]) for c in COLUMNS
                           if c not in fmt.text}
    for c in RAGGED:
        if not np.array_equal(arrays[f"{c}_offsets"], plan.offsets[k][c]):
            raise S.FileFormatError(path, f"column '{c}_offsets' changed during the split",
                                    column=f"{c}_offsets")
    for o, in_rows, out_rows in plan.picks[k]:
        out = plan.outputs[o]
        for c in out.numbers:
            out.numbers[c][out_rows] = arrays[c][in_rows]
        text_lens = np.zeros((len(in_rows), len(fmt.text)), dtype=np.int64)
        z = zlib.compressobj(1)
        size = 0
        with open(_spill_file(spill, o), "ab") as f:
            for c in RAGGED:
                off, values, dtype = plan.offsets[k][c], arrays[c], fmt.dtypes[c]
                for i in in_rows:
                    size += f.write(z.compress(np.ascontiguousarray(
                        values[off[i]:off[i + 1]], dtype=dtype)))
            for r, i in enumerate(in_rows):
                for t, c in enumerate(fmt.text):  # (numpy text may hold lone surrogates)
                    text = str(arrays[c][i]).encode("utf-8", "surrogatepass")
                    text_lens[r, t] = len(text)
                    size += f.write(z.compress(text))
            size += f.write(z.flush())
        out.blocks.append((out_rows, text_lens, size))
    return fmt


def _assemble(out: _Output, fmt: _Format, spill_file: pathlib.Path) -> dict[str, np.ndarray]:
    """An output shard's arrays (as :func:`take` makes them) from its spill file, one block in
    memory at a time, each row copied to its final place."""
    values = {c: np.empty(int(out.offsets[c][-1]), fmt.dtypes[c]) for c in RAGGED}
    texts: dict[str, list[str]] = {c: [""] * out.n for c in fmt.text}
    if out.blocks:
        with open(spill_file, "rb") as f:
            for out_rows, text_lens, size in out.blocks:
                raw = memoryview(zlib.decompress(f.read(size)))
                at = 0
                for c in RAGGED:
                    off, itemsize = out.offsets[c], fmt.dtypes[c].itemsize
                    for p in out_rows:
                        n = int(off[p + 1] - off[p]) * itemsize
                        values[c][off[p]:off[p + 1]] = np.frombuffer(raw[at:at + n],
                                                                     fmt.dtypes[c])
                        at += n
                for r, p in enumerate(out_rows):
                    for t, c in enumerate(fmt.text):
                        n = int(text_lens[r, t])
                        texts[c][p] = str(raw[at:at + n], "utf-8", "surrogatepass")
                        at += n
                del raw
    arrays: dict[str, np.ndarray] = {}
    for c in RAGGED:
        arrays[c], arrays[f"{c}_offsets"] = values[c], out.offsets[c]
    for c in COLUMNS:
        if c in fmt.text:
            arrays[c] = S.text_array(texts[c])
        else:  # (`numbers` is empty only when there is no input, hence no row)
            arrays[c] = out.numbers.get(c, np.zeros(0, fmt.dtypes[c]))
    return arrays


def take(shards: list[Mapping[str, np.ndarray]], picks: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Rows `picks` = [(shard, row)] of loaded shards, as one shard's arrays."""
    out: dict[str, np.ndarray] = {}
    for col in RAGGED:
        pieces = []
        for k, i in picks:
            off = shards[k][f"{col}_offsets"]
            pieces.append(shards[k][col][off[i]:off[i + 1]])
        dtype = shards[0][col].dtype if shards else (np.int32 if col == "tokens" else np.float32)
        out[col], out[f"{col}_offsets"] = S.ragged(pieces, dtype)
    for col in COLUMNS:
        vals = [shards[k][col][i] for k, i in picks]
        if shards and shards[0][col].dtype.kind == "U":
            out[col] = S.text_array([str(v) for v in vals])
        else:
            dtype = shards[0][col].dtype if shards else np.int64
            out[col] = np.array(vals, dtype=dtype).reshape(len(picks))
    return out
