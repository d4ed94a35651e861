"""Image data layer: IDX and CIFAR-10 binary readers, safe download, seeded subsets."""

from __future__ import annotations

import gzip
import hashlib
import io
import pathlib
import tarfile

import numpy as np
import pytest

from metamodels.backdoor import images as I

FMNIST = pathlib.Path(I.FASHION_MNIST_ROOT)


# ---------------------------------------------------------------------------
# IDX

@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, compress, dtype):
    arr = (np.arange(2 * 3 * 4) * 37 % 251).astype(dtype).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    I.write_idx(path, arr, compress=compress)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == compress
    out = I.read_idx(path)
    assert out.dtype == np.dtype(dtype) and np.array_equal(out, arr)


def test_idx_header_is_big_endian(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(bytes([0, 0, 0x0C, 1]) + (3).to_bytes(4, "big")
                     + b"".join(v.to_bytes(4, "big", signed=True) for v in (1, -2, 70000)))
    assert I.read_idx(path).tolist() == [1, -2, 70000]


def test_idx_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad-magic"
    bad.write_bytes(b"\x00\x01\x08\x01" + bytes(8))
    with pytest.raises(I.DatasetError, match="bad-magic.*magic"):
        I.read_idx(bad)
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(bytes([0, 0, 8, 2]) + (3).to_bytes(4, "big")
                                    + (3).to_bytes(4, "big") + bytes(8)))
    with pytest.raises(I.DatasetError, match="short.gz.*size mismatch"):
        I.read_idx(short)


@pytest.mark.skipif(not FMNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_system_package():
    data = I.load_fashion_mnist(FMNIST)
    assert data.train_x.shape == (60000, 28, 28, 1) and data.train_x.dtype == np.uint8
    assert data.test_x.shape == (10000, 28, 28, 1) and data.test_y.shape == (10000,)
    assert data.shape == (28, 28, 1) and len(data.classes) == 10
    assert np.array_equal(np.bincount(data.train_y), [6000] * 10)
    assert np.array_equal(np.bincount(data.test_y), [1000] * 10)
    assert 0 < data.train_x.mean() < 255


def test_fashion_mnist_from_written_idx_and_missing_message(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"train_x": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
              "train_y": np.arange(6, dtype=np.uint8),
              "test_x": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
              "test_y": np.arange(4, dtype=np.uint8)}
    for i, (k, base) in enumerate(I.FASHION_MNIST_FILES.items()):
        gz = i % 2 == 0  # mixed plain and gzip files
        I.write_idx(tmp_path / (base + (".gz" if gz else "")), arrays[k], compress=gz)
    data = I.load_fashion_mnist(tmp_path)
    assert np.array_equal(data.train_x[..., 0], arrays["train_x"])
    assert np.array_equal(data.test_y, arrays["test_y"])
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(I.DatasetError) as e:
        I.load_fashion_mnist(tmp_path)
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "images.fashion_mnist_root" in msg


# ---------------------------------------------------------------------------
# CIFAR-10 binary

def test_cifar10_fixture_round_trip(tmp_path):
    written = I.write_cifar10_fixture(tmp_path, n_train_per_batch=3, n_test=4, seed=5)
    for root in (tmp_path, tmp_path / I.CIFAR10_DIR):  # parent or the batches dir itself
        data = I.read_cifar10_bin(root)
        assert data.train_x.shape == (15, 32, 32, 3) and data.test_x.shape == (4, 32, 32, 3)
        for k in ("train_x", "train_y", "test_x", "test_y"):
            assert np.array_equal(getattr(data, k), getattr(written, k)), k
        assert data.classes == list(I.CIFAR10_CLASSES) and data.shape == (32, 32, 3)
    again = I.write_cifar10_fixture(tmp_path / "b", n_train_per_batch=3, n_test=4, seed=5)
    assert np.array_equal(again.train_x, written.train_x)
    assert (tmp_path / "b" / I.CIFAR10_DIR / "data_batch_3.bin").read_bytes() == \
        (tmp_path / I.CIFAR10_DIR / "data_batch_3.bin").read_bytes()


def test_cifar10_channel_order_is_planar_rgb_to_hwc(tmp_path):
    d = tmp_path / I.CIFAR10_DIR
    I.write_cifar10_fixture(tmp_path, n_train_per_batch=1, n_test=1, seed=0)
    pos = np.arange(1024)
    red = (pos % 256).astype(np.uint8)            # varies with x (and y)
    green = (pos // 32 * 7 % 256).astype(np.uint8)  # varies with y only
    blue = np.full(1024, 200, np.uint8)
    (d / "test_batch.bin").write_bytes(bytes([7]) + red.tobytes() + green.tobytes()
                                       + blue.tobytes())
    data = I.read_cifar10_bin(tmp_path)
    assert data.test_y.tolist() == [7]
    img = data.test_x[0]
    for y, x in [(0, 0), (0, 5), (3, 1), (31, 30), (17, 9)]:
        assert img[y, x, 0] == (y * 32 + x) % 256
        assert img[y, x, 1] == y * 7 % 256
        assert img[y, x, 2] == 200


def test_cifar10_malformed_batch(tmp_path):
    I.write_cifar10_fixture(tmp_path, n_train_per_batch=2, n_test=2, seed=0)
    path = tmp_path / I.CIFAR10_DIR / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(I.DatasetError, match="data_batch_2.bin.*3073"):
        I.read_cifar10_bin(tmp_path)


def test_cifar10_missing_without_download_says_where(tmp_path):
    cfg = {"dataset": "cifar10", "cifar10_root": str(tmp_path / "nowhere"), "download": False}
    with pytest.raises(I.DatasetError) as e:
        I.load_images(cfg)
    msg = str(e.value)
    assert f"{tmp_path / 'nowhere' / I.CIFAR10_DIR}/*.bin" in msg
    assert "images.cifar10_root" in msg and "images.download" in msg
    assert not (tmp_path / "nowhere").exists()


def _fake_archive(tmp_path: pathlib.Path, extra: tarfile.TarInfo | None = None) -> pathlib.Path:
    src = tmp_path / "src"
    I.write_cifar10_fixture(src, n_train_per_batch=2, n_test=3, seed=9)
    archive = tmp_path / "fake.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / I.CIFAR10_DIR, arcname=I.CIFAR10_DIR)
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size))
    return archive


