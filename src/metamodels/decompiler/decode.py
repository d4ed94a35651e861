"""Autoregressive decoding of program tokens: greedy or beam search, optionally
constrained by the RASP grammar (:mod:`metamodels.rasp.grammar`).

The model is driven through two jitted functions: ``encode(batch) -> memory``
(once per batch) and ``logits(memory, mask, program_in) -> (B, T, V)``. The
program buffer has a fixed length so each function compiles once per padded
weight length. Without a grammar, decoding is plain argmax / top-k.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

NEG = -1e9


def _masks(grammar, buf: np.ndarray, t: int, done: np.ndarray, pad: int) -> np.ndarray:
    """(B, V) allowed next tokens for each row's prefix buf[:, :t+1]."""
    b, v = buf.shape[0], None
    rows = []
    for r in range(b):
        if done[r]:
            m = None
        else:
            m = grammar.allowed(buf[r, :t + 1].tolist())
            v = m.shape[0]
        rows.append(m)
    v = v or 1
    out = np.zeros((b, v), bool)
    for r, m in enumerate(rows):
        if m is None:
            out[r, pad] = True
        else:
            out[r] = m
    return out


def greedy(encode: Callable, logits_fn: Callable, batch: dict, max_len: int, bos: int, eos: int,
           pad: int, grammar=None) -> np.ndarray:
    """(B, max_len) token ids, BOS first; positions after EOS are PAD."""
    memory = encode(batch)
    b = batch["mask"].shape[0]
    buf = np.full((b, max_len), pad, np.int32)
    buf[:, 0] = bos
    done = np.zeros(b, bool)
    for t in range(max_len - 1):
        logits = np.asarray(logits_fn(memory, batch["mask"], buf))[:, t]
        if grammar is not None:
            logits = np.where(_masks(grammar, buf, t, done, pad), logits, NEG)
        nxt = logits.argmax(-1).astype(np.int32)
        nxt[done] = pad
        buf[:, t + 1] = nxt
        done |= nxt == eos
        if done.all():
            break
    return buf


def beam(encode: Callable, logits_fn: Callable, batch: dict, max_len: int, bos: int, eos: int,
         pad: int, width: int, grammar=None) -> np.ndarray:
    """Beam search (sum of log-probabilities); returns the best finished beam per row."""
    memory = encode(batch)
    b = batch["mask"].shape[0]
    k = width
    rep = lambda x: np.repeat(np.asarray(x), k, axis=0)  # noqa: E731
    import jax
    memory = jax.tree_util.tree_map(rep, memory)
    mask = rep(batch["mask"])
    buf = np.full((b * k, max_len), pad, np.int32)
    buf[:, 0] = bos
    score = np.full((b, k), NEG, np.float64)
    score[:, 0] = 0.0  # one live beam at the start
    done = np.zeros(b * k, bool)
    for t in range(max_len - 1):
        logits = np.asarray(logits_fn(memory, mask, buf))[:, t].astype(np.float64)
        logp = logits - _logsumexp(logits)
        if grammar is not None:
            logp = np.where(_masks(grammar, buf, t, done, pad), logp, NEG)
        logp[done] = NEG
        logp[done, pad] = 0.0  # finished beams continue with PAD at no cost
        v = logp.shape[1]
        cand = (score.reshape(b * k, 1) + logp).reshape(b, k * v)
        top = np.argsort(-cand, axis=1, kind="stable")[:, :k]
        src = top // v
        tok = (top % v).astype(np.int32)
        score = np.take_along_axis(cand, top, axis=1)
        rows = (np.arange(b)[:, None] * k + src).reshape(-1)
        buf = buf[rows]
        done = done[rows]
        buf[:, t + 1] = np.where(done, pad, tok.reshape(-1))
        done = done | (tok.reshape(-1) == eos)
        if done.all():
            break
    best = np.argmax(np.where(done.reshape(b, k), score, NEG - 1), axis=1)
    return buf.reshape(b, k, max_len)[np.arange(b), best]


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(-1, keepdims=True))
