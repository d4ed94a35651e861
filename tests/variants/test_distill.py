"""Distillation into compressed students (metamodels.variants.distill).

Two training configurations are compiled in this file (one compressed, one
natural); every test that trains shares one of them, so XLA compiles each
once per session.
"""

from __future__ import annotations

import numpy as np
import pytest
from tracr.compiler import lib
from tracr.rasp import rasp

from metamodels.rasp.sampler import domain
from metamodels.variants import distill as D
from metamodels.variants.desparsify import compressed_width, fold
from metamodels.zoo.compiler import CompiledModel, compile_program
from metamodels.zoo.forward import encode, forward_logits, forward_residuals

VOCAB, MAX_LEN, ATOL = [1, 2, 3], 4, 1e-3

# sort_unique's residual activations have rank 15 of 19: D' = 15 is exact for PCA.
COMPRESSED = dict(D.DEFAULTS, ratio=0.8, group_size=1, steps=200, eval_every=100)
NATURAL = dict(D.DEFAULTS, ratio=0.6, group_size=2, steps=200, eval_every=100)


def all_inputs() -> list[np.ndarray]:
    return domain(VOCAB, MAX_LEN, 10_000, 100, np.random.SeedSequence(0))


@pytest.fixture(scope="module")
def models() -> dict[str, CompiledModel]:
    programs = {
        "sort_unique": (lib.make_sort_unique(rasp.tokens, rasp.tokens), False),  # categorical
        "frac_prevs": (lib.make_frac_prevs(  # numerical, causal
            rasp.numerical(rasp.Map(lambda x: x == 1, rasp.tokens))), True),
        "reverse": (lib.make_reverse(rasp.tokens), False),  # 4 layers
    }
    return {name: compile_program(expr, set(VOCAB), MAX_LEN, mlp_exactness=100, causal=causal)
            for name, (expr, causal) in programs.items()}


def random_c(model: CompiledModel, ratio: float, seed: int) -> np.ndarray:
    d = model.residual_size
    rng = np.random.default_rng(seed)
    return rng.standard_normal((d, compressed_width(d, ratio))) / np.sqrt(d)


@pytest.mark.parametrize("name", ["sort_unique", "frac_prevs", "reverse"])
def test_read_write_form_equals_fold_then_forward(models, name):
    model = models[name]
    c = random_c(model, 0.6, 1)
    folded = fold(model, c)
    assert folded.residual_size == c.shape[1]
    for x in all_inputs():
        ids = encode(model, x.tolist())
        residuals, logits = D.read_write_forward(model, c, ids)
        stored = forward_residuals(folded, ids)
        assert len(residuals) == len(stored) == 2 * model.num_layers + 1
        for r, s in zip(residuals, stored):
            np.testing.assert_allclose(s, r, rtol=1e-4, atol=1e-4 * (1 + np.abs(r).max()))
        np.testing.assert_allclose(forward_logits(folded, ids), logits,
                                   rtol=1e-4, atol=1e-4 * (1 + np.abs(logits).max()))


def test_padding_preserves_every_teacher_and_student(models):
    group = [models["sort_unique"], models["frac_prevs"]]
    packed = D.pack(group, 0.6)
    dims = [D.Dims.of(m, 0.6) for m in group]
    assert dims[0] != dims[1] and packed.padded == D.Dims.max(dims)
    cs = [random_c(m, 0.6, 2 + i) for i, m in enumerate(group)]
    params = D.init_params(packed, [{"C": c.astype(np.float32)} for c in cs])
    ids = encode(group[0], [[1, 2, 3, 1], [3, 3, 2, 1], [2, 1, 1, 3]])
    t_out, s_out, dists = (np.asarray(a) for a in D.group_outputs(packed, params, ids))
    for j, (m, c) in enumerate(zip(group, cs)):
        outputs, layers = dims[j].outputs, dims[j].layers
        np.testing.assert_allclose(t_out[j, ..., :outputs], forward_logits(m, ids), atol=1e-5)
        residuals, logits = D.read_write_forward(m, c, ids)
        np.testing.assert_allclose(s_out[j, ..., :outputs], logits, rtol=1e-4, atol=1e-4)
        want = [np.mean(np.sum(np.square(h - r @ c.T), -1))
                for h, r in zip(forward_residuals(m, ids, np.float64)[1:], residuals[1:])]
        np.testing.assert_allclose(dists[j, :layers].reshape(-1), want, rtol=1e-3, atol=1e-5)


def test_groups_sort_by_shape_and_cut(models):
    teachers = [models["reverse"], models["sort_unique"], models["frac_prevs"], models["reverse"]]
    assert D.groups(teachers, 2) == [[2, 1], [0, 3]]
    assert D.groups(teachers, 1) == [[2], [1], [0], [3]]


@pytest.fixture(scope="module")
def compressed_run(models):
    return D.distill([models["sort_unique"]], "compressed", COMPRESSED, [7], all_inputs(), ATOL)