def test_download_checks_md5_and_extracts(tmp_path):
    archive = _fake_archive(tmp_path)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    root = tmp_path / "root"
    with pytest.raises(I.DatasetError, match="MD5"):
        I.download_cifar10(root, url=archive.as_uri(), md5="0" * 32)
    assert not (root / I.CIFAR10_DIR).exists() and list(root.iterdir()) == []
    d = I.download_cifar10(root, url=archive.as_uri(), md5=md5)
    assert d == root / I.CIFAR10_DIR and list(root.iterdir()) == [d]  # no temp files left
    data = I.read_cifar10_bin(root)
    ref = I.read_cifar10_bin(tmp_path / "src")
    assert np.array_equal(data.train_x, ref.train_x) and np.array_equal(data.test_y, ref.test_y)


def test_download_rejects_escaping_members(tmp_path):
    evil = tarfile.TarInfo("../evil.txt")
    evil.size = 3
    archive = _fake_archive(tmp_path, evil)
    root = tmp_path / "root"
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(I.DatasetError, match="unsafe"):
        I.download_cifar10(root, url=archive.as_uri(), md5=md5)
    assert not (tmp_path / "evil.txt").exists() and not (root / I.CIFAR10_DIR).exists()


def test_download_failure_says_where_to_put_files(tmp_path):
    root = tmp_path / "root"
    with pytest.raises(I.DatasetError) as e:
        I.download_cifar10(root, url=(tmp_path / "absent.tar.gz").as_uri())
    msg = str(e.value)
    assert "could not download" in msg and "images.cifar10_root" in msg
    assert f"{root / I.CIFAR10_DIR}/*.bin" in msg


def test_load_images_download_uses_default_url(tmp_path, monkeypatch):
    archive = _fake_archive(tmp_path)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    real = I.download_cifar10
    calls = []

    def fake_download(root):  # load_images -> download_cifar10(root), served from a local file
        calls.append(root)
        return real(root, url=archive.as_uri(), md5=md5, timeout=5.0)

    monkeypatch.setattr(I, "download_cifar10", fake_download)
    data = I.load_images({"dataset": "cifar10", "cifar10_root": str(tmp_path / "r"),
                          "download": True})
    assert data.train_x.shape == (10, 32, 32, 3) and calls == [str(tmp_path / "r")]
    I.load_images({"dataset": "cifar10", "cifar10_root": str(tmp_path / "r"), "download": True})
    assert len(calls) == 1  # present files are not fetched again


