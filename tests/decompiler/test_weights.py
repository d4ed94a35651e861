"""Weight tokenizations: lossless (up to symlog) and aligned with the arrays they cut."""

from __future__ import annotations

import numpy as np
import pytest

from metamodels.decompiler import weights as W
from metamodels.rasp import lambdas as L
from metamodels.rasp.program import Op, Program, to_rasp
from metamodels.zoo.compiler import compile_program

CFG = dict(tokenization="residual", chunk_size=64, pad_value=0.05, max_residual=96,
           max_tokens=10_000, max_index=10_000, buckets=2)


def inverse_symlog(y: np.ndarray) -> np.ndarray:
    c = np.log(2.0) / 2.0
    return np.where(np.abs(y) > np.log(2.0), np.sign(y) * np.exp(np.abs(y)), y / c)


@pytest.fixture(scope="module")
def model():
    tables = L.Tables([0, 1, 2, 3, 4, 5])
    p = Program((Op("v1", "Map", "x+1", ("tokens",), "categorical"),
                 Op("v2", "Aggregate", "LT", ("tokens", "indices", "v1"), "categorical"),
                 Op("v3", "SequenceMap", "x*y", ("v2", "tokens"), "categorical")))
    return compile_program(to_rasp(p, tables), {1, 2, 3}, 4)


def test_symlog_matches_seed_001():
    x = np.array([-1000.0, -3.0, -2.0, -0.5, 0.0, 1.0, 2.0, 2.5, 1e4], np.float32)
    y = W.symlog(x)
    c = np.log(2.0) / 2.0
    expect = np.where(np.abs(x) > 2, np.sign(x) * np.log(np.maximum(np.abs(x), 1)), x * c)
    np.testing.assert_allclose(y, expect, rtol=1e-6)
    # continuous at |x| = 2 and odd
    np.testing.assert_allclose(W.symlog(np.float32([2.0, 2.0 + 1e-4])), [np.log(2)] * 2, atol=1e-4)
    np.testing.assert_array_equal(W.symlog(-x), -y)