def test_compressed_student_is_accepted(models, compressed_run):
    teacher = models["sort_unique"]
    (res,) = compressed_run
    width = compressed_width(teacher.residual_size, COMPRESSED["ratio"])
    assert res["accepted"], {k: v for k, v in res.items() if k not in ("model", "C")}
    assert res["agreement"] >= COMPRESSED["min_agreement"]
    assert res["max_layer_loss"] <= COMPRESSED["max_layer_loss"]
    assert res["residual_width"] == res["model"].residual_size == width == res["C"].shape[1]
    assert len(res["layer_loss"]) == 2 * teacher.num_layers
    assert res["steps"] % COMPRESSED["eval_every"] == 0 and res["steps"] <= COMPRESSED["steps"]
    # the stored model is the teacher's frozen blocks folded with the learned C
    student = res["model"]
    np.testing.assert_array_equal(student.params["transformer/layer_0/mlp/linear_1"]["b"],
                                  teacher.params["transformer/layer_0/mlp/linear_1"]["b"])
    again = D.evaluate(teacher, student, res["C"], all_inputs(), ATOL)
    assert again == {k: res[k] for k in again}


def test_trained_compressed_student_moves_towards_the_teacher(models):
    """Random (not PCA) initial C: the training, not the initialisation, does the work."""
    teacher = models["sort_unique"]
    cfg = dict(COMPRESSED, c_init="random", steps=200)
    (res,) = D.distill([teacher], "compressed", cfg, [7], all_inputs(), ATOL)
    start = D.init_student(teacher, "compressed", cfg["ratio"], 7, "random")["C"]
    before = D.evaluate(teacher, fold(teacher, start), start, all_inputs(), ATOL)
    assert res["steps"] == 200 or res["accepted"]
    assert res["agreement"] > before["agreement"] + 0.2
    assert res["max_layer_loss"] < before["max_layer_loss"]


def test_same_seeds_give_identical_students(models, compressed_run):
    again = D.distill([models["sort_unique"]], "compressed", COMPRESSED, [7], all_inputs(), ATOL)
    a, b = compressed_run[0], again[0]
    for name, arr in a["model"].to_arrays().items():
        np.testing.assert_array_equal(arr, b["model"].to_arrays()[name])
    np.testing.assert_array_equal(a["model"].unembed, b["model"].unembed)
    np.testing.assert_array_equal(a["C"], b["C"])
    assert {k: v for k, v in a.items() if k not in ("model", "C")} == \
        {k: v for k, v in b.items() if k not in ("model", "C")}
    other = D.init_student(models["sort_unique"], "compressed", 0.8, 8, "pca", all_inputs())
    assert not np.array_equal(other["C"], D.init_student(
        models["sort_unique"], "compressed", 0.8, 7, "pca", all_inputs())["C"])


def test_padded_entries_stay_zero_while_training(models):
    """A natural group: every parameter outside a student's own shapes is exactly zero."""
    teachers = [models["reverse"], models["frac_prevs"]]
    packed, params, _, _ = D.train_group(teachers, "natural", NATURAL, [3, 4], all_inputs(), ATOL)
    for j, dims in enumerate(packed.dims):
        for name, shape in dims.shapes(packed.vocab, packed.positions).items():
            arr = np.array(params[name][j])
            assert np.any(arr[tuple(slice(0, n) for n in shape)] != 0), name
            arr[tuple(slice(0, n) for n in shape)] = 0
            assert not np.any(arr), name


def test_natural_students_keep_the_teacher_architecture(models):
    teachers = [models["reverse"], models["frac_prevs"]]
    seen = []
    results = D.distill(teachers, "natural", NATURAL, [3, 4], all_inputs(), ATOL,
                        progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 2)]
    assert results[0]["accepted"]  # reverse: categorical, learnt in a few hundred steps
    for teacher, res in zip(teachers, results):
        student = res["model"]
        width = compressed_width(teacher.residual_size, NATURAL["ratio"])
        assert res["group"] == 0 and res["residual_width"] == student.residual_size == width
        assert len(res["layer_loss"]) == 2 * teacher.num_layers
        assert 0.0 <= res["agreement"] <= 1.0 and 0.0 <= res["position_agreement"] <= 1.0
        assert res["steps"] == NATURAL["steps"] or res["accepted"]
        assert student.unembed.shape == (width, len(teacher.unembed_indices))
        assert [e["name"] for e in student.layout()] == [e["name"] for e in teacher.layout()]
        for e, f in zip(student.layout(), teacher.layout()):
            want = [width if n == teacher.residual_size else n for n in f["shape"]]
            assert e["shape"] == want, e["name"]
        # learned, not the teacher's: the (unfolded) MLP biases differ from the teacher's
        assert not np.array_equal(student.params["transformer/layer_0/mlp/linear_1"]["b"],
                                  teacher.params["transformer/layer_0/mlp/linear_1"]["b"])
