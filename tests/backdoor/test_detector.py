"""Backdoor detector: chunking, ROC/AUC, training, save/load, baseline, OOD splits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metamodels.backdoor import detector as D

# A toy base model: a 2-layer MLP 16 -> 14 -> 3 whose hidden units can be permuted.
D_IN, HID, D_OUT = 16, 14, 3
LAYOUT = [("w1", (D_IN, HID)), ("b1", (HID,)), ("w2", (HID, D_OUT)), ("b2", (D_OUT,))]
P_MLP = D_IN * HID + HID + HID * D_OUT + D_OUT  # 283

TINY = {"seed": 0, "normalize": True, "chunk_size": 64, "d_model": 32, "layers": 1, "heads": 2,
        "mlp": 64, "steps": 60, "batch_size": 32, "learning_rate": 3e-3, "warmup_steps": 10,
        "eval_every": 30, "log_every": 1000, "eval_batch_size": 128}


def unflatten(flat):
    o = np.cumsum([0] + [int(np.prod(s)) for _, s in LAYOUT])
    return [flat[..., o[i]:o[i + 1]].reshape(flat.shape[:-1] + s)
            for i, (_, s) in enumerate(LAYOUT)]


def mlp(flat, x):
    w1, b1, w2, b2 = unflatten(flat)
    return jnp.tanh(x @ w1 + b1) @ w2 + b2


def permute_one(flat, key):
    """Function-preserving random permutation of the hidden units of one flat MLP."""
    w1, b1, w2, b2 = unflatten(flat)
    perm = jax.random.permutation(key, HID)
    return jnp.concatenate([w1[:, perm].ravel(), b1[perm], w2[perm].ravel(), b2])


toy_augment = jax.vmap(permute_one)


def test_toy_permutation_preserves_function():
    flat = jax.random.normal(jax.random.PRNGKey(0), (P_MLP,))
    x = jax.random.normal(jax.random.PRNGKey(1), (5, D_IN))
    out = toy_augment(flat[None], jax.random.PRNGKey(2)[None])[0]
    assert not np.allclose(out, flat)
    np.testing.assert_allclose(mlp(out, x), mlp(flat, x), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ chunking

def test_chunking_shape_padding_and_content():
    x = np.arange(2 * 300, dtype=np.float32).reshape(2, 300) + 1.0  # no zeros in the data
    c = np.asarray(D.chunk(jnp.asarray(x), 64))
    assert c.shape == (2, 5, 64)
    for k in range(5):
        part = x[:, k * 64:(k + 1) * 64]
        np.testing.assert_array_equal(c[:, k, :part.shape[1]], part)
    assert np.all(c[:, 4, 300 - 256:] == 0) and np.all(c[:, 4, :300 - 256] != 0)
    assert D.chunk(jnp.ones((1, 128)), 64).shape == (1, 2, 64)  # exact fit: no extra chunk


# ------------------------------------------------------------------------------ metrics

def test_auc_hand_cases():
    y = np.array([0, 0, 1, 1])
    assert D.auc([0.1, 0.2, 0.8, 0.9], y) == 1.0
    assert D.auc([0.9, 0.8, 0.2, 0.1], y) == 0.0
    assert D.auc([0.5, 0.5, 0.5, 0.5], y) == 0.5
    # pairs (pos, neg): (0.35,0.1)>, (0.35,0.4)<, (0.8,0.1)>, (0.8,0.4)> -> 3/4
    assert D.auc([0.1, 0.4, 0.35, 0.8], y) == 0.75
    # one tie: pos 0.4 vs neg 0.4 counts 1/2 -> (1 + 0.5 + 1 + 1) / 4
    assert D.auc([0.1, 0.4, 0.4, 0.8], y) == 0.875
    assert np.isnan(D.auc([0.1, 0.2], [1, 1]))


def test_roc_curve_hand_case_and_trapezoid_equals_auc():
    fpr, tpr, th = D.roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    np.testing.assert_array_equal(th, [np.inf, 0.8, 0.4, 0.35, 0.1])
    np.testing.assert_array_equal(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_array_equal(fpr, [0, 0, 0.5, 0.5, 1])
    rng = np.random.default_rng(0)
    s = rng.integers(0, 6, 200).astype(float)  # many ties
    y = rng.integers(0, 2, 200)
    fpr, tpr, _ = D.roc_curve(s, y)
    trap = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in s[y == 1] for b in s[y == 0]])
    assert D.auc(s, y) == pytest.approx(brute, abs=1e-12) == pytest.approx(trap, abs=1e-12)


def test_evaluate_by_attack():
    attacks = ["clean", "clean", "a", "a", "b", "b"]
    scores = [0.1, 0.6, 0.9, 0.7, 0.2, 0.3]
    r = D.evaluate_by_attack(scores, [0, 0, 1, 1, 1, 1], attacks)
    assert r["by_attack"]["a"]["auc"] == 1.0
    assert r["by_attack"]["b"]["auc"] == 0.5  # 0.2,0.3 vs 0.1,0.6: 2 of 4 pairs
    assert r["overall"]["accuracy"] == pytest.approx(3 / 6)
    assert r["overall"]["auc"] == pytest.approx(6 / 8)
    assert r["by_attack"]["a"]["thresholds"][0] is None
    with pytest.raises(ValueError):
        D.evaluate_by_attack(scores, [0, 1, 1, 1, 1, 1], attacks)


def test_logreg_separates_easy_case():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    x = rng.normal(size=(400, 5))
    x[:, 2] += 3.0 * (2 * y - 1)  # one informative feature
    m = D.fit_logreg(x[:300], y[:300], l2=1e-2, steps=50)
    p = D.predict_logreg(m, x[300:])
    assert D.auc(p, y[300:]) > 0.99 and D.accuracy(p, y[300:]) > 0.95
    assert np.argmax(np.abs(m["w"])) == 2


# ------------------------------------------------------------------------------ meta-model

def block_sign_data(n, seed, p=P_MLP):
    """Label = sign of the mean of weights 64:128 (exactly chunk 1 at chunk_size 64), a block
    shifted by +-0.5 so that the sign is rarely decided by noise alone."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p)).astype(np.float32)
    x[:, 64:128] += 0.5 * rng.choice([-1.0, 1.0], size=(n, 1)).astype(np.float32)
    return x, (x[:, 64:128].mean(1) > 0).astype(np.float32)


