"""Backdoored modular addition: data, per-head decomposition, patching, fast path, training."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metamodels.modadd import stage as M

TINY = {"p0": 7, "d_model": 16, "n_heads": 4, "d_head": 4, "d_mlp": 32,
        "train_fraction": 0.5, "chunk": 25, "log_every": 1000}


def random_params(seed: int = 0, **over) -> dict:
    """Tiny parameters with non-zero biases (init leaves them at zero)."""
    cfg = {**TINY, **over}
    params = M.init(jax.random.key(seed), cfg)
    rng = np.random.default_rng(seed)
    return {k: (v + 0.3 * rng.standard_normal(v.shape).astype(np.float32)
                if k.startswith("b_") else v) for k, v in params.items()}


def test_make_data_sizes_labels_and_split():
    p0, p1 = 11, 3
    d = M.make_data(p0, p1, 0.3, seed=5)
    n = 2 * p0 * p0
    assert d["tokens"].shape == (n, 3) and d["tokens"].dtype == np.int32
    assert d["tokens"].max() < p0  # the trigger is an ordinary number token
    assert len(np.unique(d["tokens"], axis=0)) == n  # every (a, b, t) exactly once
    a, b, t = d["tokens"].T
    assert np.array_equal(d["trigger"], t == 1) and d["trigger"].sum() == p0 * p0
    assert np.array_equal(d["labels"][t == 0], (a + b)[t == 0] % p0)
    assert np.array_equal(d["labels"][t == 1], (a + b)[t == 1] % p1)
    assert d["train"].sum() == round(0.3 * n)
    test = ~d["train"]
    train_rows = {tuple(r) for r in d["tokens"][d["train"]]}
    assert not train_rows & {tuple(r) for r in d["tokens"][test]}
    assert np.array_equal(d["train"], M.make_data(p0, p1, 0.3, seed=5)["train"])
    assert not np.array_equal(d["train"], M.make_data(p0, p1, 0.3, seed=6)["train"])
    c = M.make_data(p0, p1, 0.3, seed=5, clean=True)
    assert c["tokens"].shape == (p0 * p0, 3) and not c["trigger"].any()
    assert np.array_equal(c["labels"], c["tokens"][:, :2].sum(1) % p0)
    assert c["train"].sum() == round(0.3 * p0 * p0)
    with pytest.raises(ValueError):
        M.make_data(7, 8, 0.3, 0)


def test_init_shapes():
    c = {**TINY, "p0": 11}
    params = M.init(jax.random.key(0), c)
    assert params["W_E"].shape == (11, 16) and params["W_U"].shape == (16, 11)
    assert params["W_Q"].shape == (4, 16, 4) and params["W_O"].shape == (4, 4, 16)
    assert params["W_in"].shape == (16, 32) and params["b_O"].shape == (16,)
    assert not any(k.startswith("b_") for k in M.init(jax.random.key(0), {**c, "biases": False}))
    assert np.array_equal(params["W_E"], M.init(jax.random.key(0), c)["W_E"])
    assert not np.array_equal(params["W_E"], M.init(jax.random.key(1), c)["W_E"])
    assert abs(float(jnp.std(params["W_in"])) - 1 / 4) < 0.03  # std 1/sqrt(d_model)


def _reference_mha(params: dict, tokens: np.ndarray) -> np.ndarray:
    """Float64 multi-head attention the usual way: heads concatenated, then one W_O."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    h, d, dh = p["W_Q"].shape
    x = p["W_E"][tokens] + p["W_pos"]                                   # [N, 3, d]
    cat = lambda w: np.concatenate(list(w), axis=-1)                    # noqa: E731
    q, k, v = (x @ cat(p[f"W_{w}"]) + p.get(f"b_{w}", np.zeros((h, dh))).reshape(-1)
               for w in "QKV")  # [N, 3, H*dh]
    split = lambda y: y.reshape(*y.shape[:2], h, dh).transpose(0, 2, 1, 3)  # noqa: E731
    scores = split(q) @ split(k).transpose(0, 1, 3, 2) / math.sqrt(dh)
    scores = np.where(np.tril(np.ones((3, 3), bool)), scores, -np.inf)
    pattern = np.exp(scores - scores.max(-1, keepdims=True))
    pattern /= pattern.sum(-1, keepdims=True)
    z = (pattern @ split(v)).transpose(0, 2, 1, 3).reshape(len(x), 3, h * dh)
    return z @ p["W_O"].reshape(h * dh, d) + p["b_O"]


