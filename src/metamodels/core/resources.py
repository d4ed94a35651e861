"""Cluster resources of every rule (memory, wall time, CPUs, GPUs), computed from the params.

What a job asks a batch system for (``snakemake --profile profiles/slurm``, see
docs/pipeline.md "On a SLURM cluster"): ``mem_mb`` (host memory, MB), ``runtime`` (wall
minutes), ``cpus_per_task`` (the rule's ``threads:``, params.yaml ``threads``) and ``gpu``
(GPUs; the SLURM plugin turns it into ``--gpus=N``). A local ``snakemake --cores N`` run
ignores all but ``gpu``, and that one only under ``--resources gpu=N``.

What the formulas are based on
------------------------------
Each stage's cost is scaled linearly from a measured run by what its work grows with in the
params (programs per shard, program length, model size, steps, images, epochs, ...):

* memory: the peak RSS of the default run's jobs (Snakemake benchmark files
  ``logs/benchmarks/*.tsv`` and ``benchmarks/results/*.json``; 2-core CPU machine), split into
  a process baseline (Python, NumPy, JAX and XLA: :data:`BASE_MB`, more on a GPU,
  :data:`GPU_HOST_MB`) plus the data a stage holds in memory at once. ``split`` holds one
  compiled and one output shard at a time, and the decompiler's training and evaluation read
  token shards on demand (benchmarks/data_scale.py): their memory grows only by a few bytes
  per program. Stages that load a whole zoo (the detector, the hyperparameter predictors)
  hold it all: their memory grows with the zoo, not with one shard.
* a compiled program's size: 127 KB in memory (13,000 weight floats plus its metadata) at the
  default ``sampler`` lengths 3-6, 229 KB (29,600 floats) at the paper's 4-9 (measured on 35
  sampled programs); both grow about with the square of the mean program length
  (:func:`program_kb`, :func:`program_floats`).
* wall time: the default run's per-job seconds (``benchmarks/results/decompiler_default_run``,
  ``backdoor_default_run``, ``modadd_default_run``, ``variants_default_run``,
  ``compile_throughput``) per unit of work (program, training step, CNN-epoch, ...), times
  :data:`TIME_SAFETY` (another node's speed, a shared file system, a loaded node) plus
  :data:`STARTUP_MIN`. Training time is counted in model FLOPs (6 x parameters x tokens per
  step), at the rate measured on 2 CPU cores, or at :data:`GPU_FLOPS` on a GPU (an assumed,
  conservative sustained rate: 20 TFLOP/s, under 10 % of a current data-centre GPU's bf16 peak;
  not measured here). Early stopping (modadd) is not counted on: its jobs ask for
  ``max_epochs``.
* memory and wall time double on each retry (``attempt``; the profile sets ``retries: 1``), so
  a job killed for either gets a second chance with twice as much.

Nothing here reads the machine or the environment: the same params ask for the same resources
on every cluster (rules/common.smk passes ``METAMODELS_GPUS``, the user's GPU cap, as `gpus`). Partition, account and GPU model are the user's (profiles/slurm/config.yaml).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

BASE_MB = 1500         # Python + NumPy + JAX + XLA of one job process (measured 0.5-0.9 GB)
GPU_HOST_MB = 3000     # more host memory when JAX drives a GPU (CUDA context, pinned buffers)
MIN_MB = 2000          # no job asks for less
TIME_SAFETY = 2.0      # wall time: measured seconds x this
STARTUP_MIN = 10       # minutes every job gets on top (imports, JIT compilation, file system)
MEM_SAFETY = 1.5       # the data term of memory x this (copies while arrays are assembled)

# Program zoo, measured at the default params (mean program length 4.5, 3,905 domain inputs)
REF_MEAN_LENGTH = 4.5
REF_EVAL_INPUTS = 3905
PROGRAM_KB = 127.0           # one compiled program in memory (weights + metadata strings)
PROGRAM_FLOATS = 13_000      # its weights
SAMPLE_S = 0.067             # sampler seconds per accepted program (20 s / 300)
COMPILE_S = 0.167            # compile + verify seconds per program (50 s / 300)
SPLIT_S = 0.0025             # split seconds per program (6 s / 2,400)
TOKENIZE_S = 0.004           # tokenize seconds per program (1.0 s / 277, residual tokens)

# Training: FLOP rates from the default decompiler run (700 steps in 515 s on 2 cores, the
# tokens per step counted as below) and an assumed GPU rate.
CPU_FLOPS_PER_THREAD = 9.0e10
GPU_FLOPS = 2.0e13
GPU_SPEEDUP = 20.0           # other JAX stages (decoding, CNNs, students) on a GPU vs 2 cores
DECODE_S = 0.25              # seconds per test program per decoder, default model on 2 cores
SEARCH_DECODERS_PER_CANDIDATE = 1 / 6  # cached beam search of width K ~ K/6 greedy decodes
VERIFY_S = 0.2               # CPU seconds per test model to check its candidates (default run)
REF_DECODER_PARAMS = 1.22e6  # the default decompiler's parameters

# Variant zoos: CPU seconds per program (default run, 1,000 distillation steps, group 16)
VARIANT_S = {"standard": 0.4, "orthogonal": 0.4, "pca": 0.6, "compressed": 12.3, "natural": 11.3}

# CNN zoo: CPU seconds per image per epoch for the default CNN (channels 16-32-64, 28x28x1,
# batch 32): 165 CPU s per shard of 10 CNNs x 2 epochs x 4,000 images.
CNN_IMAGE_S = 0.00206
REF_CNN_CONV_MACS = 28 * 28 * (1 * 16) + 14 * 14 * (16 * 32) + 7 * 7 * (32 * 64)
IMAGES = {"fashion_mnist": (60_000, 10_000, 28, 28, 1), "cifar10": (50_000, 10_000, 32, 32, 3)}

# Hyperparameter zoo: XLA compiles one training step per (architecture, optimizer, batch size),
# 1.5-4.5 s on the CPU (measured); counted once per model, as a shard rarely repeats a triple.
HPARAM_COMPILE_S = 4.0

# Modular addition: seconds per (run x epoch x training example), d_model 128, d_mlp 512
# (mod1: 10 runs, ~800 epochs, 2,437 examples, 840 s).
MODADD_S = 4.3e-5

GPU_RULES = ("train_decompiler", "evaluate_decompiler", "train_variant_decompiler",
             "evaluate_variant_decompiler", "cnn_zoo_shard", "detect_backdoors", "train_modadd",
             "hparam_zoo_shard", "predict_hparam")
DISTILLED = ("compressed", "natural")

RULES = ("vocab", "sample", "compile_shard", "split", "tokenize", "train_decompiler", "evaluate_decompiler",
         "figure3", "variant_shard", "train_variant_decompiler", "evaluate_variant_decompiler",
         "variants_report", "figure_variants", "cnn_zoo_shard", "detect_backdoors",
         "backdoor_report", "figure2", "hparam_zoo_shard", "predict_hparam", "hparam_report",
         "figure4", "train_modadd", "analyse_modadd", "figure_backdoor_heads",
         "decompiler_scaling_figure")

THREADS = {"vocab": "zoo", "sample": "zoo", "compile_shard": "zoo", "split": "zoo",
           "tokenize": "zoo",
           "train_decompiler": "train", "evaluate_decompiler": "evaluate",
           "variant_shard": "variants", "train_variant_decompiler": "train",
           "evaluate_variant_decompiler": "evaluate", "cnn_zoo_shard": "cnn_zoo",
           "detect_backdoors": "train", "train_modadd": "train", "analyse_modadd": "evaluate",
           "hparam_zoo_shard": "cnn_zoo", "predict_hparam": "train"}


# --- sizes derived from the params ---------------------------------------------------------------

def mean_length(p: Mapping) -> float:
    return (p["sampler"]["min_length"] + p["sampler"]["max_length"]) / 2


def eval_inputs(p: Mapping) -> int:
    """Inputs each program is run on when verified: the whole domain or the sample."""
    n_vocab, n = len(p["zoo"]["vocab"]), p["zoo"]["max_seq_len"]
    domain = sum(n_vocab ** k for k in range(1, n + 1))
    return domain if domain <= p["verify"]["exhaustive_limit"] else p["verify"]["samples"]


def program_kb(p: Mapping) -> float:
    """Memory of one compiled program (weights and metadata), KB: 127 at mean length 4.5,
    229 at 6.5 (exponent 1.6)."""
    return PROGRAM_KB * (mean_length(p) / REF_MEAN_LENGTH) ** 1.6


def program_floats(p: Mapping) -> float:
    """Weight floats of one compiled program: 13,000 at mean length 4.5, 29,600 at 6.5."""
    return PROGRAM_FLOATS * (mean_length(p) / REF_MEAN_LENGTH) ** 2.25


def zoo_programs(p: Mapping) -> int:
    return p["zoo"]["shards"] * p["zoo"]["programs_per_shard"]


def split_programs(p: Mapping, *splits: str) -> float:
    return zoo_programs(p) * sum(p["dataset"]["split"][s] for s in splits)


def decompiler_tokens(dec: Mapping, p: Mapping) -> tuple[int, float]:
    """(tokens per example: weight tokens + program tokens, weight floats kept per example)."""
    inp = dec["input"]
    width = inp["chunk_size"] if inp["tokenization"] == "chunks" else inp["max_residual"]
    floats = min(program_floats(p), inp["max_tokens"] * width)
    return inp["max_tokens"] + dec["max_program_tokens"], floats


def decompiler_params(dec: Mapping) -> float:
    """Parameters of the decompiler (attention 4 d^2, MLP 2 d mlp per layer; embeddings)."""
    m, inp = dec["model"], dec["input"]
    d = m["d_model"]
    block = 4 * d * d + 2 * d * m["mlp"]
    if m["architecture"] == "encoder_decoder":
        body = m["layers"] * block + m["decoder_layers"] * (block + 4 * d * d)
    else:
        body = m["layers"] * block
    width = inp["chunk_size"] if inp["tokenization"] == "chunks" else inp["max_residual"]
    embed = d * (width + inp["max_index"] + m["max_layers"] + 2 * dec["max_program_tokens"] + 128)
    return body + embed


def cnn_params(p: Mapping) -> int:
    c = p["cnn_zoo"]["cnn"]
    chans = [IMAGES[p["images"]["dataset"]][4], *c["channels"]]
    conv = sum(9 * a * b + 3 * b for a, b in zip(chans, chans[1:]))
    return conv + chans[-1] * c["classes"] + c["classes"]


def train_images(p: Mapping) -> int:
    full = IMAGES[p["images"]["dataset"]][0]
    return p["images"]["train_limit"] or full


def cnn_macs(p: Mapping) -> int:
    """Multiply-adds of the CNN's convolutions per image (each block halves H and W)."""
    _, _, h, wd, ch = IMAGES[p["images"]["dataset"]]
    f = p["images"].get("downsample", 1)
    h, wd = h // f, wd // f
    ch_ = [ch, *p["cnn_zoo"]["cnn"]["channels"]]
    return sum((h >> k) * (wd >> k) * a * b for k, (a, b) in enumerate(zip(ch_, ch_[1:])))


