"""Bad params.yaml edits are rejected before any job starts, each with a message naming the key.

Proved here: :func:`metamodels.core.config.validate` — the function ``rules/common.smk`` calls
while the Snakefile is parsed (image paths: ``check_input_paths``, called while the DAG of a
target that trains CNNs is built) — raises ``ParamsError`` naming the edited key for every one of
the edits in ``EDITS`` (wrong types, out-of-range values, unknown and missing keys, cross-field
conflicts, image paths that do not exist when they cannot be downloaded), while the unedited
params pass. Then a few of them go through real ``snakemake -n`` / ``snakemake --cores 1``
runs in a tiny workspace: non-zero exit, ParamsError naming the key in Snakemake's output, and
no job ran (no output, log or Snakemake job record was written).
"""

from __future__ import annotations

import copy
import pathlib

import pytest
import yaml

from metamodels.core import config


def _set(path: str, value):
    """An edit setting the dotted key `path` (created when absent) to `value`."""
    *parents, last = path.split(".")

    def edit(p):
        for k in parents:
            p = p[k]
        p[last] = value
    return edit


def _drop(path: str):
    *parents, last = path.split(".")

    def edit(p):
        for k in parents:
            p = p[k]
        del p[last]
    return edit


def _update(path: str, **values):
    def edit(p):
        for k in path.split("."):
            p = p[k]
        p.update(values)
    return edit


