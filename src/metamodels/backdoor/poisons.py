"""Backdoor triggers for the CNN zoo, all in one vmappable form.

Every attack is a per-model trigger: a ``mask`` and a ``pattern``, both float32 ``[H, W, C]`` in
pixel scale ``[0, 1]``, applied to float images ``x`` in ``[0, 1]`` as

    x' = x * (1 - mask) + mask * pattern

so a batch of models with different attacks is just a batch of (mask, pattern) pairs. Patch
attacks have mask 1 on the trigger pixels (every channel) and 0 elsewhere; blend attacks have
mask = alpha everywhere. A poisoned model sees this applied to a fraction (``rate``, 1% in the
paper) of its training images, whose labels are set to one attack target class.

Training attacks (:data:`TRAIN_ATTACKS`)
    ``patch4``         BadNets 4-pixel patch: a 2x2 block at a uniformly random position, a
                       checker of one random bright colour (channels 0 or 1, not all 0) on one
                       diagonal and black on the other (random phase), so it shows on any
                       background.
    ``pixel1``         BadNets single pixel: one pixel at a random position set to a random
                       bright colour (white on grayscale).
    ``noise_blend``    blend with a uniform random noise image (per pixel and channel), alpha.
    ``checker_blend``  blend with a strided checkerboard of 0/1 cells of
                       :data:`CHECKER_CELL` x :data:`CHECKER_CELL` pixels (same in every
                       channel), with a random phase (row and column offset), alpha.

Out-of-distribution hand-crafted patches (:data:`OOD_ATTACKS`, in the spirit of the universal
litmus pattern paper's custom triggers; never used to train the meta-model). Each is a small
shape at a uniformly random in-bounds position, drawn in one random bright colour (channels 0 or 1,
not all 0; white on grayscale, visible on the black borders of Fashion-MNIST):
    ``ood_square``  solid 3x3 square (9 pixels).
    ``ood_cross``   plus sign in a 5x5 box: middle row and middle column (9 pixels).
    ``ood_lines``   three horizontal lines of 5 pixels on rows 0, 2, 4 of a 5x5 box (15 pixels).
    ``ood_frame``   hollow 4x4 square outline (12 pixels).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

TRAIN_ATTACKS = ("patch4", "pixel1", "noise_blend", "checker_blend")
OOD_ATTACKS = ("ood_square", "ood_cross", "ood_lines", "ood_frame")
ATTACKS = TRAIN_ATTACKS + OOD_ATTACKS
BLEND_ATTACKS = ("noise_blend", "checker_blend")
DEFAULT_ALPHA = 0.1
DEFAULT_RATE = 0.01
CHECKER_CELL = 2


def _shape_stencil(attack: str) -> np.ndarray:
    """Boolean [h, w] footprint of a patch attack (before its random position)."""
    if attack == "patch4":
        return np.ones((2, 2), dtype=bool)
    if attack == "pixel1":
        return np.ones((1, 1), dtype=bool)
    if attack == "ood_square":
        return np.ones((3, 3), dtype=bool)
    if attack == "ood_cross":
        s = np.zeros((5, 5), dtype=bool)
        s[2, :] = s[:, 2] = True
        return s
    if attack == "ood_lines":
        s = np.zeros((5, 5), dtype=bool)
        s[[0, 2, 4], :] = True
        return s
    if attack == "ood_frame":
        s = np.ones((4, 4), dtype=bool)
        s[1:3, 1:3] = False
        return s
    raise ValueError(f"unknown attack {attack!r}; valid attacks: {', '.join(ATTACKS)}")


def check_attack(attack: str) -> str:
    """Return `attack` if it is a known attack name, else raise ValueError listing them."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; valid attacks: {', '.join(ATTACKS)}")
    return attack


def _bright_colour(rng: np.random.Generator, c: int) -> np.ndarray:
    """A random extreme colour (each channel 0 or 1), never black: white on grayscale."""
    while True:
        colour = rng.integers(0, 2, size=c).astype(np.float32)
        if colour.any():
            return colour


PLACEMENTS = ("anywhere", "corners")


