"""Users' own programs through ``compile`` (zoo/user_program.py): the field cases.

tests/zoo/field_cases/ holds programs modelled on public tracr fault reports; each file's
``EXPECTED:`` comment says what is right. Each case is checked in-process (the checks,
compile, verification and diagnosis), and the CLI contract (exit codes, no model file for
an unverified model unless asked, ``compile.timeout_s``) through ``python -m metamodels``.
"""

from __future__ import annotations

import copy
import json
import pathlib

import numpy as np
import pytest

from metamodels.core import shards as S
from metamodels.zoo.user_program import ProgramError, compile_user_program, layer_sizes
from tests.tiny import ROOT, run

CASES = pathlib.Path(__file__).parent / "field_cases"
PY = str(ROOT / ".venv" / "bin" / "python")


def domain(params, vocab, max_seq_len):
    p = copy.deepcopy(params)
    p["zoo"].update(vocab=vocab, max_seq_len=max_seq_len)
    return p


@pytest.fixture(scope="module")
def base(default_params):
    return copy.deepcopy(default_params)


# case -> (domain or None for the default, outcome, what the message must say)
REFUSED = {
    "case13_cat_aggregate_default0": ["`program`", "case13_cat_aggregate_default0.py:10",
                                      "Categorical aggregate only supports None as default",
                                      "default=None"],
    "case15_select_numerical_query": ["`sel`", "case15_select_numerical_query.py:7",
                                      "Select queries must be categorical", "queries are `q`"],
    "case02_categorical_mean": ["`program`", "categorical Aggregate", "averages",
                                "width > 1", "rasp.numerical"],
    "case18_composed_maps_simplify": ["`program`", "`plus1`", "merged", "simplify=False"],
    "case21_value_set_blowup": ["`program`", "too large", "SequenceMap", "108 x 1202",
                                "hidden units", "compile.memory_mb"],
    "bad01_syntax_error": ["bad01_syntax_error.py:2", "syntax error"],
    "bad06_import_error": ["bad06_import_error.py:1", "ModuleNotFoundError",
                           "not_a_real_module_xyz"],
    "bad11_program_is_tokens": ["rasp.tokens", "at least one operation"],
}

VERIFIED = {
    "case01_nested_cat_aggregate_none": None,
    "case07_reverse": None,
    "case11_numeric_map_of_mean_long": ([1, 2], 12),
    "case12_cat_width_gt1_same_value": None,
    "case16_label_counter": None,
    "case16b_label_counter_ref": None,
    "case20_bos_default_numeric": None,
}

# case -> (domain, the diagnosis' first wrong op and cause)
WRONG = {
    "case03_numerical_negative_map": (None, "`program`", "negative outputs", "ReLU"),
    "case10_selector_width_long": (([1, 2], 16), "`program`", "SelectorWidth",
                                   "compile.mlp_exactness"),
    "case11b_numeric_map_of_mean_long": (([1, 2], 12), "`program`", "off its input grid",
                                         "`frac`"),
}


def _params(base, dom):
    return base if dom is None else domain(base, *dom)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_with_the_users_expression_named(base, case):
    with pytest.raises(ProgramError) as e:
        compile_user_program(base, str(CASES / f"{case}.py"), keep_unverified=False)
    for needle in REFUSED[case]:
        assert needle in str(e.value), (needle, str(e.value))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("case", sorted(VERIFIED))
def test_faithful_programs_are_verified(base, case):
    out = compile_user_program(_params(base, VERIFIED[case]), str(CASES / f"{case}.py"), False)
    check = out["result"]["verification"]
    assert check["passed"] and check["mismatched_positions"] == 0 and out["diagnosis"] is None
    assert check["positions"] - check["none_positions"] >= 0.5 * check["positions"]


def test_none_positions_are_excluded_and_reported(base):
    out = compile_user_program(base, str(CASES / "case01_nested_cat_aggregate_none.py"), False)
    check = out["result"]["verification"]
    # Hand count: `first` is None wherever token >= length, and so is the output.
    assert check["none_positions"] == 6909 and check["positions"] == 18555
    assert out["entry"]["none_fraction"] == pytest.approx(6909 / 18555)


