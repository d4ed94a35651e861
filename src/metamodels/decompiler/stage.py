"""Decompiler stage: train on the zoo, evaluate on its test split, decompile files.

Model files (``models/decompiler.npz``) hold the trained parameters as plain
arrays named ``params/<module path>`` plus JSON text arrays ``config_json``
(the ``decompiler`` params section), ``vocab_json`` and ``edges_json`` (the
weight-token bucket lengths), so they load with ``numpy.load`` alone.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Mapping, Sequence

import numpy as np

from metamodels.core import shards as S
from metamodels.decompiler import batches as B
from metamodels.decompiler import search as SE
from metamodels.decompiler import weights as W
from metamodels.decompiler.tokens import TokenStore, open_split
from metamodels.rasp import lambdas as L
from metamodels.rasp.tokenizer import Vocab

TRAIN_KEYS = ["seed", "input", "model", "train", "max_program_tokens"]


def _grammar(vocab: Vocab, domain: Mapping):
    """The decoding grammar; with the zoo's input domain it also tracks value sets."""
    from metamodels.rasp.grammar import Grammar
    return Grammar(vocab, domain["vocab"], domain["max_seq_len"])


def _domain(params: Mapping) -> dict:
    return {"vocab": list(params["zoo"]["vocab"]), "max_seq_len": params["zoo"]["max_seq_len"]}


# ---------------------------------------------------------------------------
# model files

def flatten(tree: Mapping, prefix: str = "params") -> dict[str, np.ndarray]:
    out = {}
    for k in sorted(tree):
        v = tree[k]
        name = f"{prefix}/{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, name))
        else:
            out[name] = np.asarray(v, np.float32)
    return out


def unflatten(arrays: Mapping[str, np.ndarray], prefix: str = "params") -> dict:
    tree: dict = {}
    for name, v in arrays.items():
        if not name.startswith(prefix + "/"):
            continue
        node = tree
        *path, leaf = name[len(prefix) + 1:].split("/")
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = np.asarray(v)
    return tree


def save_model(path: str, params, cfg: Mapping, vocab: Vocab, edges: Sequence[int]) -> None:
    import jax
    arrays = flatten(jax.device_get(params))
    arrays["config_json"] = S.text_array([json.dumps(dict(cfg), sort_keys=True)])
    arrays["vocab_json"] = S.text_array([vocab.dumps()])
    arrays["edges_json"] = S.text_array([json.dumps(list(edges))])
    S.save_npz(path, arrays)


BUILD_HINT = ("a trained decompiler is built by `snakemake models/decompiler.npz` "
              "(or `bash scripts/run.sh models/decompiler.npz`)")


def load_model(path: str):
    """(params, cfg, vocab, edges) of a model file written by :func:`save_model`.

    A missing or malformed file raises :class:`~metamodels.core.shards.FileFormatError`
    naming it and saying how to build one."""
    try:
        arrays = S.load_npz(path)
    except S.FileFormatError as e:
        raise S.FileFormatError(path, f"{e.what}; {BUILD_HINT}", e.column) from None
    for key in ("config_json", "vocab_json", "edges_json"):
        if key not in arrays or arrays[key].size != 1:
            raise S.FileFormatError(path, f"not a decompiler model file (no '{key}' column); "
                                    f"{BUILD_HINT}", key)
    cfg = json.loads(str(arrays["config_json"][0]))
    vd = json.loads(str(arrays["vocab_json"][0]))
    edges = json.loads(str(arrays["edges_json"][0]))
    if not (isinstance(cfg, dict) and isinstance(cfg.get("domain"), dict)
            and {"vocab", "max_seq_len"} <= set(cfg["domain"])):
        raise S.FileFormatError(path, "column 'config_json' has no training domain (vocab, "
                                f"max_seq_len); {BUILD_HINT}", "config_json")
    try:
        vocab = Vocab(L.Tables(vd["map_constants"]), vd["max_ops"])
        same = vocab.tokens == vd["tokens"]
    except (KeyError, TypeError, ValueError):
        raise S.FileFormatError(path, "column 'vocab_json' is not a program vocabulary; "
                                f"{BUILD_HINT}", "vocab_json") from None
    if not same:
        raise ValueError(f"{path}: its vocabulary differs from this version of metamodels")
    return unflatten(arrays), cfg, vocab, edges


