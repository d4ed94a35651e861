"""Small files for the CLI's file checks (tests/core/test_file_errors.py,
tests/decompiler/test_decompile_checks.py): one-row zoo-format weights files (verified, marked
failed, from another domain), a vocab file and an untrained decompiler model (random init: it
decodes, through the grammar, to some well-formed program; what it prints is not under test).
Built once per test process, in a few seconds."""

from __future__ import annotations

import copy
import json
import pathlib

import numpy as np

DOMAIN = {"vocab": [1, 2, 3], "max_seq_len": 4}
OTHER_DOMAIN = {"vocab": [1, 2], "max_seq_len": 5}

_BUILT: dict = {}


def _params(default_params: dict, domain: dict) -> dict:
    p = copy.deepcopy(default_params)
    p["zoo"].update(vocab=list(domain["vocab"]), max_seq_len=domain["max_seq_len"])
    d = p["decompiler"]
    d["max_program_tokens"] = 32
    d["model"].update(d_model=16, layers=1, decoder_layers=1, heads=2, mlp=32)
    d["input"].update(buckets=1)
    d["train"].update(eval_batch_size=4)
    return p


def zoo_file(path: pathlib.Path, params: dict, *, passed: bool | None = True) -> pathlib.Path:
    """A one-row zoo-format file of `v1 = Map(x+1, tokens)` compiled on params' domain, as the
    compile stage packs it; `passed` False stores a failed verification, None none at all."""
    from metamodels.core import shards as S
    from metamodels.rasp import lambdas as L
    from metamodels.rasp.program import Op, Program, render
    from metamodels.rasp.tokenizer import Vocab
    from metamodels.zoo import stage as zoo
    tables = L.Tables(params["sampler"]["map_constants"])
    program = Program((Op("v1", "Map", "x+1", ("tokens",), "categorical"),))
    state = {"params": params, "tables": tables, "inputs": zoo.verification_inputs(params)}
    result = zoo.compile_and_verify(state, program.to_json())
    assert result["verification"]["passed"]
    entry = {"program": program.to_json(), "source": render(program, tables),
             "ops_rewritten": 0, "none_fraction": 0.0}
    arrays = zoo.pack([{"entry": entry, "result": result}], Vocab.from_params(params))
    meta = json.loads(str(arrays["meta_json"][0]))
    if passed is None:
        del meta["verification"]
    elif not passed:
        meta["verification"].update(passed=False, mismatched_positions=7)
    arrays["meta_json"] = S.json_array([meta])
    arrays["shard_json"] = S.text_array([S.dumps_json({"source_file": "prog.py"})])
    S.save_npz(path, arrays)
    return path


def decompiler_file(path: pathlib.Path, params: dict, weights: pathlib.Path) -> pathlib.Path:
    """An untrained decompiler for params' domain (random parameters of the model's shapes:
    no compilation of its init), saved as training does."""
    import jax

    from metamodels.decompiler import batches as B
    from metamodels.decompiler import stage as decompiler
    from metamodels.decompiler.train import Trainer, _device
    from metamodels.rasp.tokenizer import Vocab
    cfg = {k: params["decompiler"][k] for k in decompiler.TRAIN_KEYS}
    vocab = Vocab.from_params(params)
    ex = B.load_split([str(weights)], cfg["input"], cfg["max_program_tokens"])
    edges = B.bucket_edges(ex.n_tokens, cfg["input"]["buckets"])
    batch = B.make_batch(ex, np.arange(len(ex)), edges)
    shapes = jax.eval_shape(Trainer(cfg, vocab).model.init, jax.random.PRNGKey(0),
                            _device(batch), batch["program"][:, :-1])["params"]
    rng = np.random.default_rng(0)

    def fill(path, s):
        leaf = path[-1].key
        if leaf == "scale":
            return np.ones(s.shape, np.float32)
        if leaf == "bias":
            return np.zeros(s.shape, np.float32)
        return rng.normal(0.0, 0.1, s.shape).astype(np.float32)
    model_params = jax.tree_util.tree_map_with_path(fill, shapes)
    decompiler.save_model(str(path), model_params, dict(cfg, domain=decompiler._domain(params)),
                          vocab, edges)
    return path


def build(tmp_path_factory, default_params) -> dict[str, pathlib.Path]:
    """{"model", "weights", "unverified", "unmarked", "other_domain", "vocab"}: paths."""
    if "files" not in _BUILT:
        from metamodels.rasp.tokenizer import Vocab
        d = tmp_path_factory.mktemp("tiny_files")
        params = _params(default_params, DOMAIN)
        files = {"weights": zoo_file(d / "weights.npz", params),
                 "unverified": zoo_file(d / "unverified.npz", params, passed=False),
                 "unmarked": zoo_file(d / "unmarked.npz", params, passed=None),
                 "other_domain": zoo_file(d / "other.npz", _params(default_params, OTHER_DOMAIN)),
                 "vocab": d / "vocab.json"}
        files["vocab"].write_text(Vocab.from_params(params).dumps())
        files["model"] = decompiler_file(d / "decompiler.npz", params, files["weights"])
        _BUILT["files"] = files
    return _BUILT["files"]
