"""The decompiler tests' tiny program zoo: sampled, compiled, split and tokenized once per
test process (test_stage.py and test_tokens.py share it; both are in the "decompiler" xdist
group, so one worker builds it)."""

from __future__ import annotations

import copy

import pytest


def tiny_params(default_params) -> dict:
    p = copy.deepcopy(default_params)
    p["zoo"].update(vocab=[1, 2, 3], max_seq_len=4, shards=1, programs_per_shard=90)
    p["sampler"].update(min_length=2, max_length=3)
    p["decompiler"]["max_program_tokens"] = 32
    p["dataset"].update(split={"train": 0.7, "val": 0.15, "test": 0.15},
                        shards={"train": 1, "val": 1, "test": 1})
    d = p["decompiler"]
    d["model"].update(d_model=32, layers=1, decoder_layers=1, heads=2, mlp=64)
    d["train"].update(steps=60, batch_size=16, warmup_steps=5, learning_rate=3e-3,
                      log_every=20, eval_every=20, eval_batch_size=16, eval_exact_programs=4)
    d["input"].update(buckets=2)
    return p


@pytest.fixture(scope="session")
def data(tmp_path_factory, default_params):
    """(params, folder, paths): ``paths[split]`` the dataset shards, ``paths["tokens/" +
    split]`` their token shards (the tokenize stage's files)."""
    from metamodels.decompiler.tokens import tokenize_shard
    from metamodels.rasp.tokenizer import Vocab
    from metamodels.zoo import dataset
    from metamodels.zoo import stage as zoo
    params = tiny_params(default_params)
    d = tmp_path_factory.mktemp("dec")
    vocab = Vocab.from_params(params)
    (d / "vocab.json").write_text(vocab.dumps())
    zoo.run_sample(params, 0, str(d / "programs.json"))
    zoo.run_compile(params, str(d / "programs.json"), str(d / "vocab.json"),
                    str(d / "compiled.npz"))
    dataset.run_split(params, [str(d / "compiled.npz")], str(d / "vocab.json"), str(d / "ds"))
    paths = {s: [str(d / "ds" / s / "shard_000.npz")] for s in dataset.SPLITS}
    dec = params["decompiler"]
    for s in dataset.SPLITS:
        out = str(d / "tokens" / s / "shard_000.npz")
        tokenize_shard(dec["input"], dec["max_program_tokens"], paths[s][0], out)
        paths["tokens/" + s] = [out]
    return params, d, paths