# ---------------------------------------------------------------------------
# stages

def run_train(params: Mapping, train_paths: Sequence[str], val_paths: Sequence[str],
              vocab_path: str, model_out: str, history_out: str, curve_out: str, workdir: str,
              timing_out: str | None = None) -> dict:
    from metamodels.decompiler.train import train_and_evaluate
    cfg = {k: params["decompiler"][k] for k in TRAIN_KEYS}
    vocab = Vocab.load(vocab_path)
    t0 = time.perf_counter()
    train = open_split(train_paths, cfg["input"], cfg["max_program_tokens"])
    val = open_split(val_paths, cfg["input"], cfg["max_program_tokens"])
    load_s = time.perf_counter() - t0
    for name, split, paths in (("train", train, train_paths), ("val", val, val_paths)):
        kind = "token shards, read on demand" if isinstance(split, TokenStore) else \
            "zoo-format shards, tokenized in memory"
        print(f"[train] {name}: {len(split)} programs from {len(paths)} {kind} "
              f"({paths[0]}, ...), skipped {split.skipped}", file=sys.stderr, flush=True)
    res = train_and_evaluate(cfg, workdir, train, val, vocab,
                             grammar=_grammar(vocab, _domain(params)))
    save_model(model_out, res["params"], dict(cfg, domain=_domain(params)), vocab, res["edges"])
    S.write_json(history_out, {"history": res["history"], "train_programs": len(train),
                               "val_programs": len(val), "skipped": {"train": train.skipped,
                                                                     "val": val.skipped},
                               "parameters": int(sum(np.size(v) for v in
                                                     flatten(res["params"]).values())),
                               "config": cfg})
    fields = ["step", "train_loss", "val_loss", "val_token_accuracy", "val_exact_accuracy"]
    S.write_bytes(curve_out, S.csv_text(res["history"], fields).encode())
    if timing_out:
        S.write_json(timing_out, dict(res["timing"], load_s=load_s))
    return res


