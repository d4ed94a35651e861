"""Image data sets of the hyperparameter zoo, all brought to one grayscale shape.

Seed 000 App. A trains its Eilertsen-style zoo on several real data sets (MNIST, CIFAR-10,
SVHN, Fashion-MNIST, STL-10). Offline here, two real sets are available:

``fashion_mnist``  Fashion-MNIST (Debian's dataset-fashion-mnist, read by
                   :func:`metamodels.backdoor.images.load_fashion_mnist`): 28x28 grayscale,
                   60,000 train / 10,000 test.
``digits``         scikit-learn's bundled handwritten digits (UCI optical digits,
                   :func:`sklearn.datasets.load_digits`): 1,797 8x8 images with 17 gray
                   levels (0..16), scaled to 0..255. It has no official split: a seeded
                   class-balanced ``test_limit`` images are the test set, the rest train.

Every set is resized to ``side x side`` x 1 (:func:`resize`: bilinear with antialiasing, so
28 -> 14 averages and 8 -> 14 interpolates) and cut to seeded class-balanced subsets of at most
``train_limit`` / ``test_limit`` images (:func:`metamodels.backdoor.images.subset_indices`).
All sets have 10 classes, so every model of the zoo ends in the same Dense(10).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from metamodels.backdoor import images as I

DATASETS = ("fashion_mnist", "digits")


def resize(x: np.ndarray, side: int) -> np.ndarray:
    """uint8 images ``[N, H, W, C]`` -> uint8 ``[N, side, side, C]`` (bilinear, antialiased
    when shrinking, rounded to the nearest level). Unchanged when already that size."""
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"resize: expected uint8 [N, H, W, C], got {x.dtype} {x.shape}")
    n, h, w, c = x.shape
    if (h, w) == (side, side):
        return x
    import jax
    out = jax.image.resize(x.astype(np.float32), (n, side, side, c), "linear", antialias=True)
    return np.clip(np.rint(np.asarray(out)), 0, 255).astype(np.uint8)


def load_digits(test_limit: int, seed: int) -> I.Images:
    """scikit-learn's digits as uint8 [N, 8, 8, 1] (levels 0..16 scaled by 255/16), split into
    a seeded class-balanced test set of ``test_limit`` images (0: a fifth) and the rest."""
    try:
        from sklearn.datasets import load_digits as sk_load
    except ImportError as e:  # pragma: no cover - scikit-learn is pinned in requirements.lock
        raise I.DatasetError("hparam_zoo.choices.dataset lists digits, which needs scikit-learn "
                             "(pip install -r requirements.lock)") from e
    d = sk_load()
    x = np.rint(np.asarray(d.images, np.float64) * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = np.asarray(d.target, np.int64)
    n_test = int(test_limit) or len(y) // 5
    if n_test > len(y) // 2:
        raise ValueError(f"hparam_zoo.test_limit {test_limit} leaves no digits to train on "
                         f"(the set has {len(y)} images); use at most {len(y) // 2}")
    test = I.subset_indices(y, n_test, [seed, 2])
    train = np.setdiff1d(np.arange(len(y)), test)
    return I.Images(train_x=x[train], train_y=y[train], test_x=x[test], test_y=y[test],
                    name="digits", classes=[str(k) for k in range(10)])


def load(name: str, zoo: Mapping, images_cfg: Mapping) -> I.Images:
    """Data set ``name`` at ``zoo["image_side"]``, subsets of ``zoo["train_limit"]`` /
    ``zoo["test_limit"]`` (seeded by ``zoo["seed"]``). ``images_cfg`` gives where
    Fashion-MNIST lives (``fashion_mnist_root``). Raises DatasetError when its files are
    missing, ValueError for an unknown name."""
    seed = int(zoo["seed"])
    if name == "fashion_mnist":
        data = I.load_images({"dataset": "fashion_mnist",
                              "fashion_mnist_root": images_cfg.get("fashion_mnist_root",
                                                                   I.FASHION_MNIST_ROOT),
                              "train_limit": 0, "test_limit": 0})
    elif name == "digits":
        data = load_digits(int(zoo["test_limit"]), seed)
    else:
        raise ValueError(f"hparam_zoo.choices.dataset: unknown {name!r}; known: {list(DATASETS)}")
    tr = I.subset_indices(data.train_y, int(zoo["train_limit"]), [seed, 0])
    te = I.subset_indices(data.test_y, int(zoo["test_limit"]), [seed, 1])
    side = int(zoo["image_side"])
    return dataclasses.replace(data, train_x=resize(data.train_x[tr], side),
                               train_y=data.train_y[tr], test_x=resize(data.test_x[te], side),
                               test_y=data.test_y[te])