def test_a_verification_that_compares_nothing_fails(base):
    out = compile_user_program(base, str(CASES / "case05_all_none_select_false.py"), False)
    check = out["result"]["verification"]
    assert check["none_positions"] == check["positions"] and not check["passed"]
    assert "only 0 could be compared" in check["reason"]


@pytest.mark.parametrize("case", sorted(WRONG))
def test_wrong_models_are_diagnosed(base, case):
    dom, op, *causes = WRONG[case]
    out = compile_user_program(_params(base, dom), str(CASES / f"{case}.py"), False)
    assert not out["result"]["verification"]["passed"]
    d = out["diagnosis"]
    assert d["op"].startswith(op), d
    for needle in causes:
        assert needle in d["cause"], (needle, d["cause"])
    assert d["expected"] != d["got"] and len(d["expected"]) == len(d["input"])


def test_raising_mlp_exactness_fixes_selector_width(base):
    p = domain(base, [1, 2], 16)
    p["compile"]["mlp_exactness"] = 1000
    out = compile_user_program(p, str(CASES / "case10_selector_width_long.py"), False)
    assert out["result"]["verification"]["passed"]


def test_weights_do_not_depend_on_expressions_built_before(base):
    a = compile_user_program(base, str(CASES / "case16_label_counter.py"), False)
    b = compile_user_program(base, str(CASES / "case16b_label_counter_ref.py"), False)
    assert a["result"]["flat"].tobytes() == b["result"]["flat"].tobytes()
    assert a["result"]["model"] == b["result"]["model"]


def test_layer_size_estimates_are_close_to_tracr(base):
    from metamodels.rasp import lambdas as L
    from metamodels.rasp.program import to_rasp
    from metamodels.rasp.sampler import SamplerConfig, sample_shard
    from metamodels.zoo.compiler import compile_program
    sampled, _ = sample_shard(SamplerConfig.from_params(base), 0, 0, 12)
    tables = L.Tables(base["sampler"]["map_constants"])
    ratios = []
    for s in sampled:
        try:
            m = compile_program(to_rasp(s.program, tables), set(base["zoo"]["vocab"]),
                                base["zoo"]["max_seq_len"])
        except ValueError:
            continue
        est = max((x["hidden"] for x in layer_sizes(s.program, base)), default=1)
        ratios.append(est / m.mlp_hidden_size)
    assert len(ratios) >= 8 and all(0.5 <= r <= 2 for r in ratios), ratios


# --- the CLI ------------------------------------------------------------------------

def compile_cli(tmp_path, case, *extra, params=None):
    out = tmp_path / f"{case}.npz"
    args = [PY, "-m", "metamodels", "compile", str(CASES / f"{case}.py"), "--out", str(out),
            *extra]
    if params is not None:
        args += ["--params", str(params)]
    return run(args, ROOT, check=False), out


def _stderr(res) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if not ln.startswith("[threads]")]


def test_cli_verified_model_is_written(tmp_path):
    res, out = compile_cli(tmp_path, "case07_reverse")
    assert res.returncode == 0, res.stderr
    row = json.loads(str(S.load_npz(out)["meta_json"][0]))
    assert row["verification"]["passed"]
    assert "program = v4" in res.stdout


def test_cli_wrong_model_writes_nothing_unless_asked(tmp_path):
    res, out = compile_cli(tmp_path, "case03_numerical_negative_map")
    assert res.returncode == 1 and not out.exists()
    err = "\n".join(_stderr(res))
    assert "NOT VERIFIED" in err and "no model file written" in err
    assert "input: [1]   expected: [-2]   got: [0.0]" in err
    res, out = compile_cli(tmp_path, "case03_numerical_negative_map", "--keep-unverified")
    assert res.returncode == 1 and out.exists()
    arrays = S.load_npz(out)
    assert json.loads(str(arrays["meta_json"][0]))["verification"]["passed"] is False
    shard = json.loads(str(arrays["shard_json"][0]))
    assert shard["verified"] is False and "negative outputs" in shard["diagnosis"]["cause"]


@pytest.mark.parametrize("case,needle", [
    ("case13_cat_aggregate_default0", "Categorical aggregate only supports None"),
    ("field_cases", "is a directory"),
])
def test_cli_refusals_are_one_line(tmp_path, case, needle):
    if case == "field_cases":  # a directory given as PROGRAM
        out = tmp_path / "x.npz"
        res = run([PY, "-m", "metamodels", "compile", str(CASES), "--out", str(out)], ROOT,
                  check=False)
    else:
        res, out = compile_cli(tmp_path, case)
    err = _stderr(res)
    assert res.returncode == 2 and len(err) == 1 and needle in err[0], res.stderr
    assert "Traceback" not in res.stderr and not out.exists()


