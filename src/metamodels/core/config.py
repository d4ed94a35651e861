"""params.yaml: loading and validation (JSON schema plus cross-field rules).

Every stage reads its parameters from here, and the Snakefile calls
:func:`validate` before any job runs, so a wrong type, range or unknown key
fails at once with a message naming the key.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping

import jsonschema
import yaml

SCHEMA_PATH = pathlib.Path(__file__).with_name("schemas") / "params.schema.yaml"


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


def validate(params: Mapping[str, Any], source: str = "params.yaml") -> None:
    """Raise ParamsError naming the first bad key; return None when valid."""
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


def _cross_checks(params: Mapping[str, Any], source: str) -> None:
    s, d = params.get("sampler", {}), params.get("dataset", {})
    if "min_length" in s and "max_length" in s and s["min_length"] > s["max_length"]:
        raise ParamsError(f"{source}: 'sampler.min_length' ({s['min_length']}) must be <= "
                          f"'sampler.max_length' ({s['max_length']})")
    if "split" in d and abs(sum(d["split"].values()) - 1.0) > 1e-9:
        raise ParamsError(f"{source}: 'dataset.split' fractions must sum to 1, "
                          f"got {sum(d['split'].values())}")
    m = params.get("modadd", {})
    if "patching_task" in m and "runs" in m and len(m["runs"]) > 1 \
            and m["patching_task"] not in m["runs"]:
        raise ParamsError(f"{source}: 'modadd.patching_task' ({m['patching_task']}) must be one "
                          f"of the tasks in 'modadd.runs' ({', '.join(m['runs'])})")
    z = params.get("cnn_zoo", {}).get("models_per_shard", {})
    if z and not any(v > 0 for k, v in z.items() if k != "clean"):
        raise ParamsError(f"{source}: 'cnn_zoo.models_per_shard' needs at least one poisoned "
                          "model per shard")
    sp = params.get("detector", {}).get("split", {})
    if sp and sp.get("val", 0) + sp.get("test", 0) >= 1:
        raise ParamsError(f"{source}: 'detector.split' val + test must leave models to train "
                          f"on (got {sp['val']} + {sp['test']})")
    dist = params.get("variants", {}).get("distill", {})
    if "steps" in dist and "eval_every" in dist and dist["steps"] % dist["eval_every"]:
        raise ParamsError(f"{source}: 'variants.distill.steps' ({dist['steps']}) must be a "
                          f"multiple of 'variants.distill.eval_every' ({dist['eval_every']})")
    weights = s.get("op_weights")
    if weights is not None and not any(weights[k] > 0 for k in
                                       ("Map", "SequenceMap", "Aggregate", "SelectorWidth")):
        raise ParamsError(f"{source}: 'sampler.op_weights' needs a positive weight on an op "
                          "that reads tokens (Map, SequenceMap, Aggregate or SelectorWidth)")


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


def load(path: str | pathlib.Path = "params.yaml") -> dict:
    path = pathlib.Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the repository root or pass --params)") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    validate(params, str(path))
    return params