# (id, edit, text the message must contain: the key, quoted as the message quotes it)
EDITS = [
    # wrong types
    ("string-for-int", _set("zoo.max_seq_len", "five"), "'zoo.max_seq_len'"),
    ("float-for-int", _set("zoo.shards", 2.5), "'zoo.shards'"),
    ("bool-for-int", _set("cnn_zoo.shards", True), "'cnn_zoo.shards'"),
    ("null-for-int", _set("decompiler.seed", None), "'decompiler.seed'"),
    ("string-for-number", _set("compile.timeout_s", "60"), "'compile.timeout_s'"),
    ("string-for-bool", _set("decompiler.evaluate.constrained", "yes"),
     "'decompiler.evaluate.constrained'"),
    ("string-in-int-list", _set("zoo.vocab", [1, "b"]), "'zoo.vocab.1'"),
    ("list-for-section", _set("verify", [1, 2]), "'verify'"),
    ("scalar-for-list", _set("cnn_zoo.cnn.channels", 16), "'cnn_zoo.cnn.channels'"),
    ("unknown-enum", _set("decompiler.model.architecture", "gpt"),
     "'decompiler.model.architecture'"),
    ("unknown-dataset", _set("images.dataset", "svhn"), "'images.dataset'"),
    # out of range
    ("negative-seed", _set("zoo.seed", -1), "'zoo.seed'"),
    ("zero-shards", _set("dataset.shards.test", 0), "'dataset.shards.test'"),
    ("probability-above-1", _set("sampler.p_numerical", 1.5), "'sampler.p_numerical'"),
    ("too-few-verify-samples", _set("verify.samples", 10), "'verify.samples'"),
    ("zero-threads", _set("threads.train", 0), "'threads.train'"),
    ("beta-equal-1", _set("detector.model.b2", 1.0), "'detector.model.b2'"),
    ("zero-learning-rate", _set("modadd.train.learning_rate", 0), "'modadd.train.learning_rate'"),
    ("zero-split-fraction", _update("dataset.split", train=0.0, val=0.5, test=0.5),
     "'dataset.split.train'"),
    ("duplicate-vocab", _set("zoo.vocab", [1, 1]), "'zoo.vocab'"),
    ("empty-variant-list", _set("variants.decompile", []), "'variants.decompile'"),
    ("no-search-candidates", _set("decompiler.search.candidates", 0),
     "'decompiler.search.candidates'"),
    ("negative-search-seconds", _set("decompiler.search.seconds", -1),
     "'decompiler.search.seconds'"),
    ("bad-task-name", _update("modadd.runs", mod0=1), "'modadd.runs'"),
    # unknown and missing keys
    ("unknown-top-level", _set("extra", {}), "unknown key 'extra'"),
    ("unknown-nested", _set("decompiler.train.stepz", 3), "unknown key 'decompiler.train.stepz'"),
    ("unknown-attack", _update("cnn_zoo.models_per_shard", trojan=1),
     "unknown key 'cnn_zoo.models_per_shard.trojan'"),
    ("variant-override-not-a-train-key", _update("variants.decompiler", layers=2),
     "unknown key 'variants.decompiler.layers'"),
    ("missing-key", _drop("verify.atol"), "missing key 'verify.atol'"),
    ("missing-section", _drop("threads"), "missing key 'threads'"),
    # cross-field conflicts
    ("value-tables-with-chunks", _update("decompiler.input", tokenization="chunks",
                                         value_tables=True), "'decompiler.input.value_tables'"),
    ("value-tables-not-bool", _set("decompiler.input.value_tables", "yes"),
     "'decompiler.input.value_tables'"),
    ("min-length-above-max", _update("sampler", min_length=5, max_length=4),
     "'sampler.min_length'"),
    ("split-not-summing-to-1", _update("dataset.split", train=0.5, val=0.1, test=0.1),
     "'dataset.split'"),
    ("no-token-reading-op", _set("sampler.op_weights", {"Map": 0, "SequenceMap": 0,
                                                        "LinearSequenceMap": 1, "Aggregate": 0,
                                                        "SelectorWidth": 0}),
     "'sampler.op_weights'"),
    ("decompiler-heads-not-dividing-d-model", _update("decompiler.model", d_model=130, heads=4),
     "'decompiler.model.d_model'"),
    ("detector-heads-not-dividing-d-model", _update("detector.model", d_model=65, heads=4),
     "'detector.model.d_model'"),
    ("patching-task-not-trained", _set("modadd.patching_task", "mod5"), "'modadd.patching_task'"),
    ("patching-task-not-trained-single-task", _set("modadd.runs", {"clean": 1}),
     "'modadd.patching_task'"),
    ("backdoor-modulus-above-p0", _update("modadd.runs", mod61=1), "'modadd.runs.mod61'"),
    ("no-poisoned-models", _set("cnn_zoo.models_per_shard", {"clean": 4, "patch4": 0}),
     "'cnn_zoo.models_per_shard'"),
    ("ood-attack-without-models", _update("cnn_zoo.models_per_shard", noise_blend=0),
     "'detector.ood_train_attacks'"),
    ("detector-split-leaves-no-train", _set("detector.split", {"val": 0.5, "test": 0.5}),
     "'detector.split'"),
    ("distill-steps-not-multiple", _update("variants.distill", steps=1001),
     "'variants.distill.steps'"),
    ("fewer-logits-than-classes", _update("cnn_zoo.cnn", classes=5), "'cnn_zoo.cnn.classes'"),
    # input paths that do not exist (and cannot be downloaded)
    ("cifar10-root-missing-no-download", _set("images.cifar10_root", "no/such/dir"),
     "'images.cifar10_root'"),
    ("cifar10-root-without-batches", _set("images.cifar10_root", "."), "'images.cifar10_root'"),
    ("fashion-mnist-root-missing", _update("images", dataset="fashion_mnist",
                                           fashion_mnist_root="no/fashion-mnist"),
     "'images.fashion_mnist_root'"),
]


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory) -> pathlib.Path:
    """A folder holding a tiny CIFAR-10 binary release at ``cifar10/`` (the valid root)."""
    from metamodels.backdoor.images import write_cifar10_fixture
    d = tmp_path_factory.mktemp("images")
    write_cifar10_fixture(d / "cifar10", n_train_per_batch=2, n_test=2, seed=0)
    return d


@pytest.fixture()
def valid(default_params, images_dir, monkeypatch) -> dict:
    """The default params with the images read offline from `images_dir` (the cwd, as
    Snakemake's working directory is for the jobs): valid on any machine."""
    monkeypatch.chdir(images_dir)
    p = copy.deepcopy(default_params)
    p["images"].update(dataset="cifar10", cifar10_root="cifar10", download=False)
    return p


def test_there_are_enough_distinct_edits():
    """The issue asks for at least 30 invalid edits; each id is unique."""
    ids = [e[0] for e in EDITS]
    assert len(ids) >= 30 and len(set(ids)) == len(ids)


def test_the_unedited_params_are_valid(valid):
    """The control: without an edit `validate` accepts the params (so each rejection below is
    the edit's doing), also with CIFAR-10 downloadable from a root that is missing."""
    config.validate(valid)
    valid["images"].update(cifar10_root="not/yet/downloaded", download=True)
    config.validate(valid)