def image_mb(p: Mapping) -> float:
    n_train, n_test, h, w, ch = IMAGES[p["images"]["dataset"]]
    n = (p["images"]["train_limit"] or n_train) + (p["images"]["test_limit"] or n_test)
    return n * h * w * ch * 4 / 1e6


def hparam_cnn(p: Mapping) -> tuple[int, int]:
    """(weights, conv multiply-adds per image) of the hyperparameter zoo's largest model."""
    z = p["hparam_zoo"]
    side = z["image_side"]
    chans = [1, *(max(z["choices"]["width"]) * 2 ** b for b in range(max(z["choices"]["depth"])))]
    pairs = list(zip(chans, chans[1:]))
    weights = sum(9 * a * b + 9 * b * b + 6 * b for a, b in pairs) + chans[-1] * 10 + 10
    macs = sum((side >> k) ** 2 * 9 * (a * b + b * b) for k, (a, b) in enumerate(pairs))
    return weights, macs


def hparam_models(p: Mapping) -> int:
    return p["hparam_zoo"]["shards"] * p["hparam_zoo"]["models_per_shard"]


def cnns(p: Mapping) -> int:
    z = p["cnn_zoo"]
    return z["shards"] * sum(z["models_per_shard"].values())


# --- the resources ------------------------------------------------------------------------------

