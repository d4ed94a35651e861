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
"""

from __future__ import annotations

import hashlib
import json
import sys
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
    d = params["dataset"]
    vocab = Vocab.load(vocab_path)
    refs = reference_programs(params)
    # (a reference program with more ops than the vocabulary has names cannot be sampled)
    ref_ids = {tuple(vocab.ids(t)): name for name, t in refs.items()
               if all(tok in vocab.index for tok in t)}
    seen: set[bytes] = set()
    rows: dict[str, list[tuple[bytes, int, int]]] = {s: [] for s in SPLITS}  # (hash, shard, row)
    loaded: list[dict[str, np.ndarray]] = []
    n_in = n_dup = 0
    matched_refs: list[str] = []
    for k, path in enumerate(shard_paths):
        arrays = S.load_npz(path)
        loaded.append(arrays)
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
            rows[split].append((digest, k, i))
        print(f"[split] read {path}", file=sys.stderr, flush=True)
    summary: dict[str, Any] = {"input_programs": n_in, "duplicates": n_dup,
                               "reference_programs": sorted(refs),
                               "reference_programs_sampled": sorted(matched_refs),
                               "splits": {}}
    for split in SPLITS:
        items = sorted(rows[split], key=lambda r: r[0])
        n_shards = d["shards"][split]
        for j in range(n_shards):
            mine = items[j::n_shards]
            arrays = take(loaded, [(k, i) for _, k, i in mine])
            arrays["shard_json"] = S.text_array([S.dumps_json(
                {"split": split, "shard": j, "programs": len(mine)})])
            S.save_npz(f"{outdir}/{split}/shard_{j:03d}.npz", arrays)
        lengths = [int(loaded[k]["length"][i]) for _, k, i in items]
        summary["splits"][split] = {"programs": len(items), "shards": n_shards,
                                    "by_length": {str(n): lengths.count(n)
                                                  for n in sorted(set(lengths))}}
    S.write_json(f"{outdir}/summary.json", summary)
    print(f"[split] {json.dumps(summary['splits'])}", file=sys.stderr)
    return summary


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