def test_chunks_are_the_flat_weights_in_order(model):
    flat, layout = model.flat(), model.layout()
    t = W.tokenize(flat, layout, dict(CFG, tokenization="chunks"))
    assert t.features.shape == (-(-flat.size // 64), 64)
    back = inverse_symlog(t.features.reshape(-1).astype(np.float64))
    np.testing.assert_allclose(back[:flat.size], flat, rtol=1e-5, atol=1e-6)
    assert np.all(t.features.reshape(-1)[flat.size:] == np.float32(0.05))
    # each chunk is tagged with the array its first float belongs to
    for k in range(len(t)):
        start = k * 64
        e = max((e for e in layout if e["offset"] <= start), key=lambda e: e["offset"])
        assert t.layer[k] == e["layer"] + 1
        assert W.KINDS[t.kind[k]] != "pad"


def test_residual_tokens_rebuild_every_array(model):
    flat, layout = model.flat(), model.layout()
    a = W.arrays_of(flat, layout)
    d = a["token_embed/embeddings"].shape[1]
    t = W.tokenize(flat, layout, CFG)
    x = inverse_symlog(t.features.astype(np.float64))
    m = CFG["max_residual"]
    kinds = [W.KINDS[k] for k in t.kind]
    assert not np.any(np.all(t.features == 0, axis=1)), "all-zero tokens are dropped"
    assert np.all(x[:, d:m] == 0) and np.all(x[:, m + d:2 * m] == 0), "zero-filled past width"
    # token embedding rows come back in place
    rows = [i for i, k in enumerate(kinds) if k == "token_embed"]
    rebuilt = np.zeros_like(a["token_embed/embeddings"])
    rebuilt[t.index[rows]] = x[rows, :d]
    np.testing.assert_allclose(rebuilt, a["token_embed/embeddings"], rtol=1e-5, atol=1e-6)
    # every MLP layer: W_in columns, W_out rows and b_in per hidden neuron
    for layer in sorted({e["layer"] for e in layout if e["layer"] >= 0}):
        p = f"transformer/layer_{layer}/mlp/"
        sel = [i for i, k in enumerate(kinds) if k == "mlp" and t.layer[i] == layer + 1]
        w_in = np.zeros_like(a[p + "linear_1/w"])
        w_out = np.zeros_like(a[p + "linear_2/w"])
        b_in = np.zeros_like(a[p + "linear_1/b"])
        w_in[:, t.index[sel]] = x[sel, :d].T
        w_out[t.index[sel]] = x[sel, m:m + d]
        b_in[t.index[sel]] = x[sel, -1]
        np.testing.assert_allclose(w_in, a[p + "linear_1/w"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(w_out, a[p + "linear_2/w"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b_in, a[p + "linear_1/b"], rtol=1e-5, atol=1e-6)
        # query/key columns pair up: their products give W_QK
        q = a[f"transformer/layer_{layer}/attn/query/w"]
        k = a[f"transformer/layer_{layer}/attn/key/w"]
        sel = [i for i, kk in enumerate(kinds) if kk == "query_key" and t.layer[i] == layer + 1]
        qk = sum(np.outer(x[i, :d], x[i, m:m + d]) for i in sel) if sel else np.zeros((d, d))
        np.testing.assert_allclose(qk, q @ k.T, rtol=1e-4, atol=1e-4)


def test_too_large_inputs_are_refused(model):
    flat, layout = model.flat(), model.layout()
    with pytest.raises(W.InputTooLarge, match="max_residual"):
        W.tokenize(flat, layout, dict(CFG, max_residual=4))
    with pytest.raises(W.InputTooLarge, match="max_tokens"):
        W.tokenize(flat, layout, dict(CFG, max_tokens=3))
    t = W.tokenize(flat, layout, dict(CFG, max_index=2))
    assert t.index.max() == 1


def _single_map(fn: str):
    tables = L.Tables([0, 1, 2, 3, 4, 5])
    p = Program((Op("v1", "Map", fn, ("tokens",), "categorical"),))
    return compile_program(to_rasp(p, tables), {1, 2, 3}, 4)


def test_value_tables_tell_apart_programs_whose_weights_are_identical():
    # x+1 and x+2 compile to the same weights: only the output encoder holds the values
    a, b = _single_map("x+1"), _single_map("x+2")
    assert np.array_equal(a.flat(), b.flat())
    ta, tb = (W.tokenize(m.flat(), m.layout(), CFG) for m in (a, b))
    assert np.array_equal(ta.features, tb.features)
    cfg = dict(CFG, value_tables=True)
    va, vb = (W.tokenize(m.flat(), m.layout(), cfg, m.metadata()) for m in (a, b))
    assert len(va) == len(ta) + len(a.output_values)
    assert not np.array_equal(va.features, vb.features)
    # one token per output value: the residual dimension the unembedding reads, and the value
    tail = slice(len(ta), None)
    assert [W.KINDS[k] for k in va.kind[tail]] == ["output_value"] * len(a.output_values)
    x = inverse_symlog(va.features[tail].astype(np.float64))
    np.testing.assert_allclose(x[:, -1], a.output_values, rtol=1e-5)
    d = a.residual_size
    np.testing.assert_allclose(x[:, :d], a.unembed_matrix().T, rtol=1e-6)
    assert list(va.index[tail]) == list(range(len(a.output_values)))


def test_value_tables_mark_booleans_and_numerical_outputs(model):
    boolean = _single_map("x<3")
    t = W.tokenize(boolean.flat(), boolean.layout(), dict(CFG, value_tables=True),
                   boolean.metadata())
    assert {W.KINDS[k] for k in t.kind[-len(boolean.output_values):]} == {"output_bool"}
    tables = L.Tables([0, 1, 2, 3, 4, 5])
    num = compile_program(to_rasp(Program((Op("v1", "Map", "x+1", ("tokens",), "numerical"),)),
                                  tables), {1, 2, 3}, 4)
    t = W.tokenize(num.flat(), num.layout(), dict(CFG, value_tables=True), num.metadata())
    assert W.KINDS[t.kind[-1]] == "output_numerical"
    with pytest.raises(ValueError, match="value_tables needs the compiled model's metadata"):
        W.tokenize(num.flat(), num.layout(), dict(CFG, value_tables=True))
