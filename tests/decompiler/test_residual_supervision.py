"""Auxiliary residual supervision (``decompiler.train.residual_supervision``): what each
residual dimension holds, the per-weight-token targets built from it, and a decompiler that
learns to predict them."""

from __future__ import annotations

import copy

import jax.numpy as jnp
import numpy as np
import pytest

from metamodels.core import config as C
from metamodels.decompiler import batches as B
from metamodels.decompiler import train as TR
from metamodels.decompiler import weights as W
from metamodels.decompiler.tokens import TokenStore
from metamodels.rasp.tokenizer import Vocab

pytestmark = pytest.mark.xdist_group("decompiler")


def test_slots_name_the_variable_of_each_residual_dimension():
    labels = ["indices:0", "one", "tokens:1", "tokens:compiler_bos", "v1_2:0",
              "v1_2_selector_width_attn_output", "v3_4:True", "v12_9", "v13_1:0", "other"]
    s = W.residual_slots(labels, 12)
    names = [W.SLOTS[i] for i in s]
    assert names == ["indices", "one", "tokens", "tokens", "v1", "v1", "v3", "v12",
                     "unknown", "unknown", "unknown", "unknown"]
    assert s.dtype == np.int8
    assert (W.residual_slots(labels, 3) == s[:3]).all()  # cut at max_residual


def test_targets_are_the_slots_each_half_of_a_token_touches():
    r, slots = 4, len(W.SLOTS)
    f = np.zeros((1, 2, 2 * r + 1), np.float32)
    f[0, 0, 0] = 1.0        # token 0 reads dimension 0 (tokens) ...
    f[0, 0, r + 2] = -0.5   # ... and writes dimension 2 (v1)
    f[0, 1, 1] = 0.3        # token 1 reads dimension 1 (tokens) and dimension 3 (v2)
    f[0, 1, 3] = 0.3
    batch = {"features": jnp.asarray(f),
             "residual_slot": jnp.asarray([[1, 1, 4, 5]], jnp.int32)}
    t = np.asarray(TR.residual_targets(batch, r, slots))
    assert t.shape == (1, 2, 2, slots)
    assert [W.SLOTS[i] for i in np.flatnonzero(t[0, 0, 0])] == ["tokens"]
    assert [W.SLOTS[i] for i in np.flatnonzero(t[0, 0, 1])] == ["v1"]
    assert [W.SLOTS[i] for i in np.flatnonzero(t[0, 1, 0])] == ["tokens", "v2"]
    assert not t[0, 1, 1].any()
    with pytest.raises(ValueError, match="residual_supervision.*tokenize"):
        TR.residual_targets(dict(batch, residual_slot=jnp.zeros((1, 1), jnp.int32)), r, slots)


def test_token_shards_carry_the_compilers_residual_labels(data):
    params, _, paths = data
    d = params["decompiler"]
    store = TokenStore(paths["tokens/train"], d["input"], d["max_program_tokens"])
    ex = B.load_split(paths["train"], d["input"], d["max_program_tokens"])
    got = store.read(range(len(store)))["residual_slot"]
    assert got.shape == (len(store), d["input"]["max_residual"])
    assert np.array_equal(got, ex.residual_slot)
    # every program's stream holds the input variables and at least its output variable
    assert all({1, 2, 3} <= set(row.tolist()) and row.max() >= 4 for row in got)


def test_the_decompiler_learns_what_its_weight_tokens_read_and_write(data):
    params, d, paths = data
    cfg = {k: copy.deepcopy(params["decompiler"][k]) for k in
           ("seed", "input", "model", "train", "max_program_tokens")}
    cfg["train"].update(residual_supervision=1.0)
    dec = params["decompiler"]
    train = TokenStore(paths["tokens/train"], dec["input"], dec["max_program_tokens"])
    val = TokenStore(paths["tokens/val"], dec["input"], dec["max_program_tokens"])
    trainer = TR.Trainer(cfg, Vocab.load(str(d / "vocab.json")))
    edges = [int(max(train.n_tokens.max(), val.n_tokens.max()))]  # one shape: one compilation
    order = B.TrainOrder(train, 16, 0)
    state = trainer.init(B.make_batch(train, order.step(0), edges))
    aux = []
    for step in range(40):
        batch = {k: jnp.asarray(v) for k, v in B.make_batch(train, order.step(step), edges).items()}
        *state, m = trainer.train_step(*state, batch)
        aux.append(float(m["residual_loss"]))
    assert aux[-1] < 0.5 * aux[0], aux
    # on validation programs, the head's predictions agree with the targets
    batch = B.make_batch(val, np.arange(min(16, len(val))), edges, 16)
    jb = {k: jnp.asarray(v) for k, v in batch.items()}
    _, logits = trainer.model.apply({"params": state[0]}, jb, jb["program"][:, :-1],
                                    method="with_residual")
    tgt = np.asarray(TR.residual_targets(jb, dec["input"]["max_residual"], len(W.SLOTS)))
    m = batch["mask"]
    pred, tgt = (np.asarray(logits) > 0)[m][..., 1:], tgt[m][..., 1:]
    errors, baseline = (pred != tgt).mean(), tgt.mean()  # baseline: "nothing is read"
    print(f"residual loss {aux[0]:.3f} -> {aux[-1]:.3f}; errors {errors:.3f}, all-false "
          f"baseline {baseline:.3f}, recall {(pred & tgt).sum() / tgt.sum():.3f}")
    assert errors < 0.8 * baseline  # an untrained head (about half positive) is far above
    assert (pred & tgt).sum() > 0.3 * tgt.sum()


def test_residual_supervision_needs_residual_tokens_and_an_encoder(default_params):
    p = copy.deepcopy(default_params)
    p["decompiler"]["train"]["residual_supervision"] = 0.5
    C.validate(p)
    p["decompiler"]["input"]["tokenization"] = "chunks"
    with pytest.raises(C.ParamsError, match="residual_supervision.*input.tokenization"):
        C.validate(p)
    p["decompiler"]["input"]["tokenization"] = "residual"
    p["decompiler"]["model"]["architecture"] = "prefix_lm"
    with pytest.raises(C.ParamsError, match="residual_supervision.*model.architecture"):
        C.validate(p)
    p["decompiler"]["train"]["residual_supervision"] = -1
    with pytest.raises(C.ParamsError, match="residual_supervision"):
        C.validate(p)
