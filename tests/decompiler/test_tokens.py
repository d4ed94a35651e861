"""Token shards: the same examples and bitwise-identical batches as tokenizing in memory, a
reader whose memory does not hold the weights, and clear errors for stale or wrong files."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import zlib

import numpy as np
import pytest

from metamodels.core import shards as S
from metamodels.decompiler import batches as B
from metamodels.decompiler import tokens as T

pytestmark = pytest.mark.xdist_group("decompiler")


def _same_batches(a, b, steps: int = 6) -> None:
    edges = B.bucket_edges(a.n_tokens, 2)
    oa, ob = B.TrainOrder(a, 8, 3), B.TrainOrder(b, 8, 3)
    for s in range(steps):
        x, y = B.make_batch(a, oa.step(s), edges), B.make_batch(b, ob.step(s), edges)
        for k in x:
            assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), (s, k)
    for (ia, x), (ib, y) in zip(B.eval_batches(a, 8, edges), B.eval_batches(b, 8, edges)):
        assert np.array_equal(ia, ib)
        assert all(np.array_equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("tokenization", ["residual", "chunks", "residual+value_tables"])
def test_a_store_holds_the_examples_of_load_split_and_gives_the_same_batches(
        data, tmp_path, tokenization):
    params, _, paths = data
    dec = copy.deepcopy(params["decompiler"])
    dec["input"].update(tokenization=tokenization.split("+")[0], chunk_size=64,
                        value_tables="value_tables" in tokenization)
    # small limits, so that some programs are skipped for each reason
    full = B.load_split(paths["train"], dec["input"], 32)
    dec["input"]["max_tokens"] = int(np.quantile(full.n_tokens, 0.9))
    dec["max_program_tokens"] = int(np.quantile((full.programs != 0).sum(1), 0.8))
    out = str(tmp_path / "tokens.npz")
    record = T.tokenize_shard(dec["input"], dec["max_program_tokens"], paths["train"][0], out)
    ex = B.load_split(paths["train"], dec["input"], dec["max_program_tokens"])
    store = T.open_split([out], dec["input"], dec["max_program_tokens"])
    assert isinstance(store, T.TokenStore)
    assert set(record["skipped"]) == {"program_too_long", "weights_too_large"}
    assert store.skipped == ex.skipped == record["skipped"]
    assert len(store) == len(ex) == record["programs"]
    assert store.ids == ex.ids
    assert np.array_equal(store.n_tokens, ex.n_tokens)
    assert np.array_equal(store.length, ex.length)
    assert np.array_equal(store.programs, ex.programs)
    _same_batches(ex, store)


def test_a_store_spans_shards_in_order_and_keeps_no_weights_in_memory(data, tmp_path):
    params, _, paths = data
    dec = params["decompiler"]
    shards = [paths["tokens/" + s][0] for s in ("train", "val", "test")]
    store = T.TokenStore(shards, dec["input"], dec["max_program_tokens"])
    ex = B.load_split([paths[s][0] for s in ("train", "val", "test")], dec["input"],
                      dec["max_program_tokens"])
    _same_batches(ex, store, steps=3)
    # what the store keeps: offsets and per-program integers, not the features
    held = [v for v in vars(store).values() if isinstance(v, np.ndarray)]
    held += [a for v in vars(store).values() if isinstance(v, list)
             for a in v if isinstance(a, np.ndarray)]
    assert sum(a.nbytes for a in held) <= 48 * len(store) + 64 * len(shards)
    assert sum(a.nbytes for a in held) < ex.features.nbytes / 20


def test_the_file_is_a_plain_uncompressed_npz_anyone_can_read(data):
    params, _, paths = data
    path = paths["tokens/train"][0]
    z = np.load(path)
    ex = B.load_split(paths["train"], params["decompiler"]["input"],
                      params["decompiler"]["max_program_tokens"])
    i = len(ex) // 2
    b0, b1 = z["features_zlib_offsets"][i:i + 2]
    t0, t1 = z["token_offsets"][i:i + 2]
    width = ex.features.shape[1]
    features = np.frombuffer(zlib.decompress(z["features_zlib"][b0:b1].tobytes()),
                             "<f4").reshape(-1, width)
    assert np.array_equal(features, ex.features[ex.offsets[i]:ex.offsets[i + 1]])
    assert np.array_equal(z["kind"][t0:t1], ex.kind[ex.offsets[i]:ex.offsets[i + 1]])
    assert np.array_equal(z["program"][i], ex.programs[i])
    cols = S.StoredColumns(path)
    assert set(cols.columns) == {f.removesuffix(".npy") for f in z.files}


def test_a_stale_token_shard_is_refused_naming_the_key(data):
    params, _, paths = data
    dec = copy.deepcopy(params["decompiler"])
    dec["input"]["max_tokens"] += 1
    with pytest.raises(ValueError, match=r"decompiler\.input\.max_tokens.*rerun its tokenize"):
        T.TokenStore(paths["tokens/train"], dec["input"], dec["max_program_tokens"])
    with pytest.raises(ValueError, match=r"decompiler\.max_program_tokens"):
        T.TokenStore(paths["tokens/train"], params["decompiler"]["input"], 99)
    # buckets only pads batches: a store made before an edit of it is still good
    dec = copy.deepcopy(params["decompiler"])
    dec["input"]["buckets"] += 3
    assert len(T.TokenStore(paths["tokens/train"], dec["input"], dec["max_program_tokens"]))


def test_mixed_kinds_and_compressed_files_are_refused(data, tmp_path):
    params, _, paths = data
    dec = params["decompiler"]
    with pytest.raises(ValueError, match="mix token shards and zoo-format shards"):
        T.open_split(paths["tokens/train"] + paths["val"], dec["input"],
                     dec["max_program_tokens"])
    squeezed = tmp_path / "squeezed.npz"
    S.save_npz(squeezed, dict(np.load(paths["tokens/train"][0])))  # deflate-compressed
    with pytest.raises(S.FileFormatError, match="compressed"):
        S.StoredColumns(squeezed)
    assert not T.is_token_shard(str(squeezed))


def test_tokenize_verb_writes_the_same_file(data, tmp_path):
    params, _, paths = data
    cfg = S.dumps_json({"decompiler": {k: params["decompiler"][k]
                                       for k in ("input", "max_program_tokens")}})
    out = tmp_path / "t.npz"
    res = subprocess.run([sys.executable, "-m", "metamodels", "tokenize", "--config", cfg,
                          "--input", paths["val"][0], "--out", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "[tokenize]" in res.stderr
    # the file names its source, so compare with one made from the same path
    again = tmp_path / "again.npz"
    T.tokenize_shard(params["decompiler"]["input"], params["decompiler"]["max_program_tokens"],
                     paths["val"][0], str(again))
    assert out.read_bytes() == again.read_bytes()
    bad = subprocess.run([sys.executable, "-m", "metamodels", "tokenize", "--config", cfg,
                          "--input", str(tmp_path / "missing.npz"), "--out", str(out)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "missing.npz" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_shards_written_before_value_tables_and_residual_slots_still_open(data, tmp_path):
    params, _, paths = data
    dec = copy.deepcopy(params["decompiler"])
    arrays = S.load_npz(paths["tokens/val"][0])
    rec = json.loads(str(arrays["shard_json"][0]))
    del rec["input"]["value_tables"]  # as an older version wrote it
    old = dict(arrays, shard_json=S.text_array([S.dumps_json(rec)]))
    del old["residual_slot"]  # nor had it that column
    S.save_npz(str(tmp_path / "old.npz"), old, compress=False)
    dec["input"]["value_tables"] = False
    store = T.TokenStore([str(tmp_path / "old.npz")], dec["input"], dec["max_program_tokens"])
    # it trains without the residual supervision, and refuses it rather than use empty targets
    batch = B.make_batch(store, np.arange(4), [int(store.n_tokens.max())])
    assert batch["residual_slot"].shape == (4, 1)
    from metamodels.decompiler.train import residual_targets
    with pytest.raises(ValueError, match="residual_supervision > 0 needs.*rerun the tokenize"):
        residual_targets(batch, dec["input"]["max_residual"], 16)
    dec["input"]["value_tables"] = True
    with pytest.raises(ValueError, match="value_tables = False, this run asks for True.*rerun"):
        T.TokenStore([str(tmp_path / "old.npz")], dec["input"], dec["max_program_tokens"])