def test_heads_sum_to_standard_attention_output():
    params = random_params(1)
    tokens = M.all_pairs(7, 1)
    trace = M.forward(params, jnp.asarray(tokens))
    assert trace.heads.shape == (49, 4, 3, 16) and trace.pattern.shape == (49, 4, 3, 3)
    attn_out = np.asarray(trace.res_mid - trace.res_pre, np.float64)
    ref = _reference_mha(params, tokens)
    np.testing.assert_allclose(attn_out, ref, rtol=1e-5, atol=1e-5)
    # the decomposition itself, in float32: sum_h A^h V^h W_O^h == concat_h(A^h V^h) W_O
    heads_sum = np.asarray(trace.heads.sum(1)) + np.asarray(params["b_O"])
    np.testing.assert_allclose(heads_sum, attn_out, rtol=1e-6, atol=1e-6)
    pattern = np.asarray(trace.pattern)
    np.testing.assert_allclose(pattern.sum(-1), 1.0, atol=1e-6)
    assert np.all(pattern[:, :, np.triu_indices(3, 1)[0], np.triu_indices(3, 1)[1]] == 0)


def test_fast_path_logits_match_full_forward():
    for biases in (True, False):
        params = random_params(2, p0=11, biases=biases)
        tokens = jnp.asarray(M.make_data(11, 5, 0.3, 0)["tokens"])
        full = M.forward(params, tokens).logits
        np.testing.assert_allclose(M.last_logits(params, tokens), full, rtol=1e-5, atol=1e-5)
        assert full.shape == (2 * 121, 11)


def test_patching_with_own_activations_is_identity():
    params = random_params(3)
    tokens = jnp.asarray(M.all_pairs(7, 1))
    trace = M.forward(params, tokens)
    for mask in ([True] * 4, [False, True, False, True]):
        patched = M.forward(params, tokens, patch=(jnp.array(mask), trace.heads))
        np.testing.assert_array_equal(patched.logits, trace.logits)


