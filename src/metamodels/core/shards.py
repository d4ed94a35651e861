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

Every read goes through :func:`load_npz` or :func:`read_json`. A file that is
missing, a directory, truncated, not an ``.npz`` (or not JSON), or whose
columns are missing or do not parse raises :class:`FileFormatError` (a
``ValueError``) naming the file and the column, which every verb of ``python
-m metamodels`` reports in one line (``error: FILE: what is wrong``), exit 2.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import pathlib
import tempfile
import threading
import zipfile
import zlib
from typing import Any, Iterator, Mapping

import numpy as np

_EPOCH = (1980, 1, 1, 0, 0, 0)

# Text columns that hold JSON (docs/data-formats.md): every ``*_json`` column, and the
# one-element ``layout``/``meta``/``config`` columns of CNN zoo, detector and modadd files.
JSON_COLUMNS = ("layout", "meta", "config")


class FileFormatError(ValueError):
    """A file a verb reads is missing, unreadable or not in the expected format.

    ``str(e)`` is one line, ``FILE: what is wrong``; ``path`` and ``column`` (None when the
    fault is the whole file) say where."""

    def __init__(self, path: str | os.PathLike, what: str, column: str | None = None):
        self.path, self.what, self.column = str(path), what, column
        super().__init__(f"{path}: {what}")


class Arrays(dict):
    """The arrays of one ``.npz`` file (:func:`load_npz`), by column name; a missing column
    raises :class:`FileFormatError` naming the file, not a bare ``KeyError``."""

    def __init__(self, path: str | os.PathLike, arrays=()):
        super().__init__(arrays)
        self.path = str(path)

    def __missing__(self, key):
        raise FileFormatError(self.path, f"no '{key}' column", column=key)

    def __reduce__(self):  # pickles (worker processes) as its path and a plain dict
        return (Arrays, (self.path, dict(self)))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yield a temporary path beside `path`; rename it over `path` on success.

    Temporary files of `path` that a killed writer left behind (``.NAME.*.tmp``: a SIGKILL
    skips the clean-up below) are removed first; one writer per output, as in the pipeline.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
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
    """The JSON document in `path`; :class:`FileFormatError` when it is missing or not JSON."""
    try:
        text = pathlib.Path(path).read_text()
    except OSError as e:
        raise FileFormatError(path, os_error_text(e)) from None
    except UnicodeDecodeError:
        raise FileFormatError(path, "not a JSON file (not UTF-8 text)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise FileFormatError(path, f"not valid JSON ({_json_error(e)})") from None


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


def save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray],
             compress: bool = True) -> None:
    """Write arrays as a deterministic .npz, atomically: deflate-compressed, or with
    ``compress=False`` stored as they are, so that :class:`StoredColumns` can read any rows of
    a column without reading the rest of the file (``numpy.load`` reads both kinds)."""
    for name, arr in arrays.items():
        if np.asarray(arr).dtype == object:
            raise TypeError(f"{path}: array {name!r} has dtype object; store text or JSON instead")
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=method, allowZip64=True) as zf:
            for name in arrays:  # caller's order, kept stable
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]),
                                          allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
                info.compress_type = method
                info.external_attr = 0o644 << 16
                if compress:
                    zf.writestr(info, buf.getvalue(), compresslevel=6)
                else:
                    zf.writestr(info, buf.getvalue())


