"""The decompiler's training loop: ``train_and_evaluate(cfg, workdir, ...)``.

AdamW with linear warmup and cosine decay, global-norm gradient clipping,
next-token cross-entropy on the program tokens. Every ``eval_every`` steps the
validation split is scored teacher-forced (loss, token accuracy) and a fixed
subset of it is decoded freely (exact-program accuracy). Orbax checkpoints in
``workdir/checkpoints`` (params, optimizer state, step and the history so far)
let an interrupted run resume; because the batch of step ``s`` is a pure
function of the seed and ``s`` (:class:`metamodels.decompiler.batches.TrainOrder`) and
there is no other randomness, the resumed run ends with the same parameters
as an uninterrupted one. A checkpoint written under different training
parameters is never resumed: ``workdir`` is keyed by their hash.

Computation runs on whatever device JAX finds first (a GPU when one is
present); with ``train.precision: auto`` activations are bfloat16 on a GPU or
TPU and float32 on the CPU, parameters and optimizer state always float32.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import queue
import sys
import threading
import time
from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metamodels.core.nn import compute_dtype, optimizer
from metamodels.decompiler import batches as B
from metamodels.decompiler import decode as D
from metamodels.decompiler import transformer as T
from metamodels.decompiler.incremental import Cached
from metamodels.rasp.tokenizer import BOS, EOS, PAD, Vocab


def config_hash(cfg: Mapping) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


class Trainer:
    """Model, optimizer and jitted functions for one decompiler config."""

    def __init__(self, cfg: Mapping, vocab: Vocab):
        self.cfg = cfg
        self.vocab = vocab
        self.pad, self.bos, self.eos = (vocab.index[t] for t in (PAD, BOS, EOS))
        self.dtype = compute_dtype(cfg["train"]["precision"])
        self.model = T.build(cfg, len(vocab), self.dtype)
        self.tx = optimizer(cfg["train"])
        self.train_step = jax.jit(self._train_step, donate_argnums=(0, 1))
        self.eval_step = jax.jit(self._eval_step)
        self.cached = Cached(self.model)
    def init(self, example: Mapping[str, np.ndarray]):
        key = jax.random.PRNGKey(self.cfg["seed"])
        method = "with_residual" if T.residual_weight(self.cfg) else None
        params = self.model.init(key, _device(example), jnp.asarray(example["program"][:, :-1]),
                                 method=method)
        params = params["params"]
        return params, self.tx.init(params)

    def _program_loss(self, logits, batch):
        """Mean next-token cross-entropy of ``logits`` (B, Tp, vocab) against the batch's
        program tokens, and the (correct, counted) masks."""
        tgt = batch["program"][:, 1:]
        w = (tgt != self.pad) & batch["valid"][:, None]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, tgt)
        correct = (logits.argmax(-1) == tgt) & w
        return (ce * w).sum() / jnp.maximum(w.sum(), 1), (correct, w)

    def _loss(self, params, batch):
        logits = self.model.apply({"params": params}, batch, batch["program"][:, :-1])
        return self._program_loss(logits, batch)

    def _train_loss(self, params, batch):
        """Next-token cross-entropy, plus ``residual_supervision`` x the auxiliary loss."""
        lam = T.residual_weight(self.cfg)
        if not lam:
            loss, _ = self._loss(params, batch)
            return loss, {"loss": loss}
        logits, res = self.model.apply({"params": params}, batch, batch["program"][:, :-1],
                                       method="with_residual")
        ce, _ = self._program_loss(logits, batch)
        aux = residual_loss(res, batch, int(self.cfg["input"]["max_residual"]))
        return ce + lam * aux, {"loss": ce, "residual_loss": aux}

    def _train_step(self, params, opt_state, batch):
        (_, m), grads = jax.value_and_grad(self._train_loss, has_aux=True)(params, batch)
        updates, opt_state = self.tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {**m, "grad_norm": optax.global_norm(grads)}

    def _eval_step(self, params, batch):
        loss, (correct, w) = self._loss(params, batch)
        return {"loss_sum": loss * w.sum(), "correct": correct.sum(), "tokens": w.sum(),
                "row_correct": correct.sum(1), "row_tokens": w.sum(1)}

    def teacher_forced(self, params, ex: B.Split, edges, batch_size: int) -> dict:
        """Loss and token accuracy on every program; per-row counts in order of ex."""
        tot = {"loss_sum": 0.0, "correct": 0, "tokens": 0}
        row_c = np.zeros(len(ex), np.int64)
        row_t = np.zeros(len(ex), np.int64)
        for idx, batch in B.eval_batches(ex, batch_size, edges):
            out = jax.device_get(self.eval_step(params, _device(batch)))
            for k in tot:
                tot[k] += out[k]
            row_c[idx] = out["row_correct"][:len(idx)]
            row_t[idx] = out["row_tokens"][:len(idx)]
        return {"loss": float(tot["loss_sum"] / max(tot["tokens"], 1)),
                "token_accuracy": float(tot["correct"] / max(tot["tokens"], 1)),
                "row_correct": row_c, "row_tokens": row_t}

    def ranked(self, params, ex: B.Split, edges, batch_size: int, grammar=None,
               width: int = 1, subset: np.ndarray | None = None
               ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Beam search with key/value caches (:func:`metamodels.decompiler.decode.ranked`):
        {program index: (sequences (width, T), scores (width,)), best first}."""
        cached = self.cached.bind(params)
        out = {}
        for idx, batch in B.eval_batches(ex, batch_size, edges, subset):
            seqs, scores = D.ranked(cached, batch, ex.program_width, self.bos, self.eos,
                                    self.pad, width, grammar)
            for r, i in enumerate(idx):
                out[int(i)] = (seqs[r], scores[r])
        return out

    def decode(self, params, ex: B.Split, edges, batch_size: int, grammar=None,
               beam: int = 1, subset: np.ndarray | None = None) -> dict[int, np.ndarray]:
        """Free decoding: {program index: token ids (BOS ... EOS, PAD after)}, greedy or the
        best of ``beam`` beams."""
        ranked = self.ranked(params, ex, edges, batch_size, grammar, beam, subset)
        return {i: seqs[0] for i, (seqs, _) in ranked.items()}