def test_meta_model_learns_easy_task_and_round_trips(tmp_path):
    tx, ty = block_sign_data(512, 0)
    vx, vy = block_sign_data(256, 1)
    model, hist = D.train(TINY, tx, ty, vx, vy, log=None)
    assert [h["step"] for h in hist] == [30, 60]
    assert hist[-1]["val_auc"] > 0.9, hist
    p = D.predict(model, vx)
    assert p.shape == (256,) and np.all((p >= 0) & (p <= 1))
    assert D.auc(p, vy) == pytest.approx(hist[-1]["val_auc"])
    part = D.predict(model, vx[:200])  # batches of 128: the last one padded
    np.testing.assert_allclose(part, p[:200], rtol=1e-6, atol=1e-7)
    D.save(tmp_path / "m.npz", model)
    back = D.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(D.predict(back, vx), D.predict(model, vx))
    assert back.cfg == model.cfg and back.n_inputs == P_MLP
    assert back.mean.shape == back.std.shape == (P_MLP,)
    np.testing.assert_array_equal(back.mean, model.mean)
    np.testing.assert_array_equal(back.std, model.std)
    D.save(tmp_path / "m2.npz", back)
    assert (tmp_path / "m.npz").read_bytes() == (tmp_path / "m2.npz").read_bytes()


