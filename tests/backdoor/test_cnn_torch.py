"""The PyTorch CPU path of the CNN zoo trains the same models as the JAX path.

Same forward values and gradients for the same weights (float tolerance), the same trained
model up to rounding (as close as the JAX path is to itself with another ``vmap_group``),
the same record, and the same bytes twice.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from metamodels.backdoor import cnn, cnn_torch
from tests.backdoor.test_cnn import SHAPE, TINY, random_params, tiny_images, tiny_specs


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def test_weights_round_trip():
    p = jax.tree_util.tree_map(np.asarray, random_params(0))
    back = cnn_torch.from_torch_params(cnn_torch.to_torch_params(p))
    np.testing.assert_array_equal(cnn.flatten(back), cnn.flatten(p))


def test_forward_and_gradients_match_jax():
    params = random_params(1)
    x = np.random.default_rng(2).random((6, *SHAPE), dtype=np.float32)
    y = np.array([0, 3, 7, 1, 9, 3])

    def loss(p):
        logits = cnn.forward(p, jnp.asarray(x))
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    (jl, jlogits), jgrad = jax.value_and_grad(loss, has_aux=True)(params)
    tensors = cnn_torch.to_torch_params(jax.tree_util.tree_map(np.asarray, params))
    tlogits = cnn_torch.forward(tensors, _nchw(x))
    tl = torch.nn.functional.cross_entropy(tlogits, torch.from_numpy(y))
    tl.backward()
    np.testing.assert_allclose(tlogits.detach().numpy(), np.asarray(jlogits), atol=1e-4, rtol=1e-4)
    assert abs(float(tl) - float(jl)) < 1e-4
    tgrad = cnn_torch.from_torch_params({k: t.grad for k, t in tensors.items()})
    np.testing.assert_allclose(cnn.flatten(tgrad), cnn.flatten(jgrad), atol=1e-4, rtol=1e-3)


@pytest.fixture(scope="module")
def both():
    data = tiny_images(n_train=128)
    cfg = dict(TINY, epochs=2)
    return data, {b: cnn.train_models(data, tiny_specs(), cfg, backend=b)
                  for b in ("torch", "jax")}


def test_same_models_as_the_jax_path(both):
    """16 AdamW steps: weights within 0.05 of the JAX path's (lr 0.01: a few steps whose sign
    flips on a rounding-level gradient; the JAX path is as far from itself across vmap
    groups), the same losses to 1e-3, accuracy and ASR within one test image."""
    _, res = both
    t, j = res["torch"], res["jax"]
    assert t["weights"].shape == j["weights"].shape
    assert t["layout"] == j["layout"]
    diff = np.abs(t["weights"] - j["weights"])
    assert diff.max() < 0.05, diff.max()
    assert np.median(diff) < 1e-3
    np.testing.assert_allclose(t["train_loss"], j["train_loss"], atol=1e-3)
    n_test = 24
    np.testing.assert_allclose(t["clean_acc"], j["clean_acc"], atol=1.5 / n_test)
    np.testing.assert_allclose(t["asr"], j["asr"], atol=1.5 / 20, equal_nan=True)
    assert np.isnan(t["asr"][0]) and not np.isnan(t["asr"][1:]).any()


def test_evaluation_matches_jax_evaluate(both):
    data, res = both
    acc, asr = cnn.evaluate(res["torch"]["weights"], data, tiny_specs(), TINY)
    np.testing.assert_allclose(res["torch"]["clean_acc"], acc, atol=1e-12)
    np.testing.assert_allclose(res["torch"]["asr"], asr, atol=1e-12, equal_nan=True)


def test_same_bytes_twice(both):
    data, res = both
    again = cnn.train_models(data, tiny_specs(), dict(TINY, epochs=2), backend="torch")
    for k in ("weights", "train_loss", "clean_acc", "asr"):
        assert np.asarray(again[k]).tobytes() == np.asarray(res["torch"][k]).tobytes(), k


def test_backend_by_device_and_unknown_backend(both):
    data, _ = both
    on_cpu = jax.default_backend() == "cpu"
    assert cnn.backend_for({"cpu_path": "torch"}) == ("torch" if on_cpu else "jax")
    assert cnn.backend_for(None) == "jax"
    if on_cpu:
        with pytest.raises(ValueError, match="cpu_path must be one of"):
            cnn.backend_for({"cpu_path": "tf"})
    with pytest.raises(ValueError, match="unknown CNN training backend 'tf'"):
        cnn.train_models(data, tiny_specs(), TINY, backend="tf")
