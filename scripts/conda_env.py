"""Write envs/metamodels.yaml from requirements.lock (same pins for conda users)."""

import pathlib

root = pathlib.Path(__file__).resolve().parents[1]
pins = [line.strip() for line in (root / "requirements.lock").read_text().splitlines()
        if line.strip() and not line.startswith("#")]
lines = ["# Conda environment for `snakemake --use-conda`: the same pins as requirements.lock.",
         "# Regenerate with: python scripts/conda_env.py",
         "name: metamodels", "channels:", "  - conda-forge", "dependencies:", "  - python=3.11",
         "  - pip", "  - pip:"] + [f"      - {p}" for p in pins] + [
    "      # this checkout's package (pip runs from envs/)", "      - --editable .."]
(root / "envs" / "metamodels.yaml").write_text("\n".join(lines) + "\n")