def _minutes(seconds: float) -> int:
    return STARTUP_MIN + math.ceil(seconds * TIME_SAFETY / 60)


def _mb(data_mb: float, gpu: int = 0, safety: float = MEM_SAFETY) -> int:
    return max(MIN_MB, math.ceil(BASE_MB + (GPU_HOST_MB if gpu else 0) + safety * data_mb))


def _train_seconds(dec: Mapping, train: Mapping, threads: int, gpu: int, p: Mapping) -> float:
    tokens, _ = decompiler_tokens(dec, p)
    flops = 6 * decompiler_params(dec) * tokens * train["batch_size"] * train["steps"]
    # each evaluation: the validation loss (like a training step per val batch, forward only)
    # and eval_exact_programs free decodes
    evals = train["steps"] // max(1, train["eval_every"])
    rate = GPU_FLOPS if gpu else CPU_FLOPS_PER_THREAD * threads
    decode = evals * train["eval_exact_programs"] * _decode_seconds(dec, 1, gpu)
    return 1.25 * flops / rate + decode


def _store_mb(n: float, dec: Mapping, batch_size: int, eval_programs: float = 0) -> float:
    """MB a training or evaluation process holds for its data with token shards read on
    demand (metamodels.decompiler.tokens.TokenStore): about 40 bytes of offsets per program,
    the program tokens of the sets it evaluates, and a few padded batches (the one computing,
    two prefetched, the one being built): it no longer grows with the programs' weights."""
    inp = dec["input"]
    width = inp["chunk_size"] if inp["tokenization"] == "chunks" else 2 * inp["max_residual"] + 1
    batch = batch_size * inp["max_tokens"] * (width * 4 + 3 * 4 + 1)
    return (n * 40 + eval_programs * dec["max_program_tokens"] * 4 + 4 * batch) / 1e6