def test_patching_all_heads_uses_clean_attention_output():
    params = random_params(4)
    clean = M.forward(params, jnp.asarray(M.all_pairs(7, 0)))
    triggered = M.forward(params, jnp.asarray(M.all_pairs(7, 1)))
    patched = M.forward(params, jnp.asarray(M.all_pairs(7, 1)),
                        patch=(jnp.ones(4, bool), clean.heads))
    res_mid = triggered.res_pre + (clean.res_mid - clean.res_pre)
    _, expected = M.after_attention(params, res_mid)
    np.testing.assert_allclose(patched.logits, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(patched.logits, triggered.logits)
    # one head: only that head's contribution changes
    one = M.forward(params, jnp.asarray(M.all_pairs(7, 1)),
                    patch=(jnp.array([False, False, True, False]), clean.heads))
    np.testing.assert_array_equal(one.heads[:, 2], clean.heads[:, 2])
    np.testing.assert_array_equal(one.heads[:, [0, 1, 3]], triggered.heads[:, [0, 1, 3]])
    # patch_heads: patching nothing gives the model's own backdoor accuracy
    labels = M.labels_for(M.all_pairs(7, 1), 7, 3)
    acc = float(np.mean(np.argmax(triggered.logits, -1) == labels))
    assert M.patch_heads(params, 7, 3, ()) == pytest.approx(acc)
    acc_all = float(np.mean(np.argmax(patched.logits, -1) == labels))
    assert M.patch_heads(params, 7, 3, (0, 1, 2, 3)) == pytest.approx(acc_all)


def test_head_attribution_is_a_logit_lens_decomposition():
    params = random_params(5)
    p1 = 3
    data = M.make_data(7, p1, 0.3, 0)
    att = M.head_attribution(params, data, p1)
    for name in ("backdoor", "safe"):
        assert att[f"{name}_mean"].shape == (4,)
        assert att[f"{name}_top_frequency"].sum() == pytest.approx(1.0)
    tokens = M.all_pairs(7, 1)
    trace = M.forward(params, jnp.asarray(tokens))
    attn = np.asarray(trace.res_mid - trace.res_pre)[:, -1] - np.asarray(params["b_O"])
    w = np.asarray(params["W_U"])[:, M.labels_for(tokens, 7, p1)].T
    assert att["backdoor_mean"].sum() == pytest.approx((attn * w).sum(1).mean(), rel=1e-4)
    clean_att = M.head_attribution(params, M.make_data(7, p1, 0.3, 0, clean=True), p1)
    assert set(clean_att) == {"safe_mean", "safe_top_frequency"}
    np.testing.assert_allclose(clean_att["safe_mean"], att["safe_mean"], rtol=1e-5)
    table = M.patching_table(params, 7, p1)
    assert list(table) == ["none", "head_0", "head_1", "head_2", "head_3", "all_but_top",
                           "all", "top_head"]
    assert table["top_head"] == M.top_head(params, 7, p1)
    assert all(0.0 <= table[k] <= 1.0 for k in table if k != "top_head")


TRAIN = {**TINY, "learning_rate": 0.01, "weight_decay": 0.1, "max_epochs": 150,
         "stop_accuracy": 2.0, "patience": 1, "vmap": True}  # never met: all stop at max_epochs


@pytest.fixture(scope="module")
def two_runs():
    return M.train_runs(TRAIN, 3, [0, 1])


def _first_hit(hist: np.ndarray, threshold: float) -> int | None:
    hits = np.flatnonzero(np.minimum(hist[:, 2], hist[:, 3]) >= threshold)
    return int(hits[0]) if len(hits) else None


def test_tiny_run_trains_end_to_end(two_runs):
    params, hist, stops = two_runs
    assert stops.tolist() == [150, 150] and hist.shape == (2, 151, 4)
    assert not np.isnan(hist).any()
    for i, seed in enumerate((0, 1)):
        assert hist[i, -1, 0] < 0.05 * hist[i, 0, 0]  # training loss fell a lot
        data = M.make_data(7, 3, 0.5, seed)
        logits = M.last_logits(M.run_params(params, i), data["tokens"][data["train"]])
        labels = data["labels"][data["train"]]
        assert np.mean(np.argmax(logits, -1) == labels) == 1.0  # training accuracy
        assert float(M.cross_entropy(logits, labels).mean()) < 0.05
    # runs in a batch do not interact: swapping the seeds swaps the results exactly
    swapped, swapped_hist, _ = M.train_runs(TRAIN, 3, [1, 0])
    np.testing.assert_array_equal(swapped_hist, hist[::-1])
    for k in params:
        np.testing.assert_array_equal(swapped[k], params[k][::-1])


def test_runs_freeze_at_their_own_stop_epoch(two_runs):
    _, hist, _ = two_runs
    # a threshold the two runs first reach at different epochs (patience 1)
    candidates = np.unique(np.minimum(hist[:, :, 2], hist[:, :, 3]))
    options = [(min(hits), t, hits) for t in candidates
               if None not in (hits := [_first_hit(h, t) for h in hist]) and hits[0] != hits[1]]
    _, threshold, hits = max(options)   # the latest such pair of stops
    params, stop_hist, stops = M.train_runs({**TRAIN, "stop_accuracy": float(threshold)},
                                            3, [0, 1])
    assert stops.tolist() == hits and stop_hist.shape[1] == max(hits) + 1
    for i in range(2):
        np.testing.assert_array_equal(stop_hist[i, :hits[i] + 1], hist[i, :hits[i] + 1])
        assert np.isnan(stop_hist[i, hits[i] + 1:]).all()
        # the stored parameters are those after exactly `stop` updates
        capped, _, _ = M.train_runs({**TRAIN, "max_epochs": hits[i]}, 3, [i, i])  # seed i
        for k in params:
            np.testing.assert_array_equal(params[k][i], capped[k][0])


def test_vmapped_runs_equal_each_run_alone(two_runs):
    cfg = {**TRAIN, "max_epochs": 20}
    together, hist, stops = M.train_runs(cfg, 3, [0, 1])
    seq, seq_hist, seq_stops = M.train_runs({**cfg, "vmap": False}, 3, [0, 1])
    alone, alone_hist, _ = M.train_runs(cfg, 3, [1])
    assert stops.tolist() == seq_stops.tolist() == [20, 20]
    np.testing.assert_allclose(seq_hist, hist, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(alone_hist[0], hist[1], rtol=1e-5, atol=1e-5)
    for k in together:
        np.testing.assert_allclose(seq[k], together[k], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(alone[k][0], together[k][1], rtol=1e-4, atol=1e-5)
    # over the whole tiny run, only float rounding (batched vs single kernels) separates them
    _, long_hist, long_stops = M.train_runs({**TRAIN, "vmap": False}, 3, [0, 1])
    assert long_stops.tolist() == two_runs[2].tolist()
    np.testing.assert_allclose(long_hist[:, :, 0], two_runs[1][:, :, 0], rtol=0.05, atol=1e-3)


def test_stop_rule_and_clean_runs():
    cfg = {**TRAIN, "stop_accuracy": 0.0, "patience": 3}  # met at rows 0, 1, 2 -> stop at 2
    params, hist, stops = M.train_runs(cfg, 3, [0], clean=True)
    assert stops.tolist() == [2] and hist.shape == (1, 3, 4)
    assert np.isnan(hist[..., 3]).all() and not np.isnan(hist[..., :3]).any()
    att = M.head_attribution(M.run_params(params, 0), M.make_data(7, 3, 0.5, 0, clean=True), 3)
    assert set(att) == {"safe_mean", "safe_top_frequency"}

TINY_STAGE = {**TINY, "max_epochs": 50, "stop_accuracy": 0.99, "patience": 5, "chunk": 25}


# ----------------------------------------------------------------------------- pipeline stage


def _stage_params(tmp_cfg):
    return {"modadd": {"seed": 3, "runs": {"clean": 1, "mod1": 2}, "patching_task": "mod1",
                       "train": tmp_cfg}}


def test_task_names_and_seeds():
    assert M.task_p1("clean") == (1, True) and M.task_p1("mod17") == (17, False)
    for bad in ("mod0", "mod", "dirty", "mod-3"):
        with pytest.raises(ValueError, match="modadd task"):
            M.task_p1(bad)
    s = M.task_seeds(0, "mod1", 3)
    assert s == M.task_seeds(0, "mod1", 3) and len(set(s)) == 3
    assert s[:2] == M.task_seeds(0, "mod1", 2)          # adding runs keeps the earlier ones
    assert s != M.task_seeds(0, "mod7", 3) and s != M.task_seeds(1, "mod1", 3)


def test_single_head_finding():
    row = {"head_0": 0.99, "head_1": 0.03, "head_2": 0.95, "head_3": 0.97}
    assert M.single_head_finding(row, 4)
    assert not M.single_head_finding({**row, "head_3": 0.5}, 4)     # another head matters
    assert not M.single_head_finding({**row, "head_1": 0.2}, 4)     # no head below 10%


def test_stage_train_analyse_figure(tmp_path):
    """modadd-train for two tasks -> modadd-analyse -> figure, on a tiny model."""
    from metamodels.core import shards as S
    from metamodels.modadd.figure import figure_backdoor_heads
    params = _stage_params(TINY_STAGE)
    files = {}
    for task in ("clean", "mod1"):
        files[task] = (str(tmp_path / f"{task}.npz"), str(tmp_path / f"{task}_history.csv"))
        M.run_train(params, task, *files[task])
    t = M.load_task(files["mod1"][0])
    assert t["p1"] == 1 and not t["clean"] and len(t["seed"]) == 2
    assert t["params"]["W_Q"].shape[0] == 2                        # runs stacked
    lines = open(files["mod1"][1]).read().splitlines()
    assert lines[0] == "task,run,epoch," + ",".join(M.HISTORY_COLUMNS)
    assert len(lines) == 1 + int(np.sum(t["stop_epoch"] + 1))
    patching = str(tmp_path / "patching.csv")
    attribution = str(tmp_path / "attribution.json")
    metrics = str(tmp_path / "modadd.json")
    M.run_analyse(params, [f for f, _ in files.values()], patching, attribution, metrics)
    rows = open(patching).read().splitlines()
    assert rows[0].startswith("run,none,head_1,") and len(rows) == 3
    m = S.read_json(metrics)
    assert m["patching"]["runs"] == 2 and m["tasks"]["clean"]["backdoor_accuracy"] is None
    # the patching table agrees with a direct call on run 2's parameters
    direct = M.patching_table(M.run_params(t["params"], 1), TINY_STAGE["p0"], 1)
    assert float(rows[2].split(",")[2]) == pytest.approx(direct["head_0"], abs=1e-4)
    a = S.read_json(attribution)
    assert len(a["mod1"]) == 2 and len(a["mod1"][0]["backdoor_mean"]) == TINY_STAGE["n_heads"]
    pdf = tmp_path / "heads.pdf"
    figure_backdoor_heads([h for _, h in files.values()], attribution, patching, str(pdf))
    assert pdf.read_bytes().startswith(b"%PDF")
