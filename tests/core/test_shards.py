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