def run_evaluate(params: Mapping, model_path: str, test_paths: Sequence[str],
                 metrics_out: str, predictions_out: str, reference_out: str,
                 timing_out: str | None = None, models: Sequence[str] | None = None) -> dict:
    """Score a trained decompiler on the test split (token or zoo-format shards): teacher-
    forced loss and token accuracy, greedy (constrained and not) and beam decoding judged
    exact / functional / well-formed against the labels, and the verified search
    (:mod:`metamodels.decompiler.search`), which checks candidates against each test
    program's input model, read from ``models`` (the zoo-format shards the test rows come
    from; default: the paths their ids name). Writes metrics, per-program predictions and
    the tracr reference-program table."""
    from metamodels.decompiler.metrics import Domain, judge, summarize
    from metamodels.decompiler.train import Trainer
    from metamodels.zoo.dataset import reference_programs

    ev = params["decompiler"]["evaluate"]
    z = params["zoo"]
    model_params, cfg, vocab, edges = load_model(model_path)
    trainer = Trainer(cfg, vocab)
    test = open_split(test_paths, cfg["input"], cfg["max_program_tokens"])
    domain = Domain(z["vocab"], z["max_seq_len"], vocab.tables)
    bs = cfg["train"]["eval_batch_size"]
    t0 = time.perf_counter()
    tf = trainer.teacher_forced(model_params, test, edges, bs)
    grammar = _grammar(vocab, cfg["domain"])
    runs = {"constrained": dict(grammar=grammar, beam=1),
            "unconstrained": dict(grammar=None, beam=1)}
    if ev["beam"] > 1:
        runs[f"beam{ev['beam']}"] = dict(grammar=grammar if ev["constrained"] else None,
                                        beam=ev["beam"])
    primary = "constrained" if ev["constrained"] else "unconstrained"
    results, verdicts_of, timing = {}, {}, {}
    for name, kw in runs.items():
        t1 = time.perf_counter()
        decoded = trainer.decode(model_params, test, edges, bs, **kw)
        verdicts = []
        for i in range(len(test)):
            pred = vocab.strs(decoded[i].tolist())
            target = vocab.strs(test.programs[i].tolist())
            verdicts.append(judge(pred, target, domain))
        verdicts_of[name] = (decoded, verdicts)
        results[name] = summarize(verdicts, test.length, tf["row_correct"], tf["row_tokens"])
        timing[f"decode_{name}_s"] = round(time.perf_counter() - t1, 3)
        print(f"[evaluate] {name}: exact {results[name]['exact_accuracy']:.3f} functional "
              f"{results[name]['functional_equivalence']:.3f} wellformed "
              f"{results[name]['wellformed']:.3f}", file=sys.stderr, flush=True)
    t1 = time.perf_counter()
    found = verified_search(params, trainer, model_params, cfg, vocab, edges, test, grammar,
                            models)
    timing["verified_search_s"] = round(time.perf_counter() - t1, 3)
    timing["verified_search_seconds_per_model"] = SE.seconds_per_model(found)
    exact_of = [SE.is_exact(r, vocab.strs(test.programs[i].tolist()))
                for i, r in enumerate(found)]
    searched = SE.summarize(found, exact_of, test.length)
    print(f"[evaluate] verified search ({params['decompiler']['search']['candidates']} "
          f"candidates): verified {searched['verified_accuracy']:.3f}, of them exact "
          f"{searched['verified_exact']:.3f}", file=sys.stderr, flush=True)
    main = results[primary]
    for k, e in main["by_length"].items():
        e["verified_accuracy"] = searched["by_length"][k]["verified_accuracy"]
    metrics = {
        "test_programs": len(test),
        "test_exact_accuracy": main["exact_accuracy"],
        "test_token_accuracy": tf["token_accuracy"],
        "test_functional_equivalence": main["functional_equivalence"],
        "test_wellformed": main["wellformed"],
        "test_verified_accuracy": searched["verified_accuracy"],
        "verified_search": dict({k: v for k, v in searched.items() if k != "by_length"},
                                candidates=params["decompiler"]["search"]["candidates"],
                                seconds=params["decompiler"]["search"]["seconds"]),
        "test_loss": tf["loss"],
        "decoding": primary,
        "by_length": main["by_length"],
        "decoders": {k: {m: v[m] for m in ("exact_accuracy", "functional_equivalence",
                                          "wellformed")}
                     for k, v in results.items()},
        "skipped": test.skipped,
    }
    decoded, verdicts = verdicts_of[primary]
    preds = []
    for i in range(len(test)):
        preds.append({"id": test.ids[i], "length": int(test.length[i]),
                      "target": " ".join(_trim(vocab.strs(test.programs[i].tolist()))),
                      "predicted": " ".join(_trim(vocab.strs(decoded[i].tolist()))),
                      "exact": verdicts[i].exact, "functional": verdicts[i].functional,
                      "wellformed": verdicts[i].wellformed, "error": verdicts[i].error,
                      "verified": found[i].verified,
                      "verified_program": " ".join(found[i].tokens) if found[i].verified else "",
                      "certificate": found[i].certificate(timing=False)})
    S.write_json(predictions_out, {"decoding": primary, "predictions": preds})
    rows = _reference_rows(reference_programs(params), params, trainer, model_params, cfg,
                           vocab, edges, domain)
    S.write_bytes(reference_out, S.csv_text(rows, REFERENCE_FIELDS).encode())
    metrics["reference_programs"] = {r["program"]: {"exact": r["exact"], "verified": r["verified"]}
                                     for r in rows}
    S.write_json(metrics_out, metrics)
    if timing_out:
        S.write_json(timing_out, dict(timing, evaluate_s=round(time.perf_counter() - t0, 3)))
    return metrics


