"""params.yaml: loading and validation (JSON schema plus cross-field rules).

Every stage reads its parameters from here, and the Snakefile calls
:func:`validate` before any job runs, so a wrong type, range or unknown key, a
cross-field conflict (``_cross_checks``) or an input path that does not exist
(:func:`check_input_paths`: the image files of ``images.dataset`` when they cannot be
downloaded; the Snakefile checks them while it builds the DAG of a target that trains
CNNs, so ``results/figure3.pdf`` never needs them) fails at once with a message naming
the key.
"""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any, Mapping

import jsonschema
import yaml

SCHEMA_PATH = pathlib.Path(__file__).with_name("schemas") / "params.schema.yaml"


# Classes of each images.dataset (cnn_zoo.cnn.classes needs a logit for each).
DATASET_CLASSES = {"fashion_mnist": 10, "cifar10": 10}


class ParamsError(ValueError):
    """params.yaml is invalid; the message names the key and the fix."""


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _key_path(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        # name the offending key(s), not just the parent
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        if extra:
            return ".".join(filter(None, [path, extra[0]]))
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        if missing:
            return ".".join(filter(None, [path, missing[0]]))
    return path or "<top level>"


def validate(params: Mapping[str, Any], source: str = "params.yaml",
             root: str | pathlib.Path | None = None, check_paths: bool = True) -> None:
    """Raise ParamsError naming the first bad key; return None when valid.

    With `check_paths` the input files params name must exist too (:func:`check_input_paths`).
    """
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        key = _key_path(e)
        if e.validator == "additionalProperties":
            hint = f"unknown key '{key}': remove it or fix its spelling"
        elif e.validator == "required":
            hint = f"missing key '{key}': add it (see the default params.yaml)"
        else:
            hint = f"'{key}': {e.message}"
        raise ParamsError(f"{source}: {hint}")
    _cross_checks(params, source)
    if check_paths:
        check_input_paths(params, source, root)


#: Images in scikit-learn's bundled digits (sklearn.datasets.load_digits), a data set of the
#: hyperparameter zoo; the check below keeps NumPy and scikit-learn unloaded.
DIGITS_IMAGES = 1797


def _cross_checks(params: Mapping[str, Any], source: str) -> None:
    s, d = params.get("sampler", {}), params.get("dataset", {})
    if "min_length" in s and "max_length" in s and s["min_length"] > s["max_length"]:
        raise ParamsError(f"{source}: 'sampler.min_length' ({s['min_length']}) must be <= "
                          f"'sampler.max_length' ({s['max_length']})")
    if "split" in d and abs(sum(d["split"].values()) - 1.0) > 1e-9:
        raise ParamsError(f"{source}: 'dataset.split' fractions must sum to 1, "
                          f"got {sum(d['split'].values())}")
    dec = params.get("decompiler", {})
    inp = dec.get("input", {})
    if inp.get("value_tables") and inp.get("tokenization", "residual") != "residual":
        raise ParamsError(f"{source}: 'decompiler.input.value_tables' needs "
                          f"'decompiler.input.tokenization: residual' (got "
                          f"{inp['tokenization']!r}); set value_tables to false")
    if dec.get("train", {}).get("residual_supervision", 0) > 0:
        for key, need in (("input.tokenization", "residual"),
                          ("model.architecture", "encoder_decoder")):
            sec, name = key.split(".")
            got = dec.get(sec, {}).get(name, need)
            if got != need:
                raise ParamsError(f"{source}: 'decompiler.train.residual_supervision' > 0 needs "
                                  f"'decompiler.{key}: {need}' (got {got!r}); set "
                                  f"residual_supervision to 0 or {key} to {need}")
    m = params.get("modadd", {})
    if "patching_task" in m and "runs" in m and m["patching_task"] not in m["runs"]:
        raise ParamsError(f"{source}: 'modadd.patching_task' ({m['patching_task']}) must be one "
                          f"of the tasks in 'modadd.runs' ({', '.join(m['runs'])})")
    p0 = m.get("train", {}).get("p0")
    for task in m.get("runs", {}):
        if p0 is not None and task.startswith("mod") and int(task[3:]) > p0:
            raise ParamsError(f"{source}: 'modadd.runs.{task}': the backdoor modulus {task[3:]} "
                              f"must be <= 'modadd.train.p0' ({p0}): its labels are among the "
                              f"p0 tokens")
    for sec, sub in (("decompiler", "model"), ("detector", "model"), ("hparams", "meta_model")):
        mod = params.get(sec, {}).get(sub, {})
        if "d_model" in mod and "heads" in mod and mod["d_model"] % mod["heads"]:
            raise ParamsError(f"{source}: '{sec}.{sub}.d_model' ({mod['d_model']}) must be a "
                              f"multiple of '{sec}.{sub}.heads' ({mod['heads']})")
    z = params.get("cnn_zoo", {}).get("models_per_shard", {})
    if z and not any(v > 0 for k, v in z.items() if k != "clean"):
        raise ParamsError(f"{source}: 'cnn_zoo.models_per_shard' needs at least one poisoned "
                          "model per shard")
    det = params.get("detector", {})
    if z:
        for attack in det.get("ood_train_attacks", []):
            if not z.get(attack, 0):
                raise ParamsError(f"{source}: 'detector.ood_train_attacks' trains on {attack}, "
                                  f"but 'cnn_zoo.models_per_shard.{attack}' makes none: add "
                                  f"{attack} models or remove the attack")
    classes = params.get("cnn_zoo", {}).get("cnn", {}).get("classes")
    dataset = params.get("images", {}).get("dataset")
    if classes is not None and dataset in DATASET_CLASSES and classes < DATASET_CLASSES[dataset]:
        raise ParamsError(f"{source}: 'cnn_zoo.cnn.classes' ({classes}) must be at least the "
                          f"{DATASET_CLASSES[dataset]} classes of 'images.dataset' ({dataset})")
    sp = params.get("detector", {}).get("split", {})
    if sp and sp.get("val", 0) + sp.get("test", 0) >= 1:
        raise ParamsError(f"{source}: 'detector.split' val + test must leave models to train "
                          f"on (got {sp['val']} + {sp['test']})")
    dist = params.get("variants", {}).get("distill", {})
    if "steps" in dist and "eval_every" in dist and dist["steps"] % dist["eval_every"]:
        raise ParamsError(f"{source}: 'variants.distill.steps' ({dist['steps']}) must be a "
                          f"multiple of 'variants.distill.eval_every' ({dist['eval_every']})")
    hz, hp = params.get("hparam_zoo", {}), params.get("hparams", {})
    for target in hp.get("targets", []):
        options = hz.get("choices", {}).get(target)
        if options is not None and len(options) < 2:
            raise ParamsError(f"{source}: 'hparams.targets' predicts {target}, but "
                              f"'hparam_zoo.choices.{target}' has one value ({options[0]}): "
                              "list at least two, or remove the target")
    hsp = hp.get("split", {})
    if hsp and hsp.get("val", 0) + hsp.get("test", 0) >= 1:
        raise ParamsError(f"{source}: 'hparams.split' val + test must leave models to train "
                          f"on (got {hsp['val']} + {hsp['test']})")
    if hsp and "shards" in hz and "models_per_shard" in hz:
        from metamodels.hparams import split_sizes  # pure Python: NumPy stays unloaded
        n = hz["shards"] * hz["models_per_shard"]
        n_train = split_sizes(n, hsp)[0]
        if n_train < 2:
            raise ParamsError(f"{source}: 'hparams.split' leaves {n_train} of the {n} CNNs of "
                              "'hparam_zoo' (shards x models_per_shard) to train on; grow the "
                              "zoo or shrink the split")
    if "digits" in hz.get("choices", {}).get("dataset", []) and \
            hz.get("test_limit", 0) > DIGITS_IMAGES // 2:
        raise ParamsError(f"{source}: 'hparam_zoo.test_limit' ({hz['test_limit']}) leaves too "
                          f"few of the {DIGITS_IMAGES} digits (listed in "
                          "'hparam_zoo.choices.dataset') to train on; use at most "
                          f"{DIGITS_IMAGES // 2}")
    weights = s.get("op_weights")
    if weights is not None and not any(weights[k] > 0 for k in
                                       ("Map", "SequenceMap", "Aggregate", "SelectorWidth")):
        raise ParamsError(f"{source}: 'sampler.op_weights' needs a positive weight on an op "
                          "that reads tokens (Map, SequenceMap, Aggregate or SelectorWidth)")


def check_input_paths(params: Mapping[str, Any], source: str = "params.yaml",
                      root: str | pathlib.Path | None = None, dataset: str | None = None,
                      needed_by: str = "images.dataset") -> None:
    """Raise ParamsError naming the key unless the input files params point to exist: the
    images of ``images.dataset``, unless the pipeline may download them (CIFAR-10 with
    ``images.download``). Relative paths are resolved against `root` (default: the current
    directory, Snakemake's working directory, where the jobs resolve them too). `dataset`
    checks that data set instead (e.g. fashion_mnist for the hyperparameter zoo), `needed_by`
    names the key that asks for it in the message."""
    root = pathlib.Path.cwd() if root is None else pathlib.Path(root)
    im = params.get("images")
    if not im:
        return
    # The file names belong to the image readers; imported here, as only the Snakefile checks
    # paths (load() does not: verbs such as check-params and --help keep NumPy unloaded).
    from metamodels.backdoor import images as I
    name = dataset or im["dataset"]
    if name == "fashion_mnist":
        key = "fashion_mnist_root"
        folder = root / im[key]
        wanted = {f: [folder / f, folder / f"{f}.gz"] for f in I.FASHION_MNIST_FILES.values()}
        fix = ("install Debian's dataset-fashion-mnist, point the key at the folder of the IDX "
               "files, or use images.dataset: cifar10 with images.download: true")
    elif name == "cifar10" and not im["download"]:
        key = "cifar10_root"
        folder = root / im[key] / I.CIFAR10_DIR
        wanted = {f: [folder / f] for f in (*I.CIFAR10_TRAIN_FILES, I.CIFAR10_TEST_FILE)}
        fix = (f"point the key at the folder holding {I.CIFAR10_DIR}/, or set "
               "images.download: true to fetch it")
    else:
        return
    missing = [f for f, paths in wanted.items() if not any(p.is_file() for p in paths)]
    if missing:
        what = "does not exist" if not folder.is_dir() else f"lacks {', '.join(missing)}"
        raise ParamsError(f"{source}: 'images.{key}' ({im[key]}): {folder} {what} (images of "
                          f"{needed_by} {name}); {fix}")


def validate_partial(params: Mapping[str, Any], source: str = "--config") -> None:
    """Validate a subset of sections/keys (what one rule passes) against the schema."""
    schema = load_schema()
    for section, values in params.items():
        sec_schema = schema["properties"].get(section)
        if sec_schema is None:
            raise ParamsError(f"{source}: unknown section '{section}'")
        for key, value in values.items():
            key_schema = sec_schema["properties"].get(key)
            if key_schema is None:
                raise ParamsError(f"{source}: unknown key '{section}.{key}'")
            try:
                jsonschema.validate(value, key_schema)
            except jsonschema.ValidationError as e:
                raise ParamsError(f"{source}: '{section}.{key}': {e.message}") from None
    _cross_checks(params, source)


def sections(params: Mapping[str, Any], **wanted: Any) -> str:
    """JSON of the chosen sections (True = whole section, or a list of keys), sorted.

    What a Snakemake rule passes as ``params:`` to its verb: the rerun trigger
    then fires exactly when one of these values changes.
    """
    out = {}
    for section, keys in wanted.items():
        sec = params[section]
        out[section] = dict(sec) if keys is True else {k: sec[k] for k in keys}
    return json.dumps(out, sort_keys=True, separators=(",", ":"))


def load(path: str | pathlib.Path = "params.yaml", check_paths: bool = False) -> dict:
    """The validated params of a file. A verb run by hand (``--params``) loads the whole file
    but may not read the images, so their paths are checked only with `check_paths`."""
    path = pathlib.Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the repository root or pass --params)") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    validate(params, str(path), check_paths=check_paths)
    return params


