"""Image data sets for the CNN backdoor zoo: Fashion-MNIST (IDX files) and CIFAR-10 (binary).

Everything is returned as :class:`Images`: ``uint8`` pixels in ``[N, H, W, C]`` (channels
last) and integer labels ``[N]``, for a training and a test split, plus the class names.
No pickle is read or written anywhere; the Python ("pickled") CIFAR-10 release is never used.

IDX format (Fashion-MNIST, same as MNIST)
    A 4-byte magic number: two zero bytes, a data-type code and the number of dimensions
    ``d``; then ``d`` sizes, each a big-endian unsigned 32-bit integer; then the data, row-major,
    big-endian. Type codes: ``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32,
    ``0x0D`` float32, ``0x0E`` float64. Files may be gzip-compressed (detected from the gzip
    magic bytes, not the name). Fashion-MNIST ships four files:
    ``train-images-idx3-ubyte`` (60000x28x28), ``train-labels-idx1-ubyte`` (60000),
    ``t10k-images-idx3-ubyte`` (10000x28x28), ``t10k-labels-idx1-ubyte`` (10000), each optionally
    with a ``.gz`` suffix. The Debian package ``dataset-fashion-mnist`` installs them under
    ``/usr/share/datasets/fashion-mnist/``. Images get a channel axis (C = 1).

CIFAR-10 binary format
    The directory ``cifar-10-batches-bin`` holds ``data_batch_1.bin`` .. ``data_batch_5.bin``
    (training, in that order), ``test_batch.bin`` and ``batches.meta.txt`` (one class name per
    line). Each ``.bin`` file is a sequence of 3073-byte records: one label byte (0..9), then
    3072 pixel bytes: the 1024 red values of the 32x32 image in row-major order, then the 1024
    green, then the 1024 blue. Records are converted to HWC. The official archive is
    ``cifar-10-binary.tar.gz`` (:data:`CIFAR10_URL`, MD5 :data:`CIFAR10_MD5`).

Subsets (``train_limit`` / ``test_limit``) are class-balanced: indices are shuffled with a
seeded generator, then taken round-robin over the classes (so class counts differ by at most
one when every class has enough images), and returned in their original order.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pathlib
import shutil
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
from typing import Mapping, Sequence

import numpy as np

from metamodels.core import shards as S

DATASETS = ("fashion_mnist", "cifar10")
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
CIFAR10_ROOT = "data/raw/cifar10"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_DIR = "cifar-10-batches-bin"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch.bin"
CIFAR10_META_FILE = "batches.meta.txt"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
                       "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
DOWNLOAD_TIMEOUT_S = 20.0

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CIFAR_SIDE = 32
_CIFAR_RECORD = 1 + 3 * _CIFAR_SIDE * _CIFAR_SIDE


class DatasetError(RuntimeError):
    """A data set is missing, malformed or could not be fetched (the message says the fix)."""


@dataclasses.dataclass(frozen=True)
class Images:
    """An image classification data set: uint8 pixels [N, H, W, C] and integer labels [N]."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    name: str
    classes: list[str]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(int(d) for d in self.train_x.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def to_float(x: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1]."""
    return np.asarray(x, dtype=np.float32) / np.float32(255.0)


# ---------------------------------------------------------------------------
# IDX

def _read_maybe_gzip(path: pathlib.Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DatasetError(f"{path}: corrupt gzip data ({e}); replace the file") from e
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzip) into a native-endian numpy array."""
    path = pathlib.Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DatasetError(f"{path}: not an IDX file (bad magic number {data[:4].hex()!r}; "
                           f"expected 00 00 <type code> <ndim>)")
    dtype = np.dtype(_IDX_TYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: IDX header truncated ({len(data)} bytes, needs {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DatasetError(f"{path}: IDX size mismatch: header says dims {list(dims)} "
                           f"({expected} bytes) but the file has {len(data)} bytes; "
                           f"the file is truncated or corrupt, replace it")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool = False) -> None:
    """Write `array` as an IDX file (gzip if `compress`), atomically. For fixtures and tests."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"write_idx: dtype {array.dtype} has no IDX type code")
    data = (bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.astype(_IDX_TYPES[code]).tobytes())
    if compress:
        data = gzip.compress(data, mtime=0)
    S.write_bytes(path, data)


def _find_idx(root: pathlib.Path, base: str) -> pathlib.Path | None:
    for name in (base, base + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


def load_fashion_mnist(root: str | os.PathLike = FASHION_MNIST_ROOT) -> Images:
    """Fashion-MNIST from the four IDX files in `root` (plain or .gz); images [N, 28, 28, 1]."""
    root = pathlib.Path(root)
    paths = {k: _find_idx(root, base) for k, base in FASHION_MNIST_FILES.items()}
    missing = [FASHION_MNIST_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise DatasetError(
            f"Fashion-MNIST files not found in {root}: missing {', '.join(missing)} "
            f"(plain or .gz). Install them with `apt-get install dataset-fashion-mnist` "
            f"(puts them in {FASHION_MNIST_ROOT}), or put the four IDX files in a directory and "
            f"set the parameter images.fashion_mnist_root to it.")
    arrays = {k: read_idx(p) for k, p in paths.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or x.dtype != np.uint8:
            raise DatasetError(f"{paths[split + '_x']}, {paths[split + '_y']}: expected uint8 "
                               f"images [N, H, W] and labels [N], got {x.dtype}{list(x.shape)} "
                               f"and {y.dtype}{list(y.shape)}")
        _check_labels(y, len(FASHION_MNIST_CLASSES), paths[f"{split}_y"])
    return Images(train_x=arrays["train_x"][..., None], train_y=arrays["train_y"],
                  test_x=arrays["test_x"][..., None], test_y=arrays["test_y"],
                  name="fashion_mnist", classes=list(FASHION_MNIST_CLASSES))


def _check_labels(y: np.ndarray, n_classes: int, source) -> None:
    if y.size and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise DatasetError(f"{source}: labels must lie in 0..{n_classes - 1}, found "
                           f"{int(y.min())}..{int(y.max())}; the file is corrupt, replace it")


# ---------------------------------------------------------------------------
# CIFAR-10 (binary release)

def cifar10_dir(root: str | os.PathLike) -> pathlib.Path:
    """The batches directory for `root`: `root/cifar-10-batches-bin`, or `root` itself."""
    root = pathlib.Path(root)
    if root.name != CIFAR10_DIR and not (root / CIFAR10_TRAIN_FILES[0]).is_file():
        return root / CIFAR10_DIR
    return root


def _cifar10_missing(root: str | os.PathLike) -> list[str]:
    d = cifar10_dir(root)
    return [n for n in CIFAR10_TRAIN_FILES + (CIFAR10_TEST_FILE,) if not (d / n).is_file()]


def _cifar10_missing_message(root: str | os.PathLike, missing: list[str]) -> str:
    d = cifar10_dir(root)
    return (f"CIFAR-10 binary files not found in {d}: missing {', '.join(missing)}. Put the "
            f"official binary release ({CIFAR10_URL}, extracted) so that the files are at "
            f"{d}/*.bin, or set the parameter images.cifar10_root "
            f"to the directory containing {CIFAR10_DIR}; or set images.download: true to fetch "
            f"it (needs internet).")


def read_cifar10_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 .bin file -> (uint8 images [N, 32, 32, 3] HWC, uint8 labels [N])."""
    path = pathlib.Path(path)
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise DatasetError(f"{path}: size {raw.size} bytes is not a positive multiple of the "
                           f"{_CIFAR_RECORD}-byte CIFAR-10 record; the file is truncated or not "
                           f"from the binary release, replace it")
    rec = raw.reshape(-1, _CIFAR_RECORD)
    labels = rec[:, 0].copy()
    _check_labels(labels, len(CIFAR10_CLASSES), path)
    x = rec[:, 1:].reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), labels


def _read_cifar10_classes(d: pathlib.Path) -> list[str]:
    meta = d / CIFAR10_META_FILE
    if not meta.is_file():
        return list(CIFAR10_CLASSES)
    names = [line.strip() for line in meta.read_text().splitlines() if line.strip()]
    if len(names) != len(CIFAR10_CLASSES):
        raise DatasetError(f"{meta}: expected {len(CIFAR10_CLASSES)} class names, one per line, "
                           f"found {len(names)}; replace the file")
    return names


def read_cifar10_bin(root: str | os.PathLike) -> Images:
    """CIFAR-10 from the binary release under `root` (or `root` = the batches directory)."""
    missing = _cifar10_missing(root)
    if missing:
        raise DatasetError(_cifar10_missing_message(root, missing))
    d = cifar10_dir(root)
    train = [read_cifar10_batch(d / n) for n in CIFAR10_TRAIN_FILES]
    test_x, test_y = read_cifar10_batch(d / CIFAR10_TEST_FILE)
    return Images(train_x=np.concatenate([t[0] for t in train]),
                  train_y=np.concatenate([t[1] for t in train]),
                  test_x=test_x, test_y=test_y, name="cifar10", classes=_read_cifar10_classes(d))


def _cifar10_records(x: np.ndarray, y: np.ndarray) -> bytes:
    planes = np.asarray(x, dtype=np.uint8).transpose(0, 3, 1, 2).reshape(len(x), -1)
    return np.concatenate([np.asarray(y, dtype=np.uint8)[:, None], planes], axis=1).tobytes()


def write_cifar10_fixture(root: str | os.PathLike, n_train_per_batch: int = 20,
                          n_test: int = 20, seed: int = 0) -> Images:
    """Write a small random data set in the CIFAR-10 binary layout under `root`.

    Files go to ``root/cifar-10-batches-bin``; returns the images and labels written.
    """
    rng = np.random.default_rng([seed, 10])
    d = pathlib.Path(root) / CIFAR10_DIR
    n_cls = len(CIFAR10_CLASSES)
    train_x = rng.integers(0, 256, (5 * n_train_per_batch, 32, 32, 3), dtype=np.uint8)
    train_y = rng.integers(0, n_cls, 5 * n_train_per_batch).astype(np.uint8)
    test_x = rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8)
    test_y = rng.integers(0, n_cls, n_test).astype(np.uint8)
    for i, name in enumerate(CIFAR10_TRAIN_FILES):
        sl = slice(i * n_train_per_batch, (i + 1) * n_train_per_batch)
        S.write_bytes(d / name, _cifar10_records(train_x[sl], train_y[sl]))
    S.write_bytes(d / CIFAR10_TEST_FILE, _cifar10_records(test_x, test_y))
    S.write_bytes(d / CIFAR10_META_FILE, ("\n".join(CIFAR10_CLASSES) + "\n\n").encode())
    return Images(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                  name="cifar10", classes=list(CIFAR10_CLASSES))


def _safe_member_name(member: tarfile.TarInfo, archive: str) -> pathlib.PurePosixPath:
    name = pathlib.PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or member.issym() or member.islnk() \
            or not (member.isfile() or member.isdir()):
        raise DatasetError(f"{archive}: unsafe archive member {member.name!r} (absolute path, "
                           f"'..', link or special file); refusing to extract. Fetch the archive "
                           f"again from {CIFAR10_URL}")
    return name


def _extract_regular(tar: tarfile.TarFile, dest: pathlib.Path, archive: str) -> None:
    """Extract only the regular files and directories of `tar` into `dest`, after checks."""
    members = tar.getmembers()
    names = [_safe_member_name(m, archive) for m in members]
    for m, name in zip(members, names):
        target = dest.joinpath(*name.parts)
        if m.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        src = tar.extractfile(m)
        assert src is not None
        with src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)


