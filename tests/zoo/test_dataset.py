"""Split stage: the two-pass, spill-to-disk split writes exactly the files of an in-memory split,
cleans up after itself, and never holds more than one input shard's weights."""

from __future__ import annotations

import json
import pathlib
import tracemalloc
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from metamodels.core import shards as S
from metamodels.rasp.tokenizer import Vocab
from metamodels.zoo import dataset as D


def in_memory_split(params: Mapping, shard_paths: list[str], vocab_path: str,
                    outdir: str) -> dict:
    """The split as it was before the spill: every input shard loaded and kept in memory.
    The reference the streaming split must match byte for byte."""
    d = params["dataset"]
    vocab = Vocab.load(vocab_path)
    refs = D.reference_programs(params)
    ref_ids = {tuple(vocab.ids(t)): name for name, t in refs.items()
               if all(tok in vocab.index for tok in t)}
    seen: set[bytes] = set()
    rows: dict[str, list[tuple[bytes, int, int]]] = {s: [] for s in D.SPLITS}
    loaded = []
    n_in = n_dup = 0
    matched: list[str] = []
    for k, path in enumerate(shard_paths):
        arrays = S.load_npz(path)
        loaded.append(arrays)
        off = arrays["tokens_offsets"]
        for i in range(len(arrays["length"])):
            n_in += 1
            toks = arrays["tokens"][off[i]:off[i + 1]]
            u, digest = D._hash01(toks)
            if digest in seen:
                n_dup += 1
                continue
            seen.add(digest)
            split = D.assign_split(u, d["split"])
            ref = ref_ids.get(tuple(int(t) for t in toks))
            if ref is not None:
                matched.append(ref)
                split = "test"
            rows[split].append((digest, k, i))
    summary: dict[str, Any] = {"input_programs": n_in, "duplicates": n_dup,
                               "reference_programs": sorted(refs),
                               "reference_programs_sampled": sorted(matched), "splits": {}}
    for split in D.SPLITS:
        items = sorted(rows[split], key=lambda r: r[0])
        n_shards = d["shards"][split]
        for j in range(n_shards):
            mine = items[j::n_shards]
            arrays = D.take(loaded, [(k, i) for _, k, i in mine])
            arrays["shard_json"] = S.text_array([S.dumps_json(
                {"split": split, "shard": j, "programs": len(mine)})])
            S.save_npz(f"{outdir}/{split}/shard_{j:03d}.npz", arrays)
        lengths = [int(loaded[k]["length"][i]) for _, k, i in items]
        summary["splits"][split] = {"programs": len(items), "shards": n_shards,
                                    "by_length": {str(n): lengths.count(n)
                                                  for n in sorted(set(lengths))}}
    S.write_json(f"{outdir}/summary.json", summary)
    return summary


def synthetic_shard(path: pathlib.Path, token_rows: list[list[int]], rng: np.random.Generator,
                    weights_dtype=np.float32, n_params_dtype=np.int64,
                    weights_len: tuple[int, int] = (0, 60)) -> None:
    """A compiled shard's columns (:data:`D.RAGGED`, :data:`D.COLUMNS`) with made-up content:
    the split only moves rows, it never interprets them."""
    n = len(token_rows)
    weights = [np.round(rng.normal(size=rng.integers(*weights_len)), 2) for _ in range(n)]
    arrays: dict[str, np.ndarray] = {}
    arrays["tokens"], arrays["tokens_offsets"] = S.ragged(
        [np.array(t, np.int32) for t in token_rows], np.int32)
    arrays["weights"], arrays["weights_offsets"] = S.ragged(weights, weights_dtype)
    arrays["length"] = np.array([len(t) for t in token_rows], np.int32).reshape(n)
    arrays["n_layers"] = rng.integers(1, 5, n).astype(np.int32)
    arrays["residual_width"] = rng.integers(8, 40, n).astype(np.int32)
    arrays["n_params"] = np.array([len(w) for w in weights], n_params_dtype).reshape(n)
    arrays["program_json"] = S.json_array([{"ops": t} for t in token_rows])
    arrays["source"] = S.text_array([f"# program {t}\nλ = {'x' * int(rng.integers(0, 30))}"
                                     for t in token_rows])
    arrays["layout_json"] = S.json_array([{"w": int(rng.integers(0, 9)) * "ab"} for _ in range(n)])
    arrays["meta_json"] = S.json_array([{"row": i, "note": "é" * (i % 4)} for i in range(n)])
    arrays["shard_json"] = S.text_array([S.dumps_json({"shard": path.name})])
    S.save_npz(path, arrays)


def vocab_file(params: Mapping, d: pathlib.Path) -> tuple[Vocab, pathlib.Path]:
    """The params' program vocabulary, and the file `split` reads it from."""
    vocab = Vocab.from_params(params)
    S.write_bytes(d / "vocab.json", vocab.dumps().encode())
    return vocab, d / "vocab.json"


@pytest.fixture()
def zoo(params, tmp_path):
    """Five synthetic input shards with duplicates (within a shard and across shards), a
    reference program, an empty shard, and a shard whose dtypes differ from the first's."""
    params["dataset"]["shards"] = {"train": 3, "val": 2, "test": 2}
    params["dataset"]["split"] = {"train": 0.6, "val": 0.2, "test": 0.2}
    vocab, vocab_path = vocab_file(params, tmp_path)
    rng = np.random.default_rng(0)
    ref = list(vocab.ids(next(iter(D.reference_programs(params).values()))))

    def programs(n: int) -> list[list[int]]:
        return [rng.integers(1, len(vocab), rng.integers(2, 12)).tolist() for _ in range(n)]

    a, b, c = programs(40), programs(35), programs(30)
    rows = [a + a[:5], b + a[10:20] + [ref], [], c + b[:3], programs(25) + c[5:8]]
    paths = []
    for k, r in enumerate(rows):
        path = tmp_path / "compiled" / f"shard_{k:05d}.npz"
        path.parent.mkdir(exist_ok=True)
        other = k == 3  # float64 weights, int32 n_params: cast to the first shard's dtypes
        synthetic_shard(path, r, rng, np.float64 if other else np.float32,
                        np.int32 if other else np.int64)
        paths.append(str(path))
    return params, paths, str(vocab_path), tmp_path