# What some params mean, read by the rules at parse time (rules/common.smk) as well as by the
# stages: kept here, where importing costs no NumPy, JAX or tracr (every Snakemake start).

def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict:
    """``over`` merged into a copy of ``base``, section by section, as Snakemake's
    ``--configfile`` merges a params file over params.yaml (e.g. params/paper.yaml)."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = (merged(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping)
                  else copy.deepcopy(v))
    return out


def distill_ratio(distill: Mapping[str, Any], kind: str) -> float:
    """``variants.distill.ratio`` for students of `kind`: one number for both kinds, or one
    per kind (``{compressed: 0.8, natural: 0.5}``)."""
    ratio = distill["ratio"]
    return float(ratio[kind] if isinstance(ratio, Mapping) else ratio)


def detection_settings(detector: Mapping[str, Any]) -> list[str]:
    """The backdoor-detection settings ``detector`` params ask for: ``iid``; the same with
    neuron-permutation augmentation switched the other way (``iid_noaug`` when
    ``detector.model.augment`` is true, ``iid_aug`` when false); then ``ood_<attack>`` for each
    of ``detector.ood_train_attacks``."""
    flipped = "iid_noaug" if detector.get("model", {}).get("augment", True) else "iid_aug"
    return ["iid", flipped] + [f"ood_{a}" for a in detector["ood_train_attacks"]]