def download_cifar10(root: str | os.PathLike, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5,
                     timeout: float = DOWNLOAD_TIMEOUT_S) -> pathlib.Path:
    """Fetch the CIFAR-10 binary archive, check its MD5, extract it to `root/cifar-10-batches-bin`.

    `url` may be a ``file://`` URL (tests). The archive is streamed into a temporary directory
    inside `root`, checked, extracted there and the batches directory is renamed into place, so
    a failure leaves no partial data. Returns the batches directory.
    """
    final = cifar10_dir(root)
    root = final.parent
    missing = _cifar10_missing(final)
    if not missing:
        return final
    if final.exists():
        raise DatasetError(f"{final} exists but is incomplete (missing {', '.join(missing)}); "
                           f"remove it or complete it by hand before downloading again")
    root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".cifar10-download.", dir=root))
    try:
        archive = tmp / "cifar-10-binary.tar.gz"
        digest = hashlib.md5()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(archive, "wb") as f:
                while chunk := resp.read(1 << 20):
                    digest.update(chunk)
                    f.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise DatasetError(f"could not download CIFAR-10 from {url}: {e}. "
                               + _cifar10_missing_message(root, _cifar10_missing(root))) from e
        if digest.hexdigest() != md5.lower():
            raise DatasetError(f"{url}: MD5 {digest.hexdigest()} does not match the published "
                               f"{md5}; the download is corrupt or not the CIFAR-10 binary "
                               f"release. Nothing was written to {root}.")
        extracted = tmp / "extracted"
        try:
            with tarfile.open(archive, "r:gz") as tar:
                _extract_regular(tar, extracted, url)
        except tarfile.TarError as e:
            raise DatasetError(f"{url}: not a readable .tar.gz ({e})") from e
        if _cifar10_missing(extracted / CIFAR10_DIR):
            raise DatasetError(f"{url}: archive lacks {CIFAR10_DIR}/ with "
                               f"{', '.join(_cifar10_missing(extracted / CIFAR10_DIR))}")
        os.replace(extracted / CIFAR10_DIR, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------
# configuration entry point

def subset_indices(labels: np.ndarray, limit: int, seed: int | Sequence[int]) -> np.ndarray:
    """Sorted indices of a seeded, class-balanced subset of size `limit` (0 or >= N: all)."""
    labels = np.asarray(labels)
    n = len(labels)
    if limit < 0:
        raise ValueError(f"subset limit must be >= 0 (0 = all), got {limit}")
    if limit == 0 or limit >= n:
        return np.arange(n, dtype=np.int64)
    perm = np.random.default_rng(seed).permutation(n)
    shuffled = labels[perm]
    # rank of each shuffled item among the items of its class (0, 1, 2, ... per class)
    order = np.argsort(shuffled, kind="stable")
    starts = np.searchsorted(shuffled[order], shuffled[order], side="left")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts
    chosen = perm[np.lexsort((shuffled, rank))[:limit]]
    return np.sort(chosen).astype(np.int64)


def downsample(x: np.ndarray, factor: int) -> np.ndarray:
    """uint8 images [N, H, W, C] average-pooled over ``factor x factor`` blocks, rounded half up.

    Trailing rows/columns that do not fill a block are dropped: [N, H // f, W // f, C]. A
    factor of 1 returns `x` unchanged. Used for the CPU default (``images.downsample: 2``:
    Fashion-MNIST at 14x14 costs a quarter of the FLOPs per image; see docs/backdoor.md).
    """
    f = int(factor)
    if f < 1:
        raise ValueError(f"images.downsample must be a positive integer, got {factor!r}")
    if f == 1:
        return x
    n, h, w, c = x.shape
    if h < f or w < f:
        raise ValueError(f"images.downsample {f} is larger than the images ({h}x{w})")
    blocks = x[:, :h // f * f, :w // f * f].reshape(n, h // f, f, w // f, f, c)
    total = blocks.astype(np.uint32).sum(axis=(2, 4))
    return ((2 * total + f * f) // (2 * f * f)).astype(np.uint8)


def load_images(cfg: Mapping) -> Images:
    """The data set named by ``cfg['dataset']``, optionally cut to seeded class-balanced subsets
    and downsampled.

    Keys: dataset, fashion_mnist_root, cifar10_root, download, train_limit, test_limit,
    subset_seed (see the module docstring), downsample (:func:`downsample`; default 1).
    """
    data = _load_subset(cfg)
    f = int(cfg.get("downsample", 1))
    if f == 1:
        return data
    return dataclasses.replace(data, train_x=downsample(data.train_x, f),
                               test_x=downsample(data.test_x, f))


def _load_subset(cfg: Mapping) -> Images:
    name = cfg.get("dataset", "cifar10")
    if name == "fashion_mnist":
        data = load_fashion_mnist(cfg.get("fashion_mnist_root", FASHION_MNIST_ROOT))
    elif name == "cifar10":
        root = cfg.get("cifar10_root", CIFAR10_ROOT)
        missing = _cifar10_missing(root)
        if missing and cfg.get("download", False):
            download_cifar10(root)
        elif missing:
            raise DatasetError(_cifar10_missing_message(root, missing))
        data = read_cifar10_bin(root)
    else:
        raise ValueError(f"images.dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    seed = int(cfg.get("subset_seed", 0))
    tr = subset_indices(data.train_y, int(cfg.get("train_limit", 0)), [seed, 0])
    te = subset_indices(data.test_y, int(cfg.get("test_limit", 0)), [seed, 1])
    if len(tr) == len(data.train_y) and len(te) == len(data.test_y):
        return data
    return dataclasses.replace(data, train_x=data.train_x[tr], train_y=data.train_y[tr],
                               test_x=data.test_x[te], test_y=data.test_y[te])