def files_of(outdir: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(outdir)): p.read_bytes()
            for p in sorted(outdir.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("inputs", ["all", "none"])
def test_split_writes_the_bytes_of_an_in_memory_split(zoo, inputs):
    params, paths, vocab_path, tmp = zoo
    if inputs == "none":
        paths = []
    want = in_memory_split(params, paths, vocab_path, str(tmp / "ref"))
    got = D.run_split(params, paths, vocab_path, str(tmp / "out"))
    assert got == want
    ref, out = files_of(tmp / "ref"), files_of(tmp / "out")
    assert len(ref) == 1 + 3 + 2 + 2
    assert list(out) == list(ref)
    for name in ref:
        assert out[name] == ref[name], name
    if inputs == "all":
        assert want["duplicates"] == 5 + 10 + 3 + 3
        assert want["reference_programs_sampled"] == [next(iter(D.reference_programs(params)))]
        with np.load(tmp / "out" / "train" / "shard_000.npz") as z:
            assert z["weights"].dtype == np.float32 and z["n_params"].dtype == np.int64


def test_spill_folder_is_removed_and_a_stale_one_ignored(zoo, monkeypatch):
    params, paths, vocab_path, tmp = zoo
    in_memory_split(params, paths, vocab_path, str(tmp / "ref"))
    out = tmp / "out"
    stale = out / f"{D.SPILL_PREFIX}killed"  # as a SIGKILLed run leaves it: junk spill files
    stale.mkdir(parents=True)
    for o in range(8):
        (stale / f"out_{o:05d}.z").write_bytes(b"not a deflate stream")
    # A run that fails after the spill (here: writing its third output) leaves no spill folder.
    real_save = S.save_npz
    calls = []

    def failing_save(path, arrays, *a, **kw):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        real_save(path, arrays, *a, **kw)

    monkeypatch.setattr(S, "save_npz", failing_save)
    with pytest.raises(OSError, match="disk full"):
        D.run_split(params, paths, vocab_path, str(out))
    assert not list(out.glob(f"{D.SPILL_PREFIX}*"))
    monkeypatch.setattr(S, "save_npz", real_save)
    stale.mkdir()
    (stale / "out_00000.z").write_bytes(b"junk")
    D.run_split(params, paths, vocab_path, str(out))
    assert not list(out.glob(".*"))  # no spill, no temporary file
    assert files_of(out) == files_of(tmp / "ref")


def count_weight_loads(monkeypatch) -> dict[str, Any]:
    """Patch ``S.load_npz`` to count, per file, the loads that read the weights column, and
    how many loaded weight arrays are alive at once at most."""
    state: dict[str, Any] = {"loads": {}, "live": 0, "max_live": 0}
    real_load = S.load_npz

    def dead():
        state["live"] -= 1

    def load(path, keys=None, *a, **kw):
        arrays = real_load(path, keys, *a, **kw)
        if "weights" in arrays:
            state["loads"][str(path)] = state["loads"].get(str(path), 0) + 1
            state["live"] += 1
            state["max_live"] = max(state["max_live"], state["live"])
            weakref.finalize(arrays["weights"], dead)
        return arrays

    monkeypatch.setattr(S, "load_npz", load)
    return state


def test_each_input_weights_are_loaded_once_and_one_at_a_time(zoo, monkeypatch):
    params, paths, vocab_path, tmp = zoo
    state = count_weight_loads(monkeypatch)
    D.run_split(params, paths, vocab_path, str(tmp / "out"))
    assert state["loads"] == {p: 1 for p in paths}
    assert state["max_live"] == 1
    # The check has teeth: the in-memory split holds every input's weights at the end.
    state = count_weight_loads(monkeypatch)
    in_memory_split(params, paths, vocab_path, str(tmp / "ref"))
    assert state["max_live"] == len(paths)


def test_peak_memory_does_not_grow_with_the_zoo(params, tmp_path):
    """32 inputs and 32 outputs of about one input each: the traced peak is a few inputs'
    worth (about 0.2 of all the weights here), where holding every input, as the in-memory
    split did, takes more than all of them (measured: 1.2)."""
    params["dataset"]["split"] = {"train": 0.5, "val": 0.25, "test": 0.25}
    params["dataset"]["shards"] = {"train": 16, "val": 8, "test": 8}
    vocab, vocab_path = vocab_file(params, tmp_path)
    rng = np.random.default_rng(1)
    paths, weight_bytes = [], 0
    for k in range(32):
        path = tmp_path / "compiled" / f"shard_{k:05d}.npz"
        path.parent.mkdir(exist_ok=True)
        rows = [[k + 1, i + 1, int(x)] for i, x in enumerate(rng.integers(1, len(vocab), 8))]
        synthetic_shard(path, rows, rng, weights_len=(6000, 6001))
        weight_bytes += 8 * 6000 * 4
        paths.append(str(path))
    D.reference_programs(params)  # (its one-time costs are not the split's)
    tracemalloc.start()
    try:
        D.run_split(params, paths, str(vocab_path), str(tmp_path / "out"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["duplicates"] == 0
    assert peak < weight_bytes / 2, (peak, weight_bytes)