def _trim(tokens: list[str]) -> list[str]:
    from metamodels.decompiler.metrics import strip
    return strip(tokens)


REFERENCE_FIELDS = ["program", "length", "exact", "functional", "wellformed", "verified",
                    "verified_rank", "identical_weights", "target", "predicted",
                    "verified_program", "note"]


def _reference_rows(refs: Mapping[str, tuple], params, trainer, model_params, cfg, vocab,
                    edges, domain) -> list[dict]:
    """Compile every expressible tracr lib example, decompile them (greedy and verified
    search, one batch each), judge."""
    from metamodels.decompiler.metrics import judge
    from metamodels.rasp.program import to_rasp
    from metamodels.rasp.tokenizer import decode as decode_tokens
    from metamodels.zoo.compiler import compile_program
    z = params["zoo"]
    rows, models = {}, {}
    for name in sorted(refs):
        target = list(refs[name])
        rows[name] = {"program": name, "length": target.count("EOO"), "target": " ".join(target),
                      "exact": False, "functional": False, "wellformed": False, "predicted": "",
                      "verified": False, "verified_rank": "", "identical_weights": "",
                      "verified_program": ""}
        if not all(t in vocab.index for t in target):
            rows[name]["note"] = "more ops than the vocabulary's max_ops (sampler.max_length)"
            continue
        program = decode_tokens(target, vocab.tables)
        models[name] = compile_program(to_rasp(program, vocab.tables), set(z["vocab"]),
                                       z["max_seq_len"],
                                       mlp_exactness=params["compile"]["mlp_exactness"])
    names = list(models)
    greedy = decompile_models([models[n] for n in names], trainer, model_params, cfg, vocab,
                              edges, beam=params["decompiler"]["evaluate"]["beam"])
    found = decompile_models([models[n] for n in names], trainer, model_params, cfg, vocab,
                             edges, search=params, recompile=[True] * len(names))
    for name, pred, res in zip(names, greedy, found):
        if isinstance(pred, Exception):
            rows[name]["note"] = str(pred)
            continue
        v = judge(pred, list(refs[name]), domain)
        rows[name].update(exact=v.exact, functional=v.functional, wellformed=v.wellformed,
                          predicted=" ".join(_trim(pred)), note=v.error or "",
                          verified=res.verified, verified_rank=res.rank or "",
                          identical_weights="" if res.identical_weights is None
                          else res.identical_weights,
                          verified_program=" ".join(res.tokens) if res.verified else "")
    return list(rows.values())


def _examples(models: Sequence, cfg) -> tuple[list[int], B.Examples | None, dict]:
    """The decompiler's input of each model (a CompiledModel): (indices tokenized,
    Examples, {index: InputTooLarge} for models too large to read)."""
    toks, errors = [], {}
    for i, m in enumerate(models):
        try:
            toks.append((i, W.tokenize(m.flat(), m.layout(), cfg["input"], m.metadata())))
        except W.InputTooLarge as e:
            errors[i] = e
    if not toks:
        return [], None, errors
    feats = np.concatenate([t.features for _, t in toks])
    cols = [np.concatenate([getattr(t, c) for _, t in toks]) for c in ("kind", "layer", "index")]
    offsets = np.concatenate([[0], np.cumsum([len(t) for _, t in toks])]).astype(np.int64)
    n = len(toks)
    ex = B.Examples(feats, *cols, offsets, np.zeros((n, cfg["max_program_tokens"]), np.int32),
                    np.zeros(n, np.int32), [str(i) for i, _ in toks], {})
    return [i for i, _ in toks], ex, errors


