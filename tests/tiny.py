"""Small configurations shared by the tests, and the tiny pipeline workspace.

``tiny_params()`` is the whole pipeline (every experiment, target ``everything``) at a size
that runs in a few minutes on 2 cores; ``workspace()`` lays it out as a git checkout of the
project's files; ``small_cfg()`` is the default sampler on a 120-input domain.
"""

from __future__ import annotations

import copy
import os
import pathlib
import shutil
import subprocess
import sys

import yaml

from metamodels.rasp.sampler import SamplerConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
ENV = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


def small_cfg(default_params: dict, **over) -> SamplerConfig:
    """The default sampler on a small domain (vocab {1,2,3}, length <= 4: 120 inputs)."""
    p = copy.deepcopy(default_params)
    p["zoo"]["vocab"] = over.pop("vocab", [1, 2, 3])
    p["zoo"]["max_seq_len"] = over.pop("max_seq_len", 4)
    for k, v in over.items():
        p["sampler"][k] = v
    return SamplerConfig.from_params(p)


def tiny_params() -> dict:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["zoo"].update(vocab=[1, 2, 3, 4], max_seq_len=4, shards=2, programs_per_shard=10)
    p["dataset"].update(split={"train": 0.6, "val": 0.2, "test": 0.2},
                        shards={"train": 2, "val": 1, "test": 1})
    d = p["decompiler"]
    d["model"].update(d_model=16, layers=1, decoder_layers=1, heads=2, mlp=32)
    d["train"].update(steps=6, batch_size=4, warmup_steps=2, log_every=3, eval_every=3,
                      eval_batch_size=8, eval_exact_programs=4)
    d["input"]["buckets"] = 1
    # Variant zoos: two of the five (PCA and distilled students), a few programs each.
    v = p["variants"]
    v.update(programs_per_shard=3, decompile=["pca", "compressed"])
    v["distill"].update(group_size=2, steps=20, eval_every=10, warmup_steps=2)
    v["decompiler"].update(steps=6, warmup_steps=2, eval_every=3, batch_size=2)
    # Backdoor detection on a CIFAR-layout fixture (written by `workspace`), tiny CNNs.
    p["images"].update(dataset="cifar10", cifar10_root="fixtures/cifar10", download=False,
                       train_limit=0, test_limit=0)
    z = p["cnn_zoo"]
    z.update(shards=2, models_per_shard={"clean": 3, "noise_blend": 3, "ood_square": 1},
             asr_threshold=0.0, poison_rate=0.1)
    z["cnn"].update(channels=[2, 2, 2], epochs=1, batch_size=8)
    p["detector"].update(split={"val": 0.2, "test": 0.3}, ood_train_attacks=["noise_blend"])
    p["detector"]["model"].update(chunk_size=64, d_model=16, layers=1, heads=2, mlp=32, steps=4,
                                  warmup_steps=1, eval_every=4, log_every=2)
    for name in ("ulp", "mntd"):
        p["detector"][name].update(steps=4, batch_size=4, log_every=2)
    # Hyperparameter zoo: scikit-learn's digits at their own 8x8, one architecture, two
    # targets; two optimizers x one batch size = two compiled steps per shard.
    hz = p["hparam_zoo"]
    hz.update(shards=2, models_per_shard=4, image_side=8, train_limit=200, test_limit=100,
              epochs=1)
    hz["choices"].update(dataset=["digits"], batch_size=[16], augmentation=["none", "noise"],
                         optimizer=["adam", "sgd"], activation=["relu", "tanh"],
                         initialization=["glorot_uniform", "random_normal"], width=[2], depth=[1])
    h = p["hparams"]
    h.update(targets=["activation", "optimizer"], split={"val": 0.25, "test": 0.25})
    h["meta_model"].update(chunk_size=64, d_model=16, layers=1, heads=2, mlp=32, steps=4,
                           warmup_steps=1, eval_every=4, log_every=2, batch_size=4)
    h["segment_cnn"].update(segment=50, channels=[4, 4], dense=8, steps=4, batch_size=4,
                            test_segments=2)
    # Modular addition on p0 = 7 with a tiny model.
    m = p["modadd"]
    m.update(runs={"clean": 1, "mod1": 2}, patching_task="mod1")
    m["train"].update(p0=7, train_fraction=0.5, d_model=16, d_head=4, d_mlp=32, max_epochs=50,
                      patience=5, chunk=25)
    return p


def run(args, cwd, check=True) -> subprocess.CompletedProcess:
    res = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"{args} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def workspace(dest: pathlib.Path, params: dict) -> pathlib.Path:
    """A git checkout of the project's files (as in the working tree) with `params`."""
    files = run(["git", "ls-files", "-co", "--exclude-standard"], ROOT).stdout.split()
    for f in files:
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    from metamodels.backdoor.images import write_cifar10_fixture
    write_cifar10_fixture(dest / "fixtures" / "cifar10", n_train_per_batch=8, n_test=20, seed=0)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.email=ci@example.org", "-c", "user.name=ci", "commit", "-qm", "ws"], dest)
    return dest


def snakemake(cwd, *args, check=True):
    return run([str(BIN / "snakemake"), *args], cwd, check=check)


# What the pipeline writes that must be reproducible byte for byte: data, trained models,
# results and figures. Not logs/ (wall times, per-job timings) nor work/ (resumable training
# checkpoints). The rule of test_pipeline.py's determinism test (its `data_files`).
OUTPUT_DIRS = ("data", "models", "results")


def pipeline_outputs(ws: pathlib.Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under OUTPUT_DIRS of workspace `ws`."""
    return {str(p.relative_to(ws)): p.read_bytes()
            for top in OUTPUT_DIRS for p in sorted((ws / top).rglob("*")) if p.is_file()}