def test_per_chunk_embedding_learns_a_linear_rule_faster():
    """Label = sign of a fixed random linear function of all the weights, 768 training rows:
    one Dense per chunk (``embedding: per_chunk``) gives the model that linear path; one Dense
    shared by every chunk has to build it from the position embedding, and is measured
    ~0.1 AUC behind at equal steps."""
    rng = np.random.default_rng(3)
    coef = np.random.default_rng(9).normal(size=P_MLP).astype(np.float32)
    x = rng.normal(size=(1024, P_MLP)).astype(np.float32)
    y = (x @ coef > 0).astype(np.float32)
    cfg = {**TINY, "steps": 120, "eval_every": 120, "embedding": "per_chunk"}
    model, hist = D.train(cfg, x[:768], y[:768], x[768:], y[768:], log=None)
    _, hist_shared = D.train({**cfg, "embedding": "shared"}, x[:768], y[:768], x[768:],
                             y[768:], log=None)
    assert model.params["embed_chunks"].shape == (D.n_chunks(P_MLP, 64), 64, 32)
    assert "embed" not in model.params
    assert hist[-1]["val_auc"] > 0.8, hist
    assert hist[-1]["val_auc"] > hist_shared[-1]["val_auc"] + 0.05, (hist, hist_shared)
    with pytest.raises(ValueError, match="embedding"):
        D.train({**cfg, "embedding": "dense"}, x[:64], y[:64], None, None, log=None)


def test_training_deterministic_and_augmentation_used():
    # same model/optimizer keys as the test above: the compiled step is shared (cached)
    tx, ty = block_sign_data(64, 2)
    cfg = {**TINY, "eval_every": 20}
    runs = [D.train(cfg, tx, ty, None, None, augment=toy_augment, log=None) for _ in range(2)]
    leaves = [jax.tree_util.tree_leaves(m.params) for m, _ in runs]
    assert all(np.array_equal(a, b) for a, b in zip(*leaves))
    assert [e["train_loss"] for e in runs[0][1]] == [e["train_loss"] for e in runs[1][1]]
    plain, _ = D.train({**cfg, "augment": False}, tx, ty, None, None, augment=toy_augment,
                       log=None)
    assert not all(np.array_equal(a, b) for a, b in
                   zip(leaves[0], jax.tree_util.tree_leaves(plain.params)))


def test_batch_order_is_a_pure_function():
    a = [D.batch_indices(10, 4, 7, s) for s in range(6)]
    assert all(len(i) == 4 for i in a)
    assert len(set(np.concatenate(a[:2]).tolist())) == 8  # one epoch: no repeats
    np.testing.assert_array_equal(a[5], D.batch_indices(10, 4, 7, 5))


def test_unknown_cfg_key_rejected():
    with pytest.raises(ValueError, match="unknown keys"):
        D.with_defaults({"chunksize": 64})


def test_k_way_head_learns_the_shift_of_a_block_and_checks_labels():
    """``classes: 3`` (seed 000 App. A's classification head, used by the hyperparameter
    predictors): label k = weights 64:128 shifted by k - 1; logits [N, 3]."""
    def data(n, seed):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 3, n)
        x = rng.normal(size=(n, P_MLP)).astype(np.float32)
        x[:, 64:128] += (y - 1.0)[:, None].astype(np.float32)
        return x, y

    tx, ty = data(384, 0)
    vx, vy = data(128, 1)
    cfg = {**TINY, "classes": 3}
    model, hist = D.train(cfg, tx, ty, vx, vy, log=None)
    assert hist[-1]["val_acc"] > 0.75, hist  # chance 1/3; 0.88 when written
    logit = D.logits(model, vx)
    assert logit.shape == (128, 3)
    assert np.mean(np.argmax(logit, 1) == vy) == pytest.approx(hist[-1]["val_acc"])
    with pytest.raises(ValueError, match="class indices"):
        D.train(cfg, tx, np.full(len(ty), 3), None, None, log=None)
