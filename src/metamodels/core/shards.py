"""Atomic, deterministic, pickle-free files.

Shards are ``.npz`` files (a zip of ``.npy`` arrays, readable by
``numpy.load(path)`` with the default ``allow_pickle=False``, or by any zip +
NPY reader). They are written by :func:`save_npz` rather than ``np.savez``
because numpy stamps each zip member with the current time; here every member
carries a fixed timestamp and a fixed order, so the same arrays always give
the same bytes. Strings are stored as fixed-width unicode arrays (``<U``) and
structured records as JSON text in such arrays; nothing is an object array.

Every write goes to a temporary file in the destination folder and is renamed
over the target only when complete, so a crash never leaves a partial file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pathlib
import tempfile
import zipfile
from typing import Any, Iterator, Mapping

import numpy as np

_EPOCH = (1980, 1, 1, 0, 0, 0)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yield a temporary path beside `path`; rename it over `path` on success."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = pathlib.Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def dumps_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=1, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_bytes(path, dumps_json(obj).encode())


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(pathlib.Path(path).read_text())


def csv_text(rows: list[Mapping[str, Any]], fields: list[str]) -> str:
    """CSV of ``rows`` with header ``fields`` (missing keys and None are empty cells)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in fields})
    return buf.getvalue()


def text_array(strings: list[str]) -> np.ndarray:
    """Fixed-width unicode array (never an object array)."""
    width = max([1] + [len(s) for s in strings])
    return np.array(strings, dtype=f"<U{width}")


def json_array(objs: list[Any]) -> np.ndarray:
    return text_array([json.dumps(o, sort_keys=True, separators=(",", ":")) for o in objs])


def ragged(arrays: list[np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate 1-D arrays; return (values, offsets[n+1]); item i = values[off[i]:off[i+1]]."""
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(a) for a in arrays])
    values = (np.concatenate([np.asarray(a, dtype=dtype) for a in arrays])
              if arrays else np.zeros(0, dtype=dtype))
    return values, offsets


def save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays as a deterministic, deflate-compressed .npz, atomically."""
    for name, arr in arrays.items():
        if np.asarray(arr).dtype == object:
            raise TypeError(f"{path}: array {name!r} has dtype object; store text or JSON instead")
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            for name in arrays:  # caller's order, kept stable
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]),
                                          allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue(), compresslevel=6)


def load_npz(path: str | os.PathLike, keys=None) -> dict[str, np.ndarray]:
    """The arrays of an .npz (pickle disabled): all, or only `keys` (the others are not read)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in (z.files if keys is None else keys)}