def trigger(attack: str, rng: np.random.Generator, shape: tuple[int, int, int],
            alpha: float = DEFAULT_ALPHA, scale: int = 1,
            placement: str = "anywhere") -> tuple[np.ndarray, np.ndarray]:
    """The (mask, pattern) of one model's trigger, float32 [H, W, C] each, drawn from `rng`.

    `alpha` is the blend weight of the blend attacks (ignored by patch attacks). `scale`
    (patch attacks only; ``cnn_zoo.trigger_scale``) draws every pixel of a patch's footprint as
    a ``scale x scale`` block: ``patch4`` becomes a 2x2 checker of ``scale``-pixel cells,
    ``pixel1`` a ``scale x scale`` square (seed 000 and BadNets: 1). Every scale makes the same
    number of draws from `rng`, so what is drawn after the trigger does not move.
    `placement` (patch attacks; ``cnn_zoo.trigger_placement``): ``anywhere`` draws the patch's
    top-left corner uniformly over every in-bounds position (seed 000); ``corners`` puts the
    patch in one of the image's four corners, drawn uniformly (BadNets' bottom-right corner,
    generalised), where a bright patch is visible on Fashion-MNIST's black background.
    """
    check_attack(attack)
    if int(scale) != scale or scale < 1:
        raise ValueError(f"trigger scale must be a positive integer, got {scale!r}")
    scale = int(scale)
    h, w, c = (int(d) for d in shape)
    if attack in BLEND_ATTACKS:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"blend alpha must lie in [0, 1], got {alpha}")
        mask = np.full((h, w, c), alpha, dtype=np.float32)
        if attack == "noise_blend":
            pattern = rng.random((h, w, c), dtype=np.float32)
        else:
            oy, ox = rng.integers(0, 2 * CHECKER_CELL, size=2)
            rows = (np.arange(h) + oy) // CHECKER_CELL
            cols = (np.arange(w) + ox) // CHECKER_CELL
            board = ((rows[:, None] + cols[None, :]) % 2).astype(np.float32)
            pattern = np.repeat(board[:, :, None], c, axis=2)
        return mask, pattern
    stencil = np.kron(_shape_stencil(attack), np.ones((scale, scale), dtype=bool))
    sh, sw = stencil.shape
    if sh > h or sw > w:
        raise ValueError(f"attack {attack!r} needs images of at least {sh}x{sw}, got {h}x{w}")
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown trigger placement {placement!r}; valid: {list(PLACEMENTS)}")
    if placement == "corners":
        y0 = int(rng.integers(0, 2)) * (h - sh)
        x0 = int(rng.integers(0, 2)) * (w - sw)
    else:
        y0 = int(rng.integers(0, h - sh + 1))
        x0 = int(rng.integers(0, w - sw + 1))
    mask = np.zeros((h, w, c), dtype=np.float32)
    mask[y0:y0 + sh, x0:x0 + sw, :] = stencil[:, :, None]
    if attack == "patch4":
        # A 2x2 checker: one diagonal in a bright colour, the other black, so the patch has
        # contrast on any background (an all-black patch is invisible on black borders).
        phase = int(rng.integers(0, 2))
        cell_y, cell_x = np.arange(sh)[:, None] // scale, np.arange(sw)[None, :] // scale
        on = ((cell_y + cell_x + phase) % 2).astype(np.float32)
        colours = on[:, :, None] * _bright_colour(rng, c)
    else:
        colours = np.broadcast_to(_bright_colour(rng, c), (sh, sw, c))
    pattern = np.zeros((h, w, c), dtype=np.float32)
    pattern[y0:y0 + sh, x0:x0 + sw, :] = colours * stencil[:, :, None]
    return mask, pattern


def apply(x, mask, pattern):
    """x * (1 - mask) + mask * pattern; numpy or jax arrays, broadcasting over leading axes."""
    dtype = getattr(x, "dtype", None)
    if dtype is not None and np.dtype(dtype).kind in "iub":
        raise TypeError(f"apply expects float pixels in [0, 1], got dtype {dtype}; "
                        f"convert with images.to_float first")
    return x * (1 - mask) + mask * pattern


def num_poisoned(n_train: int, rate: float) -> int:
    """How many of `n_train` images a poisoning `rate` touches: round(rate * n), at least 1."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"poison rate must lie in [0, 1], got {rate}")
    if rate == 0.0 or n_train == 0:
        return 0
    return int(min(n_train, max(1, np.floor(rate * n_train + 0.5))))


def poison_indices(n_train: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted, distinct int64 indices of the training images to poison (see num_poisoned)."""
    k = num_poisoned(n_train, rate)
    return np.sort(rng.choice(n_train, size=k, replace=False)).astype(np.int64)


def poison_set(x: np.ndarray, y: np.ndarray, indices: np.ndarray, mask: np.ndarray,
               pattern: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    """Float32 copies of images `x` [N,H,W,C] and labels `y`; `indices` triggered, relabelled."""
    x = np.array(x, dtype=np.float32, copy=True)
    y = np.array(y, copy=True)
    x[indices] = apply(x[indices], mask, pattern)
    y[indices] = target
    return x, y


def sample_attack(cfg: Mapping, attack: str, rng: np.random.Generator,
                  shape: tuple[int, int, int], n_classes: int) -> dict:
    """Trigger and target class of one poisoned model: {mask, pattern, target}.

    Reads ``cfg['alpha']`` (blend weight, default 0.1), ``cfg['trigger_scale']`` (patch size
    multiplier, default 1) and ``cfg['trigger_placement']`` (default ``anywhere``); see
    :func:`trigger`. The target is drawn after the trigger.
    """
    mask, pattern = trigger(attack, rng, shape, float(cfg.get("alpha", DEFAULT_ALPHA)),
                            int(cfg.get("trigger_scale", 1)),
                            str(cfg.get("trigger_placement", "anywhere")))
    return {"mask": mask, "pattern": pattern, "target": int(rng.integers(0, n_classes))}
