"""De-sparsification of compiled models (seed 001 §3.2): rotation and PCA compression.

Every block of a tracr model reads the residual stream linearly (query, key,
value, MLP input) and writes to it linearly (attention output, MLP output), so
a linear change of residual basis ``C`` (shape ``[D, D']``) folds into the
weights (:func:`fold`): the residual becomes ``r = x C``, a block reads
``x ≈ r Cᵀ`` and writes ``y C``. With ``C`` orthogonal (``D' = D``) the folded
model computes exactly the same function; with ``C`` a projection onto the
top-``D'`` principal directions of the residual activations it is a
compression whose fidelity is measured on the input domain
(:func:`agreement`).

PCA here is uncentred: the directions are the top eigenvectors of the
activations' second-moment matrix, so the projection folds into the weights
without extra bias terms (tracr's constant "one" direction, always among the
largest, keeps carrying the offsets the blocks need).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from metamodels.zoo.compiler import CompiledModel
from metamodels.zoo.forward import encode, forward_ids, forward_logits, forward_residuals

__all__ = ["fold", "random_orthogonal", "residual_activations", "pca_basis", "compressed_width",
           "agreement", "orthogonal_variant", "pca_variant"]


def fold(model: CompiledModel, C: np.ndarray) -> CompiledModel:
    """The model with residual stream ``r = x C``, ``C`` of shape [D, D'], folded into its weights.

    Embeddings, attention-output and MLP-output weights and biases are
    right-multiplied by ``C``; query, key, value and MLP-input weights are
    left-multiplied by ``Cᵀ`` (their biases do not touch the residual); the
    unembedding becomes the explicit matrix ``Cᵀ U``.
    """
    C = np.asarray(C, np.float64)
    d = model.residual_size
    if C.ndim != 2 or C.shape[0] != d:
        raise ValueError(f"C must have shape [{d}, D'], got {C.shape}")
    params: dict[str, dict[str, np.ndarray]] = {}
    for module, arrays in model.params.items():
        sub = module.rsplit("/", 1)[-1]
        out = {}
        for par, arr in arrays.items():
            a = np.asarray(arr, np.float64)
            if module in ("token_embed", "pos_embed") or sub in ("linear", "linear_2"):
                a = a @ C  # writes to the residual (weights [., D], biases [D])
            elif par == "w":  # query / key / value / linear_1 read from it
                a = C.T @ a
            out[par] = a.astype(np.float32)
        params[module] = out
    unembed = (C.T @ model.unembed_matrix().astype(np.float64)).astype(np.float32)
    return dataclasses.replace(model, params=params, unembed=unembed,
                               residual_labels=[f"c{j}" for j in range(C.shape[1])])


def random_orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal [d, d] matrix (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)[None, :]


def residual_activations(model: CompiledModel, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """Every residual-stream state (embedding and after each half layer, all positions)
    on ``inputs`` (arrays [N, length] of token values), as rows [n, D] in float64."""
    rows = []
    for x in inputs:
        if len(x):
            ids = encode(model, x.tolist())
            for h in forward_residuals(model, ids, np.float64):
                rows.append(h.reshape(-1, h.shape[-1]))
    return np.concatenate(rows) if rows else np.zeros((0, model.residual_size))


def pca_basis(acts: np.ndarray, k: int) -> np.ndarray:
    """[D, k] orthonormal top-k eigenvectors of the second moment of ``acts`` [n, D].

    Ties and signs are broken deterministically (descending eigenvalue, then
    the largest-magnitude entry of each vector made positive).
    """
    acts = np.asarray(acts, np.float64)
    if not 1 <= k <= acts.shape[1]:
        raise ValueError(f"k={k} must be in 1..{acts.shape[1]}")
    m = acts.T @ acts / max(len(acts), 1)
    vals, vecs = np.linalg.eigh(m)
    top = vecs[:, np.argsort(-vals, kind="stable")[:k]]
    lead = top[np.argmax(np.abs(top), axis=0), np.arange(k)]
    return top * np.where(lead < 0, -1.0, 1.0)[None, :]


def compressed_width(d: int, ratio: float) -> int:
    """D' = round(ratio · D), at least 1 and at most D."""
    return int(min(d, max(1, round(ratio * d))))


def agreement(reference: CompiledModel, candidate: CompiledModel,
              inputs: Sequence[np.ndarray], atol: float, margin: float = 1e-3) -> dict:
    """How often ``candidate`` decodes to ``reference``'s output (float32, as stored).

    Positions where ``reference`` decides nothing are not compared: a
    categorical position whose two largest output logits are within ``margin``
    (tracr writes no output direction where RASP's value is None, and the argmax
    of an all-zero row is a tie) -- their count is reported as ``undecided``.
    ``inputs`` is the fraction of input sequences equal at every compared
    position (the BOS position excluded), ``positions`` the fraction of compared
    positions that are equal. Numerical outputs are equal within ``atol``.
    """
    n_in = n_pos = ok_in = ok_pos = undecided = 0
    for x in inputs:
        if not len(x):
            continue
        ids = encode(reference, x.tolist())
        got = forward_ids(candidate, ids)[:, 1:]
        if reference.categorical_output:
            logits = forward_logits(reference, ids)[:, 1:]
            top2 = np.sort(logits, axis=-1)[..., -2:] if logits.shape[-1] > 1 else None
            decided = (np.ones(got.shape, bool) if top2 is None
                       else top2[..., 1] - top2[..., 0] > margin)
            same = (got == np.argmax(logits, axis=-1)) | ~decided
        else:
            want = forward_ids(reference, ids)[:, 1:]
            decided = np.ones(got.shape, bool)
            same = np.abs(got.astype(np.float64) - want.astype(np.float64)) <= atol
        n_in += len(x)
        n_pos += int(decided.sum())
        undecided += int((~decided).sum())
        ok_in += int(same.all(axis=1).sum())
        ok_pos += int((same & decided).sum())
    return {"inputs": ok_in / max(n_in, 1), "positions": ok_pos / max(n_pos, 1),
            "n_inputs": n_in, "undecided": undecided}


def orthogonal_variant(model: CompiledModel, rng: np.random.Generator) -> CompiledModel:
    """The model with its residual stream rotated by a random orthogonal matrix."""
    return fold(model, random_orthogonal(model.residual_size, rng))


def pca_variant(model: CompiledModel, rng: np.random.Generator, ratio: float,
                activation_inputs: Sequence[np.ndarray]) -> CompiledModel:
    """Rotation, then PCA compression to D' = ``compressed_width(D, ratio)``.

    The residual is rotated by a random orthogonal ``Q``, projected on the
    top-D' principal directions ``B`` of the rotated activations collected on
    ``activation_inputs``, and the D' coordinates are rotated by a second random
    orthogonal ``R``: ``C = Q B R``. (Uncentred PCA of ``x Q`` has directions
    ``Qᵀ v``, so ``Q B`` alone would undo the rotation up to the eigenbasis; ``R``
    keeps the stored basis random.)
    """
    q = random_orthogonal(model.residual_size, rng)
    k = compressed_width(model.residual_size, ratio)
    b = pca_basis(residual_activations(model, activation_inputs) @ q, k)
    return fold(model, q @ b @ random_orthogonal(k, rng))
