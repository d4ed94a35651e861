"""Rotation and PCA compression of compiled models (metamodels.variants.desparsify)."""

from __future__ import annotations

import numpy as np
import pytest
from tracr.compiler import lib
from tracr.rasp import rasp

from metamodels.rasp.sampler import domain
from metamodels.variants.desparsify import (
    agreement,
    compressed_width,
    fold,
    pca_basis,
    pca_variant,
    random_orthogonal,
    residual_activations,
)
from metamodels.zoo.compiler import CompiledModel, compile_program
from metamodels.zoo.forward import encode, forward_logits, forward_residuals

VOCAB, MAX_LEN = [1, 2, 3], 4


def all_inputs() -> list[np.ndarray]:
    return domain(VOCAB, MAX_LEN, 10_000, 100, np.random.SeedSequence(0))


@pytest.fixture(scope="module")
def models() -> dict[str, CompiledModel]:
    programs = {
        "sort_unique": lib.make_sort_unique(rasp.tokens, rasp.tokens),  # categorical
        "frac_prevs": lib.make_frac_prevs(  # numerical Aggregate
            rasp.numerical(rasp.Map(lambda x: x == 1, rasp.tokens))),
    }
    return {name: compile_program(expr, set(VOCAB), MAX_LEN, mlp_exactness=100)
            for name, expr in programs.items()}


@pytest.mark.parametrize("name", ["sort_unique", "frac_prevs"])
def test_rotation_preserves_every_output(models, name):
    model = models[name]
    q = random_orthogonal(model.residual_size, np.random.default_rng(1))
    np.testing.assert_allclose(q.T @ q, np.eye(len(q)), atol=1e-12)
    rotated = fold(model, q)
    assert rotated.residual_size == model.residual_size
    # dense: almost no exact zeros left in the rotated embeddings
    assert np.mean(rotated.params["token_embed"]["embeddings"] == 0) < 0.05
    for x in all_inputs():
        ids = encode(model, x.tolist())
        for h, g in zip(forward_residuals(model, ids, np.float64),
                        forward_residuals(rotated, ids, np.float64)):
            np.testing.assert_allclose(h @ q, g, atol=1e-5)
        np.testing.assert_allclose(forward_logits(model, ids), forward_logits(rotated, ids),
                                   atol=1e-4)
    fid = agreement(model, rotated, all_inputs(), atol=1e-3)
    assert fid["inputs"] == 1.0 and fid["positions"] == 1.0
    assert fid["n_inputs"] == 3 + 9 + 27 + 81


def test_folded_model_round_trips_through_npz(models):
    model = fold(models["sort_unique"], random_orthogonal(models["sort_unique"].residual_size,
                                                          np.random.default_rng(2)))
    back = CompiledModel.from_npz_dict(model.to_npz_dict())
    np.testing.assert_array_equal(back.unembed, model.unembed)
    ids = encode(model, [[1, 2, 3, 1]])
    np.testing.assert_array_equal(forward_logits(back, ids), forward_logits(model, ids))


def toy_model(c_scale: float) -> CompiledModel:
    """Zero layers: the output is the token's own one-hot direction (a, b, c)."""
    tok = np.zeros((5, 3), np.float32)  # ids: 0=a 1=b 2=c 3=bos 4=pad
    tok[0, 0] = tok[1, 1] = 1.0
    tok[2, 2] = c_scale
    return CompiledModel(
        params={"token_embed": {"embeddings": tok},
                "pos_embed": {"embeddings": np.zeros((3, 3), np.float32)}},
        num_layers=0, num_heads=1, key_size=1, mlp_hidden_size=1, causal=False,
        residual_labels=["tokens:a", "tokens:b", "tokens:c"],
        input_tokens=["a", "b", "c", "bos", "pad"], bos_token="bos", pad_token="pad",
        output_values=["a", "b", "c"], categorical_output=True, unembed_indices=[0, 1, 2])


def test_pca_fidelity_on_a_hand_checkable_model():
    model = toy_model(c_scale=0.5)
    inputs = domain(["a", "b", "c"], 2, 100, 10, np.random.SeedSequence(0))
    acts = residual_activations(model, inputs)
    # c's direction has a quarter of a's and b's second moment: PCA to 2 dims drops it
    basis = pca_basis(acts, 2)
    np.testing.assert_allclose(basis[2], 0, atol=1e-12)  # spans a and b (tied), not c
    np.testing.assert_allclose(basis[:2] @ basis[:2].T, np.eye(2), atol=1e-12)
    small = fold(model, basis)
    # an input containing c decodes c as a (all-zero logits -> index 0):
    # 2 of 3 length-1 inputs and 4 of 9 length-2 inputs avoid c
    fid = agreement(model, small, inputs, atol=1e-3)
    assert fid["inputs"] == pytest.approx(6 / 12)
    assert fid["positions"] == pytest.approx((2 + 12) / (3 + 18))
    assert agreement(model, fold(model, pca_basis(acts, 3)), inputs, 1e-3)["inputs"] == 1.0


def test_ties_in_the_reference_are_not_compared():
    model = toy_model(c_scale=0.0)  # token c writes nothing: its output is a tie
    inputs = domain(["a", "b", "c"], 1, 100, 10, np.random.SeedSequence(0))
    fid = agreement(model, fold(model, random_orthogonal(3, np.random.default_rng(0))),
                    inputs, 1e-3)
    assert fid["undecided"] == 1 and fid["inputs"] == 1.0 and fid["positions"] == 1.0


def test_pca_variant(models):
    model = models["sort_unique"]
    rng = np.random.default_rng(3)
    small = pca_variant(model, rng, 0.9, all_inputs())
    k = compressed_width(model.residual_size, 0.9)
    assert small.residual_size == k < model.residual_size
    assert small.params["token_embed"]["embeddings"].shape == (model.vocab_size, k)
    assert agreement(model, small, all_inputs(), 1e-3)["inputs"] > 0.9
    again = pca_variant(model, np.random.default_rng(3), 0.9, all_inputs())
    np.testing.assert_array_equal(again.unembed, small.unembed)
    with pytest.raises(ValueError, match="C must have shape"):
        fold(model, np.eye(model.residual_size + 1))