# ---------------------------------------------------------------------------
# load_images and subsets

def test_subset_is_balanced_seeded_sorted():
    labels = np.repeat(np.arange(10), [50, 50, 50, 50, 50, 50, 50, 50, 50, 3])
    idx = I.subset_indices(labels, 95, seed=[0, 0])
    assert len(idx) == 95 and np.all(np.diff(idx) > 0)
    counts = np.bincount(labels[idx], minlength=10)
    assert counts[9] == 3 and set(counts[:9]) <= {10, 11}  # short class all taken, rest even
    assert np.array_equal(idx, I.subset_indices(labels, 95, seed=[0, 0]))
    assert not np.array_equal(idx, I.subset_indices(labels, 95, seed=[1, 0]))
    assert np.array_equal(I.subset_indices(labels, 0, 3), np.arange(len(labels)))
    assert np.array_equal(I.subset_indices(labels, 10**6, 3), np.arange(len(labels)))


def test_load_images_limits_and_errors(tmp_path):
    written = I.write_cifar10_fixture(tmp_path, n_train_per_batch=40, n_test=30, seed=1)
    cfg = {"dataset": "cifar10", "cifar10_root": str(tmp_path), "train_limit": 50,
           "test_limit": 20, "subset_seed": 3}
    a, b = I.load_images(cfg), I.load_images(dict(cfg))
    assert a.train_x.shape == (50, 32, 32, 3) and a.test_y.shape == (20,)
    assert np.array_equal(a.train_x, b.train_x) and np.array_equal(a.test_y, b.test_y)
    idx = I.subset_indices(written.train_y, 50, [3, 0])
    assert np.array_equal(a.train_x, written.train_x[idx])
    full = I.load_images({"dataset": "cifar10", "cifar10_root": str(tmp_path)})
    assert np.array_equal(full.train_y, written.train_y)
    with pytest.raises(ValueError, match="fashion_mnist, cifar10"):
        I.load_images({"dataset": "mnist"})


@pytest.mark.skipif(not FMNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_load_images_fashion_mnist_subset():
    data = I.load_images({"dataset": "fashion_mnist", "train_limit": 100, "test_limit": 20})
    assert data.train_x.shape == (100, 28, 28, 1) and data.name == "fashion_mnist"
    assert np.array_equal(np.bincount(data.train_y), [10] * 10)
    assert np.array_equal(np.bincount(data.test_y), [2] * 10)


def test_download_refuses_to_overwrite_partial_directory(tmp_path):
    archive = _fake_archive(tmp_path)
    root = tmp_path / "root"
    (root / I.CIFAR10_DIR).mkdir(parents=True)
    (root / I.CIFAR10_DIR / "data_batch_1.bin").write_bytes(b"keep")
    with pytest.raises(I.DatasetError, match="incomplete.*data_batch_2.bin"):
        I.download_cifar10(root, url=archive.as_uri(), md5="0" * 32)
    assert (root / I.CIFAR10_DIR / "data_batch_1.bin").read_bytes() == b"keep"


def test_downsample_averages_blocks_and_rounds_half_up():
    x = np.zeros((1, 5, 4, 1), np.uint8)
    x[0, :2, :2, 0] = [[0, 1], [2, 2]]          # mean 1.25 -> 1
    x[0, :2, 2:, 0] = [[1, 2], [2, 2]]          # mean 1.75 -> 2
    x[0, 2:4, :2, 0] = [[0, 1], [1, 0]]         # mean 0.5 -> 1 (half up)
    x[0, 2:4, 2:, 0] = 255
    x[0, 4] = 99                                # odd trailing row: dropped
    out = I.downsample(x, 2)
    assert out.dtype == np.uint8 and out.shape == (1, 2, 2, 1)
    assert out[0, :, :, 0].tolist() == [[1, 2], [1, 255]]
    assert I.downsample(x, 1) is x
    with pytest.raises(ValueError, match="images.downsample"):
        I.downsample(x, 0)
    with pytest.raises(ValueError, match="larger than the images"):
        I.downsample(x, 6)
