"""The Snakemake + DVC pipeline on a tiny configuration, end to end.

Covers (every paper's stages, target `everything`): params validated before any job; only what depends on an edit reruns;
bitwise-identical outputs for --cores 1 and --cores 2; `snakemake
--lint`; dvc.yaml agreeing with the Snakefile. The `dvc push` / fresh clone /
`dvc pull` / nothing-to-do round trip is in test_dvc_remote.py.
"""

from __future__ import annotations

import pathlib

import pytest
import yaml

from tests.tiny import ROOT, snakemake, tiny_params, workspace

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pipeline")]
# Tests that do not use the `built` workspace: a group of their own (xdist joins the names),
# so they run beside the `built` ones on the other worker.
beside_built = pytest.mark.xdist_group("static")


TARGET_RULES = ("all", "everything", "backdoors", "hparams", "modadd")


def planned_jobs(cwd, target: str = "everything") -> dict[str, int]:
    """Rule -> job count of a dry run of `target` ({} when nothing is to be done)."""
    out = snakemake(cwd, target, "-n", "--quiet", "rules").stdout
    jobs, on = {}, False
    for line in out.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            on = True
        elif on and len(parts) == 2 and parts[1].isdigit():
            if parts[0] == "total":
                break
            jobs[parts[0]] = int(parts[1])
    return {k: v for k, v in jobs.items() if k not in TARGET_RULES}


def data_files(ws: pathlib.Path) -> dict[str, bytes]:
    """Every pipeline output (data, trained models, results and figures)."""
    return {str(p.relative_to(ws)): p.read_bytes()
            for top in ("data", "models", "results") for p in sorted((ws / top).rglob("*"))
            if p.is_file()}


def test_the_group_reaches_the_scheduler(request):
    """Under `pytest -n N --dist loadgroup` (the README's test command) this module's tests
    share one worker, so `built` is built once; pytest-xdist tags the node id for that. With
    pytest 9.2 it could not (the tag was lost and every worker built its own workspace)."""
    if getattr(request.config.option, "loadgroup", False):
        assert request.node.nodeid.endswith("@pipeline"), request.node.nodeid


@beside_built
def test_lint_is_clean():
    out = snakemake(ROOT, "--lint")
    assert "Lints for" not in out.stdout + out.stderr, out.stdout


@beside_built
def test_dvc_yaml_is_generated_from_the_snakefile(tmp_path):
    from metamodels.core import versioning
    committed = (ROOT / "dvc.yaml").read_text()
    assert committed == versioning.dvc_yaml(versioning.snakemake_jobs(ROOT)), \
        "dvc.yaml is stale: run `python -m metamodels dvc-yaml`"
    stages = yaml.safe_load(committed)["stages"]
    n = yaml.safe_load((ROOT / "params.yaml").read_text())["zoo"]["shards"]
    assert sum(name.startswith("compile_shard_") for name in stages) == n


@beside_built
@pytest.mark.parametrize("section,key,value,needle", [
    ("zoo", "vocabulary", [1, 2], "zoo.vocabulary"),           # unknown key
    ("zoo", "max_seq_len", "five", "zoo.max_seq_len"),         # wrong type
    ("verify", "samples", 10, "verify.samples"),               # out of range
    ("sampler", "min_length", 9, "sampler.min_length"),        # cross-field
])
def test_bad_params_fail_before_any_job(tmp_path, section, key, value, needle):
    p = tiny_params()
    p[section][key] = value
    ws = workspace(tmp_path, p)
    res = snakemake(ws, "-n", check=False)
    assert res.returncode != 0
    assert needle in res.stdout + res.stderr
    assert not (ws / "data").exists()


DECOMPILER = {"train_decompiler": 1, "evaluate_decompiler": 1, "figure3": 1}
VARIANT_DECOMPILERS = {"train_variant_decompiler": 2, "evaluate_variant_decompiler": 2,
                       "variants_report": 1, "figure_variants": 1}
# 4 dataset shards and 2 variants x 4 variant shards, each tokenized
VARIANTS = {"variant_shard": 2 * 4, **VARIANT_DECOMPILERS, "tokenize": 4 + 2 * 4}


