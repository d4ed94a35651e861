"""The hyperparameter zoo's data sets: real images, one shape, seeded class-balanced subsets."""

import numpy as np
import pytest

from metamodels.backdoor import images as I
from metamodels.hparams import data as D

ZOO = {"seed": 0, "image_side": 14, "train_limit": 300, "test_limit": 200}


def test_digits_are_scikit_learn_s_resized_and_split_without_overlap():
    from sklearn.datasets import load_digits
    d = D.load("digits", ZOO, {})
    assert d.train_x.shape == (300, 14, 14, 1) and d.test_x.shape == (200, 14, 14, 1)
    assert d.train_x.dtype == np.uint8 and d.train_x.max() > 200
    assert np.bincount(d.test_y, minlength=10).tolist() == [20] * 10
    full = D.load_digits(200, 0)
    raw = np.rint(load_digits().images * 255 / 16).astype(np.uint8)[..., None]
    # train and test partition scikit-learn's images (as a multiset of rows)
    both = np.concatenate([full.train_x, full.test_x]).reshape(len(raw), -1)
    assert sorted(map(bytes, both)) == sorted(map(bytes, raw.reshape(len(raw), -1)))
    assert D.resize(raw, 8) is raw
    again = D.load("digits", ZOO, {})
    assert np.array_equal(again.train_x, d.train_x) and np.array_equal(again.test_y, d.test_y)
    other = D.load("digits", {**ZOO, "seed": 1}, {})
    assert not np.array_equal(other.train_y, d.train_y)


def test_resize_shrinks_by_averaging_and_keeps_constant_images():
    x = np.full((2, 28, 28, 1), 77, np.uint8)
    assert np.all(D.resize(x, 14) == 77)
    checker = np.indices((28, 28)).sum(0) % 2 * 255
    small = D.resize(checker.astype(np.uint8)[None, ..., None], 14)
    # 2x2 blocks average to grey (the border rows/columns see the zero padding of the filter)
    assert np.all(np.abs(small[:, 1:-1, 1:-1].astype(int) - 128) <= 1)
    with pytest.raises(ValueError, match="uint8"):
        D.resize(x.astype(np.float32), 14)


def test_fashion_mnist_comes_at_the_same_shape(tmp_path):
    try:
        d = D.load("fashion_mnist", ZOO, {"fashion_mnist_root": I.FASHION_MNIST_ROOT})
    except I.DatasetError as e:
        pytest.skip(f"Fashion-MNIST not installed here: {e}")
    assert d.train_x.shape == (300, 14, 14, 1) and d.test_x.shape == (200, 14, 14, 1)
    digits = D.load("digits", ZOO, {})
    assert d.shape == digits.shape and d.num_classes == digits.num_classes == 10
    assert not np.array_equal(d.train_x, digits.train_x)


def test_missing_fashion_mnist_and_unknown_sets_say_what_to_do(tmp_path):
    with pytest.raises(I.DatasetError):
        D.load("fashion_mnist", ZOO, {"fashion_mnist_root": str(tmp_path)})
    with pytest.raises(ValueError, match="hparam_zoo.choices.dataset"):
        D.load("svhn", ZOO, {})
    with pytest.raises(ValueError, match="test_limit"):
        D.load_digits(5000, 0)