def decompile_models(models: Sequence, trainer, model_params, cfg, vocab, edges, beam: int = 1,
                     search: Mapping | None = None, recompile: Sequence[bool] | None = None,
                     domain: Mapping | None = None) -> list:
    """Decompile CompiledModels (any variant), grammar-constrained.

    Without ``search``: the predicted program tokens of each model (greedy, or the best of
    ``beam`` beams). With ``search`` (params holding ``decompiler.search``, ``verify``,
    ``zoo.seed``, ``compile.mlp_exactness``): a :class:`metamodels.decompiler.search.Result`
    per model, its candidates checked against the model's own outputs on ``domain``
    (default: the decompiler's training domain, ``cfg["domain"]``); ``recompile[i]``: also
    recompile model i's verified program and compare weights. A model too large to read gives its
    :class:`~metamodels.decompiler.weights.InputTooLarge` instead."""
    index, ex, out = _examples(models, cfg)
    out = [out.get(i) for i in range(len(models))]
    if ex is None:
        return out
    grammar = _grammar(vocab, cfg["domain"])
    bs = cfg["train"]["eval_batch_size"]
    if search is None:
        decoded = trainer.decode(model_params, ex, edges, bs, grammar, beam=beam)
        for k, i in enumerate(index):
            out[i] = vocab.strs(decoded[k].tolist())
        return out
    s = search["decompiler"]["search"]
    t0 = time.perf_counter()
    ranked = trainer.ranked(model_params, ex, edges, bs, grammar, s["candidates"])
    share = (time.perf_counter() - t0) / len(index)
    domain = domain or cfg["domain"]
    inputs = SE.verification_inputs(domain, search)
    for k, i in enumerate(index):
        out[i] = _search_model(search, models[i], ranked[k], vocab, inputs, domain,
                               recompile is not None and recompile[i], share)
    return out


def _search_model(params: Mapping, model, ranked: tuple, vocab, inputs: tuple, domain: Mapping,
                  recompile: bool, decode_seconds: float) -> "SE.Result":
    """The verified search of one model over its ranked candidates ``(sequences, scores)``;
    ``inputs``: :func:`metamodels.decompiler.search.verification_inputs` of ``domain``."""
    rc = (dict(domain, mlp_exactness=params["compile"]["mlp_exactness"]) if recompile
          else None)
    return SE.search(SE.Checker(model, inputs[0], params["verify"], inputs[1]), *ranked, vocab,
                     params["decompiler"]["search"]["seconds"], rc, decode_seconds)


def verified_search(params: Mapping, trainer, model_params, cfg, vocab, edges, test: B.Split,
                    grammar, models: Sequence[str] | None = None) -> list:
    """The verified search on every test program (:mod:`metamodels.decompiler.search`):
    the input models are read from the zoo-format shards their ids name
    (``shard_path:row``), one shard at a time; compiled (``standard``) models'
    verified programs are recompiled and compared bit for bit. ``models``: the shards the
    caller declared; an id naming another file raises ValueError."""
    from metamodels.zoo.stage import model_of_row, row
    s = params["decompiler"]["search"]
    bs = cfg["train"]["eval_batch_size"]
    t0 = time.perf_counter()
    ranked = trainer.ranked(model_params, test, edges, bs, grammar, s["candidates"])
    share = (time.perf_counter() - t0) / max(len(test), 1)
    inputs = SE.verification_inputs(cfg["domain"], params)
    by_path: dict[str, list[tuple[int, int]]] = {}
    for i, ident in enumerate(test.ids):
        path, _, r = ident.rpartition(":")
        by_path.setdefault(path, []).append((i, int(r)))
    if models is not None:
        declared = {os.path.normpath(m) for m in models}
        missing = sorted(p for p in by_path if os.path.normpath(p) not in declared)
        if missing:
            raise ValueError(f"the test programs come from {missing[0]}, which is not among "
                             f"--models {list(models)}; pass the zoo-format shards the test "
                             "shards were tokenized from")
    out: list = [None] * len(test)
    done = 0
    for path, items in by_path.items():
        arrays = S.load_npz(path)
        for i, r in items:
            rw = row(arrays, r)
            standard = rw["meta"].get("variant", "standard") == "standard"
            out[i] = _search_model(params, model_of_row(rw), ranked[i], vocab, inputs,
                                   cfg["domain"], standard, share)
            done += 1
            if done % 50 == 0 or done == len(test):
                print(f"[evaluate] verified search {done}/{len(test)}", file=sys.stderr,
                      flush=True)
    return out