def test_cli_honours_compile_timeout(tmp_path, default_params):
    import yaml
    p = copy.deepcopy(default_params)
    p["compile"].update(timeout_s=1, memory_mb=1_000_000)  # past the size check: tracr runs
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(p))
    res, out = compile_cli(tmp_path, "case21_value_set_blowup", params=tmp_path / "p.yaml")
    err = _stderr(res)
    assert res.returncode == 2 and len(err) == 1, res.stderr
    assert "compile.timeout_s=1" in err[0] and not out.exists()


def test_min_compared_is_a_param(base):
    p = copy.deepcopy(base)
    p["verify"]["min_compared"] = 0.7  # case01 compares 63% of its positions
    out = compile_user_program(p, str(CASES / "case01_nested_cat_aggregate_none.py"), False)
    assert not out["result"]["verification"]["passed"]
    assert np.isclose(out["entry"]["none_fraction"], 6909 / 18555)


def test_a_canonical_program_that_computes_something_else_is_refused(base):
    """The guard behind 'never compile another program in the user's place'."""
    from metamodels.rasp import lambdas as L
    from metamodels.rasp.program import to_rasp
    from metamodels.zoo.stage import verification_inputs
    from metamodels.zoo.user_program import check_same_behaviour, load_program, to_canonical
    user = load_program(CASES / "case07_reverse.py")
    canon, _, _ = to_canonical(user, base)
    tables = L.Tables(base["sampler"]["map_constants"])
    inputs = verification_inputs(base)
    check_same_behaviour(user, to_rasp(canon, tables), inputs)  # its own canonical form: same
    other = load_program(CASES / "case12_cat_width_gt1_same_value.py")
    other_canon, _, _ = to_canonical(other, base)
    with pytest.raises(ProgramError, match="without changing what it computes"):
        check_same_behaviour(user, to_rasp(other_canon, tables), inputs)


def test_sampled_verification_reaches_the_widest_selectors(base, tmp_path):
    """On a sampled domain (5 tokens, length 16), random inputs almost never repeat one token
    ten times, where tracr's SelectorWidth MLP is too coarse; the structured inputs do."""
    prog = tmp_path / "hist.py"
    prog.write_text("from tracr.rasp import rasp\n"
                    "program = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, "
                    "rasp.Comparison.EQ))\n")
    out = compile_user_program(domain(base, [1, 2, 3, 4, 5], 16), str(prog), False)
    check = out["result"]["verification"]
    assert not check["exhaustive"] and not check["passed"]
    assert "SelectorWidth" in out["diagnosis"]["cause"]


def test_a_lambda_that_raises_is_named_with_its_input(base, tmp_path):
    prog = tmp_path / "raises.py"
    prog.write_text("from tracr.rasp import rasp\n"
                    "length = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, "
                    "rasp.Comparison.TRUE))\n"
                    "inv = rasp.Map(lambda x: 10 // (x - 3), length)\n"
                    "program = inv\n")
    with pytest.raises(ProgramError, match=r"`inv` .*raised ZeroDivisionError.* on x=3"):
        compile_user_program(base, str(prog), False)


def test_out_must_not_be_a_directory(base, tmp_path):
    from metamodels.zoo.stage import compile_file
    with pytest.raises(ProgramError, match="is a directory; --out names the model file"):
        compile_file(base, str(CASES / "case07_reverse.py"), str(tmp_path))


def test_a_row_pointing_outside_its_columns_is_a_file_error(base, tmp_path):
    from metamodels.rasp.tokenizer import Vocab
    from metamodels.zoo.stage import pack, row
    done = compile_user_program(base, str(CASES / "case07_reverse.py"), False)
    arrays = S.Arrays(tmp_path / "cut.npz", pack([done], Vocab.from_params(base)))
    arrays["weights"] = arrays["weights"][:100]
    with pytest.raises(S.FileFormatError, match="'weights_offsets' row 0 points outside"):
        row(arrays, 0)
