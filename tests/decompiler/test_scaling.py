"""The decompiler-scaling records (benchmarks/decompiler_scaling.py): equal-steps and
equal-CPU-time comparisons, and the figure drawn from them."""

from __future__ import annotations

import json

import pytest

from metamodels.decompiler import scaling as SC


def _record(n, model, cpu_per_100, accs, residual=0.0, value_tables=False, exact=0.1):
    curve = [dict(step=100 * (i + 1), cpu_s=cpu_per_100 * (i + 1), val_token_accuracy=a,
                  val_exact_accuracy=a / 10) for i, a in enumerate(accs)]
    return dict(train_programs=n, model=model, residual_supervision=residual,
                value_tables=value_tables, steps=100 * len(accs), batch_size=32,
                val_programs=50, test_programs=40, parameters=10_000 if model == "small"
                else 100_000, curve=curve, train_cpu_s=curve[-1]["cpu_s"],
                test_token_accuracy=accs[-1], test_exact_accuracy=exact,
                test_verified_accuracy=2 * exact, device="CPU (2 cores)", date="2026-12-08")


@pytest.fixture
def records(tmp_path):
    recs = [_record(1000, "small", 10, [0.5, 0.6, 0.65, 0.7]),
            _record(1000, "default", 40, [0.6, 0.7, 0.75, 0.8]),
            _record(1000, "default", 40, [0.6, 0.72, 0.78, 0.82], residual=1.0),
            _record(4000, "small", 10, [0.5, 0.62, 0.7, 0.74]),
            _record(4000, "default", 40, [0.6, 0.74, 0.8, 0.86], exact=0.2),
            _record(4000, "default", 44, [0.6, 0.75, 0.82, 0.9], value_tables=True)]
    path = tmp_path / "scaling.jsonl"
    # an older measurement of one run first: the newer line replaces it
    lines = [json.dumps(_record(1000, "small", 10, [0.1, 0.1, 0.1, 0.1]))]
    path.write_text("\n".join(lines + [json.dumps(r) for r in recs]) + "\n")
    return path


def test_equal_steps_and_equal_cpu_time(records):
    rows = SC.summary(SC.load(str(records)))
    assert [r["train_programs"] for r in rows] == [1000, 4000]
    small, default = rows[0]["small"], rows[0]["default"]
    assert small["val_token_accuracy_equal_steps"] == 0.7      # the newer record of the run
    assert default["val_token_accuracy_equal_steps"] == 0.8
    # equal CPU time: the cheapest run's 40 CPU-s are the default model's first evaluation
    assert rows[0]["equal_cpu_s"] == 40
    assert default["val_token_accuracy_equal_cpu"] == 0.6
    assert small["val_token_accuracy_equal_cpu"] == 0.7
    assert set(rows[0]) >= {"default+residual1"} and set(rows[1]) >= {"default+value_tables"}


def test_the_figure_is_drawn_and_an_empty_file_is_refused(records, tmp_path):
    out = tmp_path / "scaling.pdf"
    SC.figure(str(records), str(out))
    assert out.read_bytes()[:5] == b"%PDF-"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no records; run benchmarks/decompiler_scaling.py"):
        SC.load(str(empty))
