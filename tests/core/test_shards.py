"""Shard files: deterministic bytes, atomic writes, no pickle."""

from __future__ import annotations

import numpy as np
import pytest

from metamodels.core import shards as S


def test_npz_bytes_are_deterministic_and_loadable_without_pickle(tmp_path):
    arrays = {"a": np.arange(10, dtype=np.int32), "s": S.text_array(["x", "yz"]),
              "j": S.json_array([{"k": 1}, [2, 3]])}
    S.save_npz(tmp_path / "one.npz", arrays)
    S.save_npz(tmp_path / "two.npz", arrays)
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()
    assert (tmp_path / "one.npz").stat().st_mode & 0o044 == 0o044  # readable by others
    with np.load(tmp_path / "one.npz", allow_pickle=False) as z:
        assert z["a"].tolist() == list(range(10))
        assert z["s"].tolist() == ["x", "yz"]
        assert z["j"][0] == '{"k":1}'


def test_object_arrays_are_refused(tmp_path):
    with pytest.raises(TypeError, match="dtype object"):
        S.save_npz(tmp_path / "x.npz", {"o": np.array([None, 1], dtype=object)})
    assert not (tmp_path / "x.npz").exists()


def test_failed_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.json"
    S.write_json(target, {"old": True})
    with pytest.raises(RuntimeError):
        with S.atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("killed")
    assert S.read_json(target) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_ragged_round_trip():
    parts = [np.array([1, 2]), np.array([], dtype=np.int64), np.array([3])]
    values, off = S.ragged(parts, np.int32)
    assert [values[off[i]:off[i + 1]].tolist() for i in range(3)] == [[1, 2], [], [3]]


def test_atomic_write_removes_what_a_killed_writer_left(tmp_path):
    """A SIGKILL skips atomic_path's clean-up; the next write of that file removes its debris
    (and only its own: another output's temporary file stays)."""
    (tmp_path / ".x.npz.k1l2.tmp").write_bytes(b"half a file")
    (tmp_path / ".y.npz.k1l2.tmp").write_bytes(b"another writer's")
    S.write_bytes(tmp_path / "x.npz", b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".y.npz.k1l2.tmp", "x.npz"]
    assert (tmp_path / "x.npz").read_bytes() == b"whole"


def test_stored_columns_read_any_rows_of_an_uncompressed_npz(tmp_path):
    import concurrent.futures
    arrays = {"x": np.arange(60, dtype=np.float32).reshape(20, 3),
              "big": np.arange(1 << 16, dtype=np.int64), "text": S.text_array(["a", "bcd"]),
              "empty": np.zeros((0, 4), np.int32)}
    S.save_npz(tmp_path / "a.npz", arrays, compress=False)
    S.save_npz(tmp_path / "b.npz", arrays, compress=False)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    z = np.load(tmp_path / "a.npz")
    assert all(np.array_equal(z[k], v) for k, v in arrays.items())
    cols = S.StoredColumns(tmp_path / "a.npz")
    assert cols.shape("x") == (20, 3) and cols.shape("empty") == (0, 4)
    assert np.array_equal(cols.rows("x", 5, 9), arrays["x"][5:9])
    assert np.array_equal(cols.all("text"), arrays["text"])
    # many threads reading at once (the training prefetcher reads beside the main thread)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: cols.rows("big", i * 1000, i * 1000 + 7), range(60)))
    assert all(np.array_equal(g, arrays["big"][i * 1000:i * 1000 + 7]) for i, g in enumerate(got))
    with pytest.raises(S.FileFormatError, match="outside its 20 rows"):
        cols.rows("x", 18, 21)
    with pytest.raises(S.FileFormatError, match="no 'y' column"):
        cols.rows("y", 0, 1)
    cols.close()


def test_stored_columns_refuse_compressed_truncated_and_missing_files(tmp_path):
    arrays = {"x": np.arange(1000, dtype=np.float32)}
    S.save_npz(tmp_path / "deflated.npz", arrays)
    with pytest.raises(S.FileFormatError, match="'x' is compressed"):
        S.StoredColumns(tmp_path / "deflated.npz")
    S.save_npz(tmp_path / "stored.npz", arrays, compress=False)
    data = (tmp_path / "stored.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:len(data) // 2])
    with pytest.raises(S.FileFormatError, match="cut.npz: truncated or corrupt"):
        S.StoredColumns(tmp_path / "cut.npz")
    with pytest.raises(S.FileFormatError, match="missing.npz"):
        S.StoredColumns(tmp_path / "missing.npz")
