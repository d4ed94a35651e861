"""Write the record of a measured default run from Snakemake's per-job benchmark files.

After a timed run such as ``time snakemake --cores 2 hparams`` from empty outputs:

    python benchmarks/default_run_record.py --what "..." --command "snakemake --cores 2 hparams" \
        --wall-s 1500 --jobs logs/benchmarks/hparam_zoo logs/benchmarks/hparams \
        --metrics results/metrics/hparams.json --out benchmarks/results/hparams_default_run.cpu.json

Per job (one ``.tsv`` each, Snakemake's ``benchmark:``): wall seconds, CPU seconds and peak RSS
(MB); per folder their sums; the metrics file is copied in whole, so the record holds both the
cost and the result of one run.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib


def job_rows(folder: pathlib.Path) -> dict[str, dict]:
    """``{job: {wall_s, cpu_s, max_rss_mb}}`` from every ``*.tsv`` in ``folder`` (last row)."""
    out = {}
    for tsv in sorted(folder.glob("*.tsv")):
        with tsv.open(newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows:
            raise ValueError(f"{tsv}: no benchmark row")
        r = rows[-1]
        out[tsv.stem] = {"wall_s": float(r["s"]), "cpu_s": float(r["cpu_time"]),
                         "max_rss_mb": float(r["max_rss"])}
    if not out:
        raise ValueError(f"{folder}: no *.tsv benchmark files (run the target first)")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--what", required=True, help="what was run, on which machine")
    ap.add_argument("--command", required=True)
    ap.add_argument("--wall-s", type=float, required=True, help="the whole run's wall seconds")
    ap.add_argument("--jobs", nargs="+", required=True, help="logs/benchmarks/ folders")
    ap.add_argument("--metrics", help="the run's metrics JSON, copied into the record")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    record = {"what": args.what, "command": args.command, "wall_total_s": args.wall_s}
    for folder in map(pathlib.Path, args.jobs):
        jobs = job_rows(folder)
        record[folder.name] = {
            "jobs": jobs,
            "sum_wall_s": round(sum(j["wall_s"] for j in jobs.values()), 1),
            "sum_cpu_s": round(sum(j["cpu_s"] for j in jobs.values()), 1),
            "max_rss_mb": max(j["max_rss_mb"] for j in jobs.values())}
    if args.metrics:
        record["metrics"] = json.loads(pathlib.Path(args.metrics).read_text())
    pathlib.Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