@pytest.mark.parametrize("edit,needle", [e[1:] for e in EDITS], ids=[e[0] for e in EDITS])
def test_bad_edit_is_rejected_naming_the_key(valid, edit, needle):
    """The Snakefile's parse-time check (config.validate) rejects the edit, naming its key."""
    edit(valid)
    with pytest.raises(config.ParamsError) as e:
        config.validate(valid, "params (params.yaml + --config/--configfile)")
    assert needle in str(e.value)


def test_relative_image_paths_resolve_against_the_given_root(valid, images_dir, tmp_path):
    """A relative root is resolved against `root` (default: the working directory, where
    the jobs resolve it), not against wherever the check happens to run."""
    config.validate(valid, root=images_dir)
    with pytest.raises(config.ParamsError, match=r"'images\.cifar10_root'"):
        config.validate(valid, root=tmp_path)


def test_a_verb_loading_a_params_file_does_not_need_the_images(valid, tmp_path):
    """`load` (a verb's ``--params FILE``) checks types, ranges and cross-field rules but not
    the image paths, which only the CNN-zoo jobs read: `compile` or `decompile` by hand work
    without the images; the Snakefile's `validate` does check them."""
    valid["images"].update(cifar10_root="no/such/dir")
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(valid))
    assert config.load(f) == valid
    with pytest.raises(config.ParamsError, match=r"'images\.cifar10_root'"):
        config.load(f, check_paths=True)
    valid["zoo"]["seed"] = -1
    f.write_text(yaml.safe_dump(valid))
    with pytest.raises(config.ParamsError, match=r"'zoo\.seed'"):
        config.load(f)


# --- the same rejections through real Snakemake runs: nothing is scheduled ------------------

SNAKEMAKE_CASES = [
    # (edit of the tiny params, snakemake arguments, key in Snakemake's error)
    (_update("detector.model", d_model=18, heads=4), ["-n"], "detector.model.d_model"),
    (_update("images", cifar10_root="fixtures/missing", download=False),
     ["everything", "--cores", "1"], "images.cifar10_root"),
]


@pytest.fixture(scope="module")
def tiny_ws(tmp_path_factory) -> pathlib.Path:
    from tests.tiny import tiny_params, workspace
    return workspace(tmp_path_factory.mktemp("badparams"), tiny_params())


@pytest.mark.slow
@pytest.mark.parametrize("edit,args,needle", SNAKEMAKE_CASES,
                         ids=["dry-run", "run-everything"])
def test_snakemake_rejects_before_any_job(tiny_ws, edit, args, needle):
    """`snakemake` stops while parsing: non-zero exit, ParamsError with the key in its output,
    no job started (no pipeline output or log, no Snakemake job record)."""
    from tests.tiny import snakemake, tiny_params
    p = tiny_params()
    text = yaml.safe_dump(p, sort_keys=False)
    config.validate(p, root=tiny_ws)  # the control: valid in this workspace before the edit
    edit(p)
    (tiny_ws / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    try:
        res = snakemake(tiny_ws, *args, check=False)
    finally:
        (tiny_ws / "params.yaml").write_text(text)
    assert res.returncode != 0
    out = res.stdout + res.stderr  # Snakemake 9 prints the parse error on stdout
    assert needle in out and "ParamsError" in out, out[-2000:]
    for d in ("data", "models", "results", "logs", "work"):
        assert not (tiny_ws / d).exists(), d
    meta = tiny_ws / ".snakemake"
    for d in ("incomplete", "metadata"):
        assert not (meta / d).exists() or not any((meta / d).iterdir()), d


@pytest.mark.slow
def test_missing_images_do_not_block_targets_without_cnns(tiny_ws):
    """The image paths are checked only for a DAG that trains CNNs: figure 3 plans fine."""
    from tests.tiny import snakemake, tiny_params
    p = tiny_params()
    text = yaml.safe_dump(p, sort_keys=False)
    _update("images", cifar10_root="fixtures/missing", download=False)(p)
    (tiny_ws / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    try:
        res = snakemake(tiny_ws, "-n", "results/figure3.pdf", check=False)
    finally:
        (tiny_ws / "params.yaml").write_text(text)
    assert res.returncode == 0 and "cnn_zoo_shard" not in res.stdout, res.stdout[-2000:]
    assert "train_decompiler" in res.stdout