def _decode_seconds(dec: Mapping, decoders: float, gpu: int) -> float:
    scale = (decompiler_params(dec) / REF_DECODER_PARAMS) * (dec["max_program_tokens"] / 64)
    return DECODE_S * scale * decoders / (GPU_SPEEDUP if gpu else 1)


def _decoders(dec: Mapping) -> float:
    beam = dec["evaluate"]["beam"]
    # constrained + unconstrained (+ beam) + the verified search's beam of `candidates`
    return (2 + (beam if beam > 1 else 0)
            + dec["search"]["candidates"] * SEARCH_DECODERS_PER_CANDIDATE)


def _variant_rows(p: Mapping, split: str) -> float:
    per_shard = split_programs(p, split) / p["dataset"]["shards"][split]
    n = p["variants"]["programs_per_shard"]
    return per_shard if n is None else min(n, per_shard)


def _variant_decompiler(p: Mapping) -> Mapping:
    dec = dict(p["decompiler"])
    dec["train"] = {**dec["train"], **p["variants"]["decompiler"]}
    return dec


def job_resources(rule: str, p: Mapping, wildcards: Mapping[str, str] | None = None,
                  attempt: int = 1, gpus: int | None = None) -> dict[str, Any]:
    """``mem_mb``, ``runtime`` (minutes), ``cpus_per_task`` and ``gpu`` of one job of `rule`
    under params `p` (the validated config); `wildcards` as the rule's (variant, task, ...).

    `gpus` caps the GPUs a job may have (rules/common.smk: ``METAMODELS_GPUS``; None: no cap):
    with 0 every job is timed at the CPU rates."""
    if rule not in RULES:
        raise KeyError(f"no resources for rule {rule!r}")
    w = dict(wildcards or {})
    threads = p["threads"][THREADS[rule]] if rule in THREADS else 1
    gpu = 1 if rule in GPU_RULES else 0
    if rule == "variant_shard" and w.get("variant") in DISTILLED:
        gpu = 1
    if gpus is not None:
        gpu = min(gpu, gpus)
    z = p["zoo"]
    mem, secs, safety = 0.0, 60.0, MEM_SAFETY

    if rule == "sample":
        n = z["programs_per_shard"]
        secs = n * SAMPLE_S * (mean_length(p) / REF_MEAN_LENGTH) * eval_inputs(p) / REF_EVAL_INPUTS
        mem = n * program_kb(p) / 1e3
    elif rule == "compile_shard":
        n = z["programs_per_shard"]
        secs = (n * COMPILE_S * (mean_length(p) / REF_MEAN_LENGTH) ** 2
                * eval_inputs(p) / REF_EVAL_INPUTS)
        # the parent holds the shard; its worker process is capped at compile.memory_mb
        mem = n * program_kb(p) / 1e3 + p["compile"]["memory_mb"] / MEM_SAFETY
    elif rule == "split":
        # two passes (zoo/dataset.py): the small columns of every shard, then one compiled
        # shard and one output shard at a time; ~200 bytes per program (hashes, row plan)
        n = zoo_programs(p)
        largest = max(split_programs(p, s) / p["dataset"]["shards"][s]
                      for s in p["dataset"]["shards"])
        secs = n * SPLIT_S * program_kb(p) / PROGRAM_KB
        mem = (z["programs_per_shard"] + largest) * program_kb(p) / 1e3 + n * 200 / 1e6
    elif rule == "tokenize":
        # one dataset or variant shard in memory, and its tokens (float32 features) as made
        split = w.get("split", "train")
        if w.get("source", "dataset").startswith("variants/"):
            n = _variant_rows(p, split)
        else:
            n = split_programs(p, split) / p["dataset"]["shards"][split]
        secs = n * TOKENIZE_S * program_floats(p) / PROGRAM_FLOATS
        mem = n * program_kb(p) / 1e3 + n * program_floats(p) * 4 / 1e6
    elif rule in ("train_decompiler", "train_variant_decompiler"):
        dec = p["decompiler"] if rule == "train_decompiler" else _variant_decompiler(p)
        if rule == "train_decompiler":
            n = split_programs(p, "train", "val")
        else:
            n = sum(_variant_rows(p, s) * p["dataset"]["shards"][s] for s in ("train", "val"))
        t = dec["train"]
        mem = _store_mb(n, dec, max(t["batch_size"], t["eval_batch_size"]),
                        n * p["dataset"]["split"]["val"] / sum(p["dataset"]["split"][s]
                                                               for s in ("train", "val")))
        secs = _train_seconds(dec, dec["train"], threads, gpu, p)
    elif rule in ("evaluate_decompiler", "evaluate_variant_decompiler"):
        dec = p["decompiler"]
        if rule == "evaluate_decompiler":
            n = split_programs(p, "test")
        else:
            n = _variant_rows(p, "test") * p["dataset"]["shards"]["test"]
        mem = _store_mb(n, dec, dec["train"]["eval_batch_size"], n)
        secs = (n + 10) * (_decode_seconds(dec, _decoders(dec), gpu) + VERIFY_S)
    elif rule == "variant_shard":
        n = _variant_rows(p, w.get("split", "train"))
        kind = w.get("variant", "natural")
        s = n * VARIANT_S[kind] * (mean_length(p) / REF_MEAN_LENGTH) ** 2
        if kind in DISTILLED:
            s *= p["variants"]["distill"]["steps"] / 1000 / (GPU_SPEEDUP if gpu else 1)
        secs = s
        mem = 2 * n * program_kb(p) / 1e3
    elif rule == "variants_report":
        # reads every variant shard's metadata (one shard at a time), keeps ~2 KB per row
        rows = sum(_variant_rows(p, s) * p["dataset"]["shards"][s] for s in ("train", "val", "test"))
        rows *= len(p["variants"]["decompile"])
        mem = rows * 2 / 1e3 + _variant_rows(p, "train") * program_kb(p) / 1e3
        secs = rows * 0.0005
    elif rule == "cnn_zoo_shard":
        c = p["cnn_zoo"]
        secs = (sum(c["models_per_shard"].values()) * c["cnn"]["epochs"] * train_images(p)
                * CNN_IMAGE_S * cnn_macs(p) / REF_CNN_CONV_MACS / (GPU_SPEEDUP if gpu else 1))
        mem = image_mb(p) * 2 + sum(c["models_per_shard"].values()) * cnn_params(p) * 4 * 8 / 1e6
    elif rule == "detect_backdoors":
        m = p["detector"]["model"]
        d = m["d_model"]
        tokens = math.ceil(cnn_params(p) / m["chunk_size"])
        n_par = m["layers"] * (4 * d * d + 2 * d * m["mlp"]) + d * (m["chunk_size"] + tokens)
        flops = 6 * n_par * tokens * m["batch_size"] * m["steps"]
        # + the zoo's weights through the detector at every evaluation
        flops += 2 * n_par * tokens * cnns(p) * (m["steps"] // max(1, m["eval_every"]) + 1)
        secs = 1.25 * flops / (GPU_FLOPS if gpu else CPU_FLOPS_PER_THREAD * threads)
        secs += p["detector"]["baseline"]["steps"] * cnns(p) * 1e-4
        # ULP and MNTD: every step runs `batch_size` base models forward and backward (to the
        # inputs) on their patterns/queries, about a training image's cost each
        queries = sum(p["detector"][k]["steps"] * p["detector"][k]["batch_size"]
                      * p["detector"][k]["patterns" if k == "ulp" else "queries"]
                      for k in ("ulp", "mntd"))
        secs += queries * CNN_IMAGE_S * cnn_macs(p) / REF_CNN_CONV_MACS
        mem = cnns(p) * cnn_params(p) * 4 * 3 / 1e6
    elif rule == "train_modadd":
        m = p["modadd"]
        t = m["train"]
        runs = m["runs"].get(w.get("task"), max(m["runs"].values()))
        examples = t["p0"] ** 2 * t["train_fraction"] * (2 if w.get("task") != "clean" else 1)
        size = (t["d_model"] / 128) * (t["d_mlp"] / 512 + t["d_model"] / 128) / 2
        secs = runs * t["max_epochs"] * examples * MODADD_S * size / (GPU_SPEEDUP if gpu else 1)
        mem = runs * t["p0"] ** 2 * 2 * t["d_model"] * 4 * 4 / 1e6
    elif rule == "analyse_modadd":
        m = p["modadd"]
        t = m["train"]
        runs = m["runs"][m["patching_task"]]
        secs = runs * t["p0"] ** 2 * 2 * (t["n_heads"] + 2) * 1e-3
        mem = runs * t["p0"] ** 2 * 2 * t["d_model"] * 4 * 4 / 1e6
    elif rule == "hparam_zoo_shard":
        z = p["hparam_zoo"]
        _, macs = hparam_cnn(p)
        n_train = z["train_limit"] or IMAGES["fashion_mnist"][0]
        per_model = z["epochs"] * n_train * CNN_IMAGE_S * macs / (9 * REF_CNN_CONV_MACS)
        secs = z["models_per_shard"] * (HPARAM_COMPILE_S + per_model / (GPU_SPEEDUP if gpu else 1))
        mem = 2 * len(z["choices"]["dataset"]) * n_train * z["image_side"] ** 2 * 4 / 1e6
        mem += z["models_per_shard"] * hparam_cnn(p)[0] * 4 * 4 / 1e6
    elif rule == "predict_hparam":
        h = p["hparams"]
        m, sc = h["meta_model"], h["segment_cnn"]
        d = m["d_model"]
        width = h["input_length"] or hparam_cnn(p)[0]
        tokens = math.ceil(width / m["chunk_size"])
        n_par = m["layers"] * (4 * d * d + 2 * d * m["mlp"]) + d * (m["chunk_size"] + tokens)
        flops = 6 * n_par * tokens * m["batch_size"] * m["steps"]
        evals = m["steps"] // max(1, m["eval_every"]) + 1
        flops += 2 * n_par * tokens * hparam_models(p) * evals
        chans = [1, *sc["channels"]]
        seg_macs = sum(sc["segment"] / sc["pool"] ** i * a * b * sc["kernel"]
                       for i, (a, b) in enumerate(zip(chans, chans[1:])))
        flops += 6 * seg_macs * sc["batch_size"] * sc["steps"]
        flops += 2 * seg_macs * hparam_models(p) * sc["test_segments"]
        secs = 1.25 * flops / (GPU_FLOPS if gpu else CPU_FLOPS_PER_THREAD * threads)
        mem = hparam_models(p) * max(width, hparam_cnn(p)[0]) * 4 * 3 / 1e6
    elif rule == "hparam_report":
        secs, mem = hparam_models(p) * 0.01, hparam_models(p) * 0.01
    elif rule == "backdoor_report":
        secs, mem = cnns(p) * 0.01, cnns(p) * 0.01

    return {"mem_mb": _mb(mem, gpu, safety) * attempt, "runtime": _minutes(secs) * attempt,
            "cpus_per_task": threads, "gpu": gpu}