class StoredColumns:
    """Rows of the columns of an uncompressed ``.npz`` (``save_npz(..., compress=False)``),
    read on demand with ``os.pread``: only the bytes asked for are read, so a reader's memory
    does not grow with the file. Safe to use from several threads.

    ``columns`` maps each column to ``(byte offset of its first element, dtype, shape)``.
    :class:`FileFormatError` names the file when it is not such an ``.npz`` or a column is
    compressed, not C-ordered, or missing."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.columns: dict[str, tuple[int, np.dtype, tuple[int, ...]]] = {}
        self._fd: int | None = None
        self._lock = threading.Lock()
        try:
            with open(self.path, "rb") as f, zipfile.ZipFile(f) as zf:
                for info in zf.infolist():
                    name = info.filename.removesuffix(".npy")
                    if info.compress_type != zipfile.ZIP_STORED:
                        raise FileFormatError(self.path, f"column '{name}' is compressed; "
                                              "this reader needs a stored (uncompressed) .npz",
                                              name)
                    f.seek(info.header_offset)
                    local = f.read(30)
                    if local[:4] != b"PK\x03\x04":
                        raise zipfile.BadZipFile
                    skip = int.from_bytes(local[26:28], "little") + \
                        int.from_bytes(local[28:30], "little")
                    f.seek(info.header_offset + 30 + skip)
                    version = np.lib.format.read_magic(f)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, fortran, dtype = read_header(f)
                    if fortran or dtype.hasobject:
                        raise FileFormatError(self.path, f"column '{name}' is not a plain "
                                              "C-ordered array", name)
                    self.columns[name] = (f.tell(), dtype, tuple(shape))
        except OSError as e:
            raise FileFormatError(self.path, os_error_text(e)) from None
        except (zipfile.BadZipFile, ValueError, EOFError) as e:
            if isinstance(e, FileFormatError):
                raise
            raise FileFormatError(self.path, "truncated or corrupt: not a readable .npz (zip) "
                                  "file") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self._column(name)[2]

    def _column(self, name: str):
        if name not in self.columns:
            raise FileFormatError(self.path, f"no '{name}' column", column=name)
        return self.columns[name]

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """``column[start:stop]`` (along the first axis), read from the file."""
        offset, dtype, shape = self._column(name)
        inner = int(np.prod(shape[1:], dtype=np.int64))
        if not 0 <= start <= stop <= shape[0]:
            raise FileFormatError(self.path, f"rows {start}:{stop} of column '{name}' are "
                                  f"outside its {shape[0]} rows", name)
        n = (stop - start) * inner * dtype.itemsize
        with self._lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
        data = os.pread(self._fd, n, offset + start * inner * dtype.itemsize)
        if len(data) != n:
            raise FileFormatError(self.path, f"column '{name}' is truncated", name)
        return np.frombuffer(data, dtype).reshape((stop - start,) + shape[1:])

    def all(self, name: str) -> np.ndarray:
        return self.rows(name, 0, self._column(name)[2][0]).copy()

    def close(self, _close=os.close) -> None:  # bound now: ``os`` may be gone at exit
        if getattr(self, "_fd", None) is not None:
            _close(self._fd)
            self._fd = None

    def __del__(self):
        self.close()


def load_npz(path: str | os.PathLike, keys=None, check_json: bool = True) -> Arrays:
    """The arrays of an .npz (pickle disabled): all, or only `keys` (the others are not read).

    The one reader of every ``.npz`` this project reads. Anything wrong with the file — missing,
    a directory, empty, truncated, not an .npz, a requested column missing, a member that does
    not decompress or is not a plain array, or (with `check_json`) a JSON column
    (:data:`JSON_COLUMNS`) whose text does not parse — raises :class:`FileFormatError` naming
    the file and the column. A column asked for later that the file lacks raises it too."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise FileFormatError(path, os_error_text(e)) from None
    if not head:
        raise FileFormatError(path, "empty file, not an .npz")
    if head.startswith(b"\x93NUMPY"):
        raise FileFormatError(path, "a single-array .npy file, not an .npz")
    if not head.startswith(b"PK"):
        raise FileFormatError(path, "not an .npz file (not a zip archive)")
    try:
        z = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, zlib.error, ValueError, OSError):
        raise FileFormatError(path, "truncated or corrupt: not a readable .npz (zip) file") \
            from None
    out = Arrays(path)
    with z:
        names = z.files
        for k in (names if keys is None else keys):
            if k not in names:
                raise FileFormatError(path, f"no '{k}' column", column=k)
            try:
                out[k] = z[k]
            except (zipfile.BadZipFile, EOFError, zlib.error, OSError):
                raise FileFormatError(path, f"column '{k}' is truncated or corrupt",
                                      column=k) from None
            except ValueError:
                raise FileFormatError(path, f"column '{k}' is not a plain array (object or "
                                      "damaged data)", column=k) from None
    if check_json:
        for k, a in out.items():
            if k.endswith("_json") or k in JSON_COLUMNS:
                _check_json_column(path, k, a)
    return out


def _check_json_column(path, key: str, a: np.ndarray) -> None:
    if a.dtype.kind != "U":
        raise FileFormatError(path, f"column '{key}' should hold JSON text, has dtype {a.dtype}",
                              column=key)
    for i, text in enumerate(a.reshape(-1)):
        try:
            json.loads(str(text))
        except json.JSONDecodeError as e:
            where = f" row {i}" if a.size > 1 else ""
            raise FileFormatError(path, f"column '{key}'{where} is not valid JSON "
                                  f"({_json_error(e)})", column=key) from None


def _json_error(e: json.JSONDecodeError) -> str:
    return f"{e.msg} at line {e.lineno} column {e.colno}"


def os_error_text(e: OSError) -> str:
    """What is wrong with a file, in words, for an OSError from opening it."""
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(e, NotADirectoryError):
        return "a part of the path is not a directory"
    if isinstance(e, PermissionError):
        return "permission denied"
    return (e.strerror or type(e).__name__).lower()
