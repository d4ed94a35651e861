"""`decompile` warns when the input model's stored verification failed or is missing (it is then
not a faithful compilation of a RASP program), and refuses a model from another input domain
than the decompiler's training domain unless --force (then it warns)."""

from __future__ import annotations

import numpy as np
import pytest

from metamodels.core import shards as S
from metamodels.decompiler import stage as decompiler
from metamodels.zoo.stage import row
from tests.decompiler.tiny_files import build

pytestmark = [pytest.mark.xdist_group("decompile_checks"),
              pytest.mark.usefixtures("no_thread_limit")]

FAITHFUL = "not a faithful compilation of a RASP program"


@pytest.fixture(scope="module")
def files(tmp_path_factory, default_params):
    return build(tmp_path_factory, default_params)


@pytest.fixture()
def quick_decoding(monkeypatch, files):
    """The beam search replaced by one candidate, the file's own program (the checks come
    before it); the verified search then checks it against the model for real."""
    from metamodels.decompiler.train import Trainer
    arrays = S.load_npz(files["weights"])
    ids = np.zeros((1, 32), np.int32)
    tokens = row(arrays, 0)["tokens"]
    ids[0, :len(tokens)] = tokens

    def ranked(self, params, ex, *a, **k):
        return {i: (ids, np.zeros(1)) for i in range(len(ex))}
    monkeypatch.setattr(Trainer, "ranked", ranked)


def cli(args, capsys) -> tuple[int, str, str]:
    from metamodels.__main__ import main
    code = main(["decompile", *[str(a) for a in args]])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_failed_verification_warns_and_still_decompiles(files, capsys):
    """End to end (real decoding with the tiny untrained decompiler)."""
    code, out, err = cli([files["unverified"], "--model", files["model"]], capsys)
    assert code == 0 and "from tracr.rasp import rasp" in out and "program = v" in out
    # the untrained decompiler's candidates are checked against the model; what it prints
    # says which it is, and only a checked program is called verified
    first = out.splitlines()[0]
    assert first.startswith(("# VERIFIED: ", "# UNVERIFIED best guess: "))
    (line,) = err.strip().splitlines()
    assert line.startswith(f"warning: {files['unverified']}: its stored verification failed")
    assert "7 of" in line and FAITHFUL in line


def test_missing_or_marked_verification_warns(files, tmp_path, capsys, quick_decoding):
    code, out, err = cli([files["unmarked"], "--model", files["model"]], capsys)
    assert code == 0 and "program = v1" in out
    assert "no stored verification" in err and FAITHFUL in err
    # compile --keep-unverified marks the file (shard_json "verified": false)
    arrays = dict(S.load_npz(files["weights"]))
    arrays["shard_json"] = S.text_array([S.dumps_json({"verified": False})])
    S.save_npz(tmp_path / "marked.npz", arrays)
    code, out, err = cli([tmp_path / "marked.npz", "--model", files["model"]], capsys)
    assert code == 0 and "marked unverified" not in out and FAITHFUL in err


def test_verified_model_of_the_training_domain_decompiles_silently(files, capsys,
                                                                    quick_decoding):
    code, out, err = cli([files["weights"], "--model", files["model"]], capsys)
    assert (code, err) == (0, "")
    assert "rasp.Map(lambda x: x + 1, rasp.tokens" in out
    head = out.splitlines()[:3]
    assert head[0].startswith("# VERIFIED: this program's outputs equal the model's on the "
                              "whole input domain")
    assert head[1].startswith("# candidate 1 of 1") and "bitwise identical" in head[2]


def test_unverified_program_is_printed_as_such(files, capsys, monkeypatch):
    """A candidate that is not what the weights compute is printed as a best guess."""
    from metamodels.decompiler.train import Trainer
    _, _, vocab, _ = decompiler.load_model(str(files["model"]))
    wrong = "BOS EOL v1 categorical Map x+2 tokens EOO EOL EOS".split()
    ids = np.zeros((1, 32), np.int32)
    ids[0, :len(wrong)] = [vocab.index[t] for t in wrong]
    monkeypatch.setattr(Trainer, "ranked",
                        lambda self, params, ex, *a, **k: {0: (ids, np.zeros(1))})
    code, out, err = cli([files["weights"], "--model", files["model"], "--candidates", "1"],
                         capsys)
    assert (code, err) == (0, "")
    assert out.startswith("# UNVERIFIED best guess: no candidate's outputs equal the model's")
    assert "VERIFIED:" not in out and "x + 2" in out


def test_other_domain_is_refused_unless_forced(files, capsys, quick_decoding):
    code, out, err = cli([files["other_domain"], "--model", files["model"]], capsys)
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: {files['other_domain']}: ")
    assert "vocab [1, 2], max_seq_len 5" in line and "vocab [1, 2, 3], max_seq_len 4" in line
    assert "--force" in line
    code, out, err = cli([files["other_domain"], "--model", files["model"], "--force"], capsys)
    assert code == 0 and "program = v1" in out
    (line,) = err.strip().splitlines()
    assert line.startswith(f"warning: {files['other_domain']}: ")
    assert "vocab [1, 2], max_seq_len 5" in line and "--force" in line


def test_input_domain_is_read_off_the_model(files):
    for key, domain in (("weights", {"vocab": [1, 2, 3], "max_seq_len": 4}),
                        ("other_domain", {"vocab": [1, 2], "max_seq_len": 5})):
        r = row(S.load_npz(files[key]), 0)
        got = decompiler.input_domain(r["meta"], r["layout"])
        assert sorted(got["vocab"]) == domain["vocab"]
        assert got["max_seq_len"] == domain["max_seq_len"]
    # a stored domain wins
    assert decompiler.input_domain({"domain": {"vocab": [7], "max_seq_len": 2}}, []) == \
        {"vocab": [7], "max_seq_len": 2}
    assert decompiler.input_domain({}, []) is None