class DomainMismatch(ValueError):
    """The weights come from another input domain than the decompiler was trained on."""


def input_domain(meta: Mapping, layout: Sequence[Mapping]) -> dict | None:
    """``{"vocab", "max_seq_len"}`` a zoo-format row's model was compiled for: its stored
    ``domain`` when there is one, else read off the model (its input tokens less BOS and PAD,
    its position embedding); None when the row does not say."""
    from metamodels.zoo.compiler import decode_value
    d = meta.get("domain")
    if isinstance(d, Mapping) and {"vocab", "max_seq_len"} <= set(d):
        return {"vocab": list(d["vocab"]), "max_seq_len": int(d["max_seq_len"])}
    try:
        m = meta["model"]
        special = [decode_value(m["bos_token"]), decode_value(m["pad_token"])]
        vocab = [v for v in (decode_value(t) for t in m["input_tokens"]) if v not in special]
        (pos,) = [item for item in layout if item["name"] == "pos_embed/embeddings"]
        return {"vocab": vocab, "max_seq_len": int(pos["shape"][0]) - 1}
    except (KeyError, TypeError, ValueError):
        return None


def _same_domain(a: Mapping, b: Mapping) -> bool:
    return set(a["vocab"]) == set(b["vocab"]) and int(a["max_seq_len"]) == int(b["max_seq_len"])


def _domain_text(d: Mapping) -> str:
    try:
        vocab = sorted(d["vocab"])
    except TypeError:
        vocab = list(d["vocab"])
    return f"vocab {vocab}, max_seq_len {d['max_seq_len']}"