def residual_targets(batch: Mapping, max_residual: int, slots: int):
    """(B, Tw, 2, slots) bool: whether weight token t's first (0) or second (1) residual half
    has a nonzero entry in a dimension of each slot (``batch["residual_slot"]`` (B,
    max_residual), :func:`metamodels.decompiler.weights.residual_slots`). Raises ValueError
    when the batch carries no slots of that width (token shards written before the column)."""
    if batch["residual_slot"].shape[1] != max_residual:
        raise ValueError(
            "decompiler.train.residual_supervision > 0 needs each program's residual slots "
            "(decompiler.input.tokenization: residual, and token shards with the "
            "'residual_slot' column); rerun the tokenize jobs (`snakemake --forcerun "
            "tokenize ...`) or set residual_supervision to 0")
    f = batch["features"]
    halves = jnp.stack([f[..., :max_residual] != 0,
                        f[..., max_residual:2 * max_residual] != 0], axis=2)  # B,Tw,2,R
    onehot = jax.nn.one_hot(batch["residual_slot"], slots, dtype=jnp.float32)  # B,R,S
    return jnp.einsum("btkr,brs->btks", halves.astype(jnp.float32), onehot) > 0


def residual_loss(logits, batch: Mapping, max_residual: int):
    """Mean sigmoid cross-entropy of the residual head (B, Tw, 2, S) against
    :func:`residual_targets`, over valid weight tokens and the known slots (1..S-1)."""
    slots = logits.shape[-1]
    tgt = residual_targets(batch, max_residual, slots)
    bce = optax.sigmoid_binary_cross_entropy(logits, tgt.astype(jnp.float32))[..., 1:]
    w = (batch["mask"] & batch["valid"][:, None]).astype(jnp.float32)
    return (bce.mean((2, 3)) * w).sum() / jnp.maximum(w.sum(), 1)


class Prefetcher:
    """Yields ``make(s)`` for s in ``steps``, in order, built ahead in a background thread."""

    def __init__(self, make: Callable[[int], dict], steps: Iterable[int], depth: int = 2):
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(make, list(steps)), daemon=True)

    def _run(self, make, steps):
        try:
            for s in steps:
                if self._stop.is_set():
                    return
                self._q.put((s, make(s)))
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            self._q.put((None, e))
            return
        self._q.put((None, None))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get_nowait()
            except queue.Empty:
                self._thread.join(0.01)
        return False

    def __iter__(self):
        while True:
            s, item = self._q.get()
            if s is None:
                if item is not None:
                    raise item
                return
            yield item


def _device(batch: Mapping[str, np.ndarray]) -> dict:
    return {k: jnp.asarray(v) for k, v in batch.items()}


def exact_matches(decoded: Mapping[int, np.ndarray], ex: B.Split, pad: int) -> dict[int, bool]:
    out = {}
    for i, seq in decoded.items():
        tgt = ex.programs[i]
        out[i] = bool(np.array_equal(np.where(seq == pad, pad, seq)[:len(tgt)], tgt))
    return out


