"""Every verb reports a wrong input file in one line (``error: FILE: what is wrong``), exit 2:
missing, a directory, truncated, not an .npz, a column missing or not parsing. Never a
traceback, never numpy's advice to load with ``allow_pickle``.

The four field cases (tests/data/field_cases/, copied from users' reports): trunc.npz and
trunc_model.npz (cut-off zips), text.npz (a text file), badlayout.npz (a zoo file whose
``layout_json`` is not JSON)."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from metamodels.core import shards as S
from tests.decompiler.tiny_files import build

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIELD = ROOT / "tests" / "data" / "field_cases"

pytestmark = [pytest.mark.xdist_group("decompile_checks"),
              pytest.mark.usefixtures("no_thread_limit")]

# field case -> what the one line must say about it
CASES = {"trunc.npz": "truncated", "trunc_model.npz": "truncated",
         "text.npz": "not an .npz", "badlayout.npz": "column 'layout_json' is not valid JSON"}


@pytest.fixture(scope="module")
def files(tmp_path_factory, default_params):
    return build(tmp_path_factory, default_params)


def one_line_error(code: int, err: str, path) -> str:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {path}: "), err
    assert "Traceback" not in err and "allow_pickle" not in err, err
    return lines[0]


def cli(args: list[str], capsys) -> tuple[int, str]:
    from metamodels.__main__ import main
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(CASES))
def test_field_case_as_decompile_weights(name, files):
    """As a user runs it: `python -m metamodels decompile FILE` (its own process)."""
    path = FIELD / name
    res = subprocess.run([sys.executable, "-m", "metamodels", "decompile", str(path),
                          "--model", str(files["model"])], capture_output=True, text=True,
                         cwd=ROOT, check=False)
    assert CASES[name] in one_line_error(res.returncode, res.stderr, path)
    assert res.stdout == ""


@pytest.mark.parametrize("name", sorted(CASES))
def test_field_case_as_decompiler_model_and_in_other_verbs(name, files, tmp_path, capsys):
    path = FIELD / name
    code, err = cli(["decompile", files["weights"], "--model", path], capsys)
    line = one_line_error(code, err, path)
    assert CASES[name] in line and "snakemake models/decompiler.npz" in line
    code, err = cli(["show", path], capsys)
    assert CASES[name] in one_line_error(code, err, path)
    code, err = cli(["split", "--params", ROOT / "params.yaml", "--inputs", path,
                     files["weights"], "--vocab", files["vocab"], "--outdir", tmp_path / "ds"],
                    capsys)
    assert CASES[name] in one_line_error(code, err, path)
    assert not (tmp_path / "ds").exists()


def test_missing_decompiler_says_how_to_build_it(files, tmp_path, capsys):
    model = tmp_path / "models" / "decompiler.npz"
    code, err = cli(["decompile", files["weights"], "--model", model], capsys)
    line = one_line_error(code, err, model)
    assert "no such file" in line and "snakemake models/decompiler.npz" in line


def _bad_files(files, d: pathlib.Path) -> dict[str, tuple[pathlib.Path, str]]:
    """Other files of the same kinds as the field cases: path, what the line must say."""
    weights = S.load_npz(files["weights"])
    out = {"missing": (d / "nothere.npz", "no such file"),
           "directory": (d, "is a directory"),
           "empty": (d / "empty.npz", "empty file"),
           "npy": (d / "array.npz", "not an .npz"),
           "no_column": (d / "nolayout.npz", "no 'layout_json' column"),
           "json_not_text": (d / "jsonint.npz", "column 'meta_json' should hold JSON text"),
           "broken_member": (d / "crc.npz", "column 'weights' is truncated or corrupt")}
    (d / "empty.npz").write_bytes(b"")
    with open(d / "array.npz", "wb") as f:
        np.save(f, np.arange(3))
    S.save_npz(d / "nolayout.npz", {k: v for k, v in weights.items() if k != "layout_json"})
    S.save_npz(d / "jsonint.npz", dict(weights, meta_json=np.array([1])))
    # one member's compressed bytes damaged, the zip directory intact
    shutil.copy(files["weights"], d / "crc.npz")
    with zipfile.ZipFile(d / "crc.npz") as z:
        info = z.getinfo("weights.npy")
    data = bytearray((d / "crc.npz").read_bytes())
    start = info.header_offset + 30 + len(info.filename) + 40
    data[start:start + 64] = bytes(64)
    (d / "crc.npz").write_bytes(bytes(data))
    return out


def test_other_bad_files_in_decompile_and_show(files, tmp_path, capsys):
    for kind, (path, says) in _bad_files(files, tmp_path).items():
        code, err = cli(["decompile", path, "--model", files["model"]], capsys)
        assert says in one_line_error(code, err, path), kind
        if kind != "no_column":  # show needs no layout
            code, err = cli(["show", path], capsys)
            assert says in one_line_error(code, err, path), kind


def test_every_reader_reports_bad_files(files, tmp_path, capsys):
    """Other verbs' readers (load_npz, read_json) and a missing vocab: one line each."""
    params = ROOT / "params.yaml"
    trunc, text, bad = FIELD / "trunc.npz", FIELD / "text.npz", FIELD / "badlayout.npz"
    out = tmp_path / "out"
    runs = [
        (trunc, ["train-decompiler", "--params", params, "--train", trunc, "--val", trunc,
                 "--vocab", files["vocab"], "--model", out / "m.npz", "--history", out / "h",
                 "--curve", out / "c", "--workdir", out / "w"]),
        (bad, ["train-decompiler", "--params", params, "--train", files["weights"], "--val",
               bad, "--vocab", files["vocab"], "--model", out / "m.npz", "--history", out / "h",
               "--curve", out / "c", "--workdir", out / "w"]),
        (text, ["evaluate-decompiler", "--params", params, "--model", text, "--test",
                files["weights"], "--metrics", out / "m", "--predictions", out / "p",
                "--reference", out / "r"]),
        (bad, ["make-variant", "--params", params, "--variant", "pca", "--split", "test",
               "--shard", "0", "--input", bad, "--out", out / "v.npz"]),
        (trunc, ["figure-variants", "--metrics", trunc, "--out", out / "f.pdf"]),
        (tmp_path / "none.json", ["figure3", "--history", tmp_path / "none.json",
                                  "--metrics", tmp_path / "none.json", "--out", out / "f.pdf"]),
        (tmp_path / "vocab.json", ["split", "--params", params, "--inputs", files["weights"],
                                   "--vocab", tmp_path / "vocab.json", "--outdir", out]),
    ]
    (tmp_path / "bad.json").write_text("{not json")
    runs.append((tmp_path / "bad.json", ["figure3", "--history", tmp_path / "bad.json",
                                         "--metrics", tmp_path / "bad.json", "--out", out / "f"]))
    for path, args in runs:
        code, err = cli(args, capsys)
        one_line_error(code, err, path)
    assert not out.exists()


def test_good_file_loads_and_missing_columns_name_the_file(files):
    arrays = S.load_npz(files["weights"])
    assert json.loads(str(arrays["layout_json"][0]))[0]["name"] == "token_embed/embeddings"
    with pytest.raises(S.FileFormatError, match=r"weights\.npz: no 'nope' column") as e:
        arrays["nope"]
    assert e.value.column == "nope" and isinstance(e.value, ValueError)
    with pytest.raises(S.FileFormatError, match="no 'nope' column"):
        S.load_npz(files["weights"], keys=["length", "nope"])
