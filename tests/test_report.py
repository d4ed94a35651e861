"""Snakemake's report of the tiny pipeline: every figure and metric table, with its caption.

The outputs to report are those wrapped in ``report(...)`` in rules/*.smk, each with a caption in
report/*.rst; ``snakemake everything --report FILE.html`` (the README's command) must embed
every one of them (the same bytes as in results/), in its category, with its caption rendered,
plus the workflow description of report/workflow.rst. The report is written outside the
workspace's results/.
"""

from __future__ import annotations

import ast
import base64
import html
import json
import pathlib
import re

import pytest

from tests.tiny import ROOT, snakemake, tiny_params

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pipeline")]

FIGURES = ("results/figure3.pdf", "results/figure2.pdf", "results/figure_variants.pdf",
           "results/backdoor_heads.pdf", "results/figure4.pdf")
CATEGORIES = {"Decompiler", "Variants", "Backdoor detection", "Hyperparameter prediction",
              "Modular addition"}
WORKFLOW_RST = "report/workflow.rst"
DIRECTIVE = f'report: "{WORKFLOW_RST}"'


def report_flags(root: pathlib.Path = ROOT) -> dict[str, dict]:
    """path -> report() keyword arguments, for every ``report(...)`` in rules/*.smk."""
    flags = {}
    for smk in sorted((root / "rules").glob("*.smk")):
        text = smk.read_text()
        for m in re.finditer(r"(?<![\w.])report\(", text):
            depth, i = 0, m.end() - 1
            while True:
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                if depth == 0:
                    break
                i += 1
            call = ast.parse(text[m.start():i + 1], mode="eval").body
            path = ast.literal_eval(call.args[0])
            kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
            kw["caption"] = str((smk.parent / kw["caption"]).resolve().relative_to(root))
            flags[path] = kw
    return flags


def plain(text: str) -> str:
    """Visible text, whitespace collapsed: of an rst caption or of its rendered HTML."""
    text = html.unescape(re.sub(r"<[^>]+>", "", text)).replace("``", "")
    return " ".join(text.split())


def results_bytes(ws: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(ws)): p.read_bytes()
            for p in sorted((ws / "results").rglob("*")) if p.is_file()}


def js_var(page: str, name: str):
    """The JSON that report.html assigns to `name` in its own <script id=...> block."""
    script_id = name.replace("_", "-")
    m = re.search(rf'<script id="{script_id}">\s*var {name} = (.*?);\s*</script>', page, re.S)
    assert m, f"no <script id={script_id!r}> in report.html"
    return json.loads(m.group(1))


def make_report(ws: pathlib.Path, out: pathlib.Path) -> None:
    """`snakemake everything --report OUT` in the workspace (the README's command)."""
    assert DIRECTIVE in (ws / "Snakefile").read_text()
    snakemake(ws, "everything", "--report", str(out))


def test_every_report_output_has_a_caption_file():
    flags = report_flags()
    assert set(FIGURES) <= set(flags)
    assert {f["category"] for f in flags.values()} == CATEGORIES
    captions = {f["caption"] for f in flags.values()}
    for caption in captions:
        lines = (ROOT / caption).read_text().strip().splitlines()
        assert 2 <= len(lines) <= 6, caption
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / "report").glob("*.rst")}
    assert on_disk - captions == {WORKFLOW_RST}, "a caption file no rule uses"


def test_report_holds_every_result_with_its_caption(built, tmp_path):
    """The README's command: one self-contained HTML page, every reported file embedded."""
    flags = report_flags(built)
    before = results_bytes(built)
    out = tmp_path / "report.html"
    make_report(built, out)
    assert results_bytes(built) == before, "making the report changed results/"

    page = out.read_text()
    results = js_var(page, "results")
    categories = js_var(page, "categories")
    assert set(results) == set(flags)
    for path, flag in flags.items():
        res = results[path]
        head, _, payload = res["data_uri"].partition(";base64,")
        assert head.startswith("data:") and f"filename={pathlib.Path(path).name}" in head, path
        assert base64.b64decode(payload) == (built / path).read_bytes(), path
        assert path in categories[flag["category"]][flag["subcategory"]], path
        caption = (built / flag["caption"]).read_text()
        assert plain(caption) in plain(res["caption"]), path
        assert "system-message" not in res["caption"], res["caption"]
    assert set(categories) == CATEGORIES

    desc = js_var(page, "workflow_desc")
    assert "system-message" not in desc, desc
    p = tiny_params()
    for needle in ("Decompiler (seed 001 Fig. 3)", "Backdoor detection (seed 000 Fig. 2)",
                   f"program zoo seed {p['zoo']['seed']}, {p['zoo']['shards']} shards of "
                   f"{p['zoo']['programs_per_shard']} programs",
                   "variants " + ", ".join(p["variants"]["decompile"])):
        assert needle in plain(desc), (needle, plain(desc))