def evaluate(trainer: Trainer, params, val: B.Split, edges, t: Mapping, grammar,
             exact_subset: np.ndarray, step: int, losses: list) -> dict:
    """One learning-curve entry: validation loss, token and exact-program accuracy."""
    tf = trainer.teacher_forced(params, val, edges, t["eval_batch_size"])
    dec = trainer.decode(params, val, edges, t["eval_batch_size"], grammar, subset=exact_subset)
    ex = exact_matches(dec, val, trainer.pad)
    return {"step": step, "train_loss": float(np.mean(jax.device_get(losses))),
            "val_loss": tf["loss"], "val_token_accuracy": tf["token_accuracy"],
            "val_exact_accuracy": float(np.mean(list(ex.values()))) if ex else 0.0,
            "val_exact_programs": len(ex)}


def _manager(path: pathlib.Path):
    import orbax.checkpoint as ocp
    return ocp.CheckpointManager(
        path.absolute(), options=ocp.CheckpointManagerOptions(
            max_to_keep=2, create=True, enable_async_checkpointing=False))


def train_and_evaluate(cfg: Mapping, workdir: str | pathlib.Path, train: B.Split,
                       val: B.Split, vocab: Vocab, grammar=None,
                       stop_after: int | None = None,
                       log: Callable[[str], None] | None = None) -> dict:
    """Train (resuming from ``workdir`` when it holds a checkpoint of this config).

    Returns ``{"params", "history", "edges", "timing"}``; ``stop_after`` ends the
    run after that many steps as if it had been killed (tests).
    """
    import orbax.checkpoint as ocp
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    t = cfg["train"]
    steps = int(t["steps"])
    workdir = pathlib.Path(workdir) / config_hash(cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True))
    trainer = Trainer(cfg, vocab)
    edges = B.bucket_edges(train.n_tokens, cfg["input"]["buckets"])
    order = B.TrainOrder(train, t["batch_size"], cfg["seed"])
    exact_subset = np.random.default_rng([cfg["seed"], 1]).permutation(len(val))[
        :t["eval_exact_programs"]]
    params, opt_state = trainer.init(B.make_batch(train, order.step(0), edges))
    history: list[dict] = []
    start = 0
    mngr = _manager(workdir / "checkpoints")
    latest = mngr.latest_step()
    if latest is not None:
        state = {"params": params, "opt_state": opt_state}
        restored = mngr.restore(latest, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(state), history=ocp.args.JsonRestore()))
        params, opt_state = restored["state"]["params"], restored["state"]["opt_state"]
        history = list(restored["history"]["entries"])
        start = latest
        log(f"[train] resuming from step {start} ({workdir / 'checkpoints'})")

    def save(step: int):
        mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave({"params": params, "opt_state": opt_state}),
            history=ocp.args.JsonSave({"entries": history})), force=True)
        mngr.wait_until_finished()

    log(f"[train] {len(train)} train / {len(val)} val programs, {steps} steps of "
        f"{t['batch_size']}, weight-token buckets {edges}, backend {jax.default_backend()}, "
        f"dtype {jnp.dtype(trainer.dtype).name}, "
        f"{sum(x.size for x in jax.tree_util.tree_leaves(params)):,} params")
    losses: list = []
    t0 = time.perf_counter()
    tokens_seen = 0
    timing = {"train_s": 0.0, "eval_s": 0.0, "steps": 0}
    end = steps if stop_after is None else min(steps, stop_after)
    prefetch = Prefetcher(lambda s: B.make_batch(train, order.step(s), edges), range(start, end))
    with prefetch:
        for step, batch in zip(range(start, end), prefetch):
            params, opt_state, m = trainer.train_step(params, opt_state, _device(batch))
            tokens_seen += int(batch["mask"].sum()) + int((batch["program"][:, 1:] != 0).sum())
            losses.append(m["loss"])  # stays on the device: no sync per step
            done = step + 1
            if done % t["log_every"] == 0 or done == steps:
                el = time.perf_counter() - t0
                recent = float(np.mean(jax.device_get(losses[-t["log_every"]:])))
                aux = (f" residual_loss {float(m['residual_loss']):.4f}"
                       if "residual_loss" in m else "")
                log(f"[train] step {done}/{steps} loss {recent:.4f}{aux} "
                    f"grad_norm {float(m['grad_norm']):.3f} {tokens_seen / el:,.0f} tokens/s "
                    f"eta {el / max(done - start, 1) * (steps - done):.0f}s")
            if done % t["eval_every"] == 0 or done == steps:
                te = time.perf_counter()
                history.append(evaluate(trainer, params, val, edges, t, grammar, exact_subset,
                                        done, losses))
                timing["eval_s"] += time.perf_counter() - te
                log(f"[train] eval {json.dumps(history[-1])}")
                losses = []
                save(done)  # at every evaluation, so a resumed history is exact
    timing["train_s"] = time.perf_counter() - t0 - timing["eval_s"]
    timing["steps"] = max(0, end - start)
    mngr.close()
    return {"params": params, "history": history, "edges": edges, "timing": timing}
