"""Autoregressive decoding of program tokens: greedy, beam search, and the ranked candidate
list the verified search (:mod:`metamodels.decompiler.search`) walks, optionally constrained
by the RASP grammar (:mod:`metamodels.rasp.grammar`).

The model is driven through :class:`metamodels.decompiler.incremental.Cached`: ``start``
once per batch, then one jitted ``step`` per program position with cached keys and values,
so decoding a program of T tokens costs O(T) decoder positions rather than O(T^2). Beam
search keeps ``width`` rows per program in one batch of ``B * width`` rows and reorders
their caches after each step. Without a grammar, decoding is plain argmax / top-k.
"""

from __future__ import annotations

import numpy as np

NEG = -1e9


def _masks(grammar, buf: np.ndarray, t: int, done: np.ndarray, pad: int, size: int) -> np.ndarray:
    """(B, V) allowed next tokens for each row's prefix buf[:, :t+1]; finished rows: PAD."""
    out = np.zeros((buf.shape[0], size), bool)
    for r in range(buf.shape[0]):
        if done[r]:
            out[r, pad] = True
        else:
            out[r] = grammar.allowed(buf[r, :t + 1].tolist())
    return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))


def ranked(cached, batch: dict, max_len: int, bos: int, eos: int, pad: int, width: int,
           grammar=None) -> tuple[np.ndarray, np.ndarray]:
    """Beam search of ``width`` beams per program (sum of token log-probabilities).

    ``batch``: one batch of weight tokens (:func:`metamodels.decompiler.batches.eval_batches`),
    B rows. Returns ``(sequences (B, width, max_len) int32, scores (B, width) float64)``,
    each row's beams best first: BOS first, PAD after EOS. A beam that did not reach EOS
    within ``max_len`` tokens scores ``-inf`` and sorts last. Width 1 is greedy decoding.
    """
    b = batch["mask"].shape[0]
    k = int(width)
    state = cached.start(batch, max_len, k)
    buf = np.full((b * k, max_len), pad, np.int32)
    buf[:, 0] = bos
    score = np.full((b, k), NEG, np.float64)
    score[:, 0] = 0.0  # one live beam per program at the start
    done = np.zeros(b * k, bool)
    for t in range(max_len - 1):
        logits, state = cached.step(state, buf[:, t], t)
        logp = _log_softmax(logits.astype(np.float64))
        if grammar is not None:
            logp = np.where(_masks(grammar, buf, t, done, pad, logp.shape[1]), logp, NEG)
        logp[done] = NEG
        logp[done, pad] = 0.0  # finished beams continue with PAD at no cost
        v = logp.shape[1]
        cand = (score.reshape(b * k, 1) + logp).reshape(b, k * v)
        top = np.argsort(-cand, axis=1, kind="stable")[:, :k]
        src = top // v
        tok = (top % v).astype(np.int32)
        score = np.take_along_axis(cand, top, axis=1)
        rows = (np.arange(b)[:, None] * k + src).reshape(-1)
        if k > 1:
            buf, done = buf[rows], done[rows]
            state = cached.take(state, rows)
        buf[:, t + 1] = np.where(done, pad, tok.reshape(-1))
        done = done | (tok.reshape(-1) == eos)
        if done.all():
            break
    score = np.where(done.reshape(b, k) & (score > NEG / 2), score, -np.inf)
    order = np.argsort(-score, axis=1, kind="stable")
    seqs = np.take_along_axis(buf.reshape(b, k, max_len), order[:, :, None], axis=1)
    return seqs, np.take_along_axis(score, order, axis=1)


def greedy(cached, batch: dict, max_len: int, bos: int, eos: int, pad: int,
           grammar=None) -> np.ndarray:
    """(B, max_len) token ids, BOS first; positions after EOS are PAD."""
    return ranked(cached, batch, max_len, bos, eos, pad, 1, grammar)[0][:, 0]


def beam(cached, batch: dict, max_len: int, bos: int, eos: int, pad: int, width: int,
         grammar=None) -> np.ndarray:
    """(B, max_len): the best finished beam of each program (its first beam when none
    finished)."""
    return ranked(cached, batch, max_len, bos, eos, pad, width, grammar)[0][:, 0]