def verification_problem(meta: Mapping, shard: Mapping | None = None) -> str | None:
    """Why a zoo-format row is not a verified compilation (None when it is): its stored
    ``verification`` failed, is missing, compared no position, or the row or file is marked
    unverified (``verified: false``, ``unverified: true``)."""
    shard = shard if isinstance(shard, Mapping) else {}
    v = meta.get("verification")
    marked = (meta.get("verified") is False or shard.get("verified") is False
              or bool(meta.get("unverified")) or bool(shard.get("unverified")))
    if not isinstance(v, Mapping) or "passed" not in v:
        return "it has no stored verification" if not marked else "it is marked unverified"
    if v["passed"] is not True or marked:
        if isinstance(v.get("reason"), str) and v["reason"]:
            return f"its stored verification failed ({v['reason']})"
        bad, pos = v.get("mismatched_positions"), v.get("positions")
        if isinstance(bad, int) and isinstance(pos, int) and bad:
            return (f"its stored verification failed ({bad} of {pos} output positions differ "
                    "from the program's)")
        return "its stored verification failed"
    pos, none = v.get("positions"), v.get("none_positions")
    if isinstance(pos, int) and isinstance(none, int) and pos - none <= 0:
        return "its stored verification compared no position (every output is None)"
    return None


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def decompile_file(model_path: str, weights_path: str, params: Mapping, index: int = 0,
                   force: bool = False, warn=_warn) -> str:
    """Readable RASP source recovered from a zoo-format weights file (row ``index``), below a
    comment block that says whether it is verified (:func:`certificate_text`).

    ``params``: the ``decompiler.search``, ``verify``, ``zoo.seed`` and
    ``compile.mlp_exactness`` sections of the verified search
    (:mod:`metamodels.decompiler.search`), which checks candidates on the model's own input
    domain.

    Warns (``warn(message)``, default: a ``warning:`` line on stderr) when the row's stored
    verification failed or is missing: such a model is not a faithful compilation of a RASP
    program. A model whose input domain (vocab, max_seq_len) is not the decompiler's training
    domain raises :class:`DomainMismatch`, or with ``force`` is warned about and decompiled."""
    from metamodels.zoo.stage import row
    arrays = S.load_npz(weights_path)
    for key in ("weights", "weights_offsets", "layout_json", "meta_json"):
        if key not in arrays:
            raise S.FileFormatError(weights_path, f"not a zoo weights file (no '{key}' column); "
                                    "write one with `python -m metamodels compile PROGRAM.py "
                                    "--out FILE`", key)
    n = int(arrays["weights_offsets"].shape[0] - 1)
    if not 0 <= index < n:
        raise ValueError(f"{weights_path}: index {index} out of range (0..{n - 1})")
    r = row(arrays, index)  # FileFormatError when the row's offsets point outside its columns
    meta = r["meta"] if isinstance(r["meta"], Mapping) else {}
    layout = r["layout"]
    if not (isinstance(layout, list) and all(isinstance(x, Mapping) for x in layout)):
        raise S.FileFormatError(weights_path, f"column 'layout_json' row {index} is not a "
                                "list of weight arrays", "layout_json")
    where = weights_path if n == 1 else f"{weights_path} row {index}"
    model_params, cfg, vocab, edges = load_model(model_path)
    trained = cfg["domain"]
    domain = input_domain(meta, layout)
    if domain is None:
        warn(f"{where}: the row does not say which input domain its model was compiled for; "
             f"the decompiler was trained on {_domain_text(trained)}")
    elif not _same_domain(domain, trained):
        text = (f"{where}: the model's domain ({_domain_text(domain)}) differs from the "
                f"decompiler's training domain ({_domain_text(trained)}, {model_path})")
        if not force:
            raise DomainMismatch(f"{text}; its output would be meaningless (pass --force to "
                                 "decompile anyway)")
        warn(f"{text}; decompiling anyway (--force): the recovered program is unreliable")
    shard = {}
    if "shard_json" in arrays and arrays["shard_json"].size:
        shard = json.loads(str(arrays["shard_json"].reshape(-1)[0]))
    problem = verification_problem(meta, shard)
    if problem:
        warn(f"{where}: {problem}: the input model is not a faithful compilation of a RASP "
             "program, so the recovered program need not be what the weights compute")
    from metamodels.decompiler.train import Trainer
    from metamodels.rasp.program import render
    from metamodels.rasp.tokenizer import decode as decode_tokens
    from metamodels.zoo.stage import model_of_row
    trainer = Trainer(cfg, vocab)
    try:
        model = model_of_row(r)
    except (KeyError, TypeError, ValueError) as e:
        raise S.FileFormatError(weights_path, f"row {index}'s 'meta_json' does not describe a "
                                f"compiled model ({type(e).__name__}: {e}); write one with "
                                "`python -m metamodels compile PROGRAM.py --out FILE`",
                                "meta_json") from None
    compiled = meta.get("variant", "standard") == "standard"
    (res,) = decompile_models([model], trainer, model_params, cfg, vocab, edges, search=params,
                              recompile=[compiled], domain=domain or trained)
    if isinstance(res, Exception):
        raise res
    source = render(decode_tokens(res.tokens, vocab.tables), vocab.tables)
    return certificate_text(res) + source


def certificate_text(res: "SE.Result") -> str:
    """The comment block ``decompile`` prints above the recovered program."""
    if res.verified:
        how = ("the whole input domain" if res.exhaustive
               else f"{res.inputs} sampled inputs")
        lines = [f"# VERIFIED: this program's outputs equal the model's on {how} "
                 f"({res.positions} output positions compared)",
                 f"# candidate {res.rank} of {res.candidates} (best first), {res.tried} checked, "
                 f"{res.seconds:.2f} s"]
        if res.identical_weights is not None:
            lines.append("# recompiled, its weights are "
                         + ("bitwise identical to the input's" if res.identical_weights
                            else "NOT bitwise identical to the input's"))
    else:
        lines = ["# UNVERIFIED best guess: no candidate's outputs equal the model's "
                 f"({res.reason}; {res.tried} of {res.candidates} candidates checked, "
                 f"{res.seconds:.2f} s)",
                 "# this program need not compute what the weights compute"]
    return "\n".join(lines) + "\n"