@pytest.mark.parametrize("edit,expected", [
    (lambda p: p["dataset"]["split"].update(train=0.5, val=0.3),
     {"split": 1, **DECOMPILER, **VARIANTS}),
    (lambda p: p["dataset"]["shards"].update(train=3),
     {"split": 1, **DECOMPILER, **VARIANTS, "variant_shard": 2 * 5, "tokenize": 5 + 2 * 5}),
    (lambda p: p["compile"].update(timeout_s=61),
     {"compile_shard": 2, "split": 1, **DECOMPILER, **VARIANTS}),
    (lambda p: p["zoo"].update(seed=1),
     {"sample": 2, "compile_shard": 2, "split": 1, **DECOMPILER, **VARIANTS}),
    (lambda p: p["sampler"].update(max_length=7),
     {"vocab": 1, "sample": 2, "compile_shard": 2, "split": 1, **DECOMPILER, **VARIANTS}),
    # variants.decompiler overrides decompiler.train.steps: the variant decompilers stay
    (lambda p: p["decompiler"]["train"].update(steps=7), DECOMPILER),
    (lambda p: p["decompiler"]["train"].update(learning_rate=0.002),
     {**DECOMPILER, **VARIANT_DECOMPILERS}),
    # what a token is: every token shard is remade, and what reads them
    (lambda p: p["decompiler"]["input"].update(max_index=200),
     {**DECOMPILER, **VARIANT_DECOMPILERS, "tokenize": 4 + 2 * 4}),
    # a rule's thread count is one of its params: its jobs rerun, the others stay
    (lambda p: p["threads"].update(cnn_zoo=2),
     {"cnn_zoo_shard": 2, "detect_backdoors": 3, "backdoor_report": 1, "figure2": 1,
      "hparam_zoo_shard": 2, "predict_hparam": 2, "hparam_report": 1, "figure4": 1}),
    (lambda p: p["decompiler"]["evaluate"].update(beam=2),
     {"evaluate_decompiler": 1, "figure3": 1, "evaluate_variant_decompiler": 2,
      "variants_report": 1, "figure_variants": 1}),
    (lambda p: p["decompiler"]["search"].update(candidates=4),
     {"evaluate_decompiler": 1, "figure3": 1, "evaluate_variant_decompiler": 2,
      "variants_report": 1, "figure_variants": 1}),
    (lambda p: p["variants"]["pca"].update(ratio=0.7),   # the distilled students stay
     {"variant_shard": 4, "tokenize": 4, "train_variant_decompiler": 1, "evaluate_variant_decompiler": 1,
      "variants_report": 1, "figure_variants": 1}),
    (lambda p: p["detector"]["model"].update(steps=5),
     {"detect_backdoors": 3, "backdoor_report": 1, "figure2": 1}),
    (lambda p: p["cnn_zoo"].update(asr_threshold=0.1),
     {"cnn_zoo_shard": 2, "detect_backdoors": 3, "backdoor_report": 1, "figure2": 1}),
    (lambda p: p["hparams"]["segment_cnn"].update(steps=5),
     {"predict_hparam": 2, "hparam_report": 1, "figure4": 1}),
    (lambda p: p["hparam_zoo"].update(noise_std=0.2),
     {"hparam_zoo_shard": 2, "predict_hparam": 2, "hparam_report": 1, "figure4": 1}),
    (lambda p: p["modadd"]["runs"].update(mod1=3),       # the clean task is not retrained
     {"train_modadd": 1, "analyse_modadd": 1, "figure_backdoor_heads": 1}),
])
def test_only_what_depends_on_an_edit_reruns(built, edit, expected):
    assert planned_jobs(built) == {}
    original = (built / "params.yaml").read_text()
    p = yaml.safe_load(original)
    edit(p)
    try:
        (built / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        assert planned_jobs(built) == expected
    finally:
        (built / "params.yaml").write_text(original)


def test_outputs_identical_whatever_cores(built, tmp_path):
    """`built` ran with --cores 2; here --cores 1 builds the default target `all`, the CNN zoo
    with one detector setting (threads.train = 2 > --cores: the process keeps 2), and modadd."""
    ws1 = workspace(tmp_path, tiny_params())
    snakemake(ws1, "all", "results/backdoor/scores_iid.json", "results/metrics/modadd.json",
              "--cores", "1", "--quiet")
    a, b = data_files(built), data_files(ws1)
    assert set(b) <= set(a) and len(b) >= 10 and "results/figure3.pdf" in b
    assert {"data/cnn_zoo/shard_000.npz", "results/backdoor/history_iid.json",
            "models/modadd/mod1.npz", "results/metrics/modadd.json"} <= set(b)
    assert [k for k in b if a[k] != b[k]] == []
