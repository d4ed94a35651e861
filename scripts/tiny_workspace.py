"""The tiny pipeline workspace for scripts/slurm_test.sh (tests/tiny.py, no pytest).

    python scripts/tiny_workspace.py make DEST      # tiny_params() laid out by workspace()
    python scripts/tiny_workspace.py compare A B    # pipeline outputs of A and B, bit for bit

`compare` applies the rule of tests/test_pipeline.py's determinism test (tests/tiny.py
pipeline_outputs): every file under data/, models/ and results/, not logs/ (wall times,
per-job timings) nor work/ (training checkpoints). Exit status 1 on any difference.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.tiny import OUTPUT_DIRS, pipeline_outputs, tiny_params, workspace  # noqa: E402


def main(argv: list[str]) -> int:
    if argv[:1] == ["make"] and len(argv) == 2:
        dest = pathlib.Path(argv[1])
        dest.mkdir(parents=True, exist_ok=True)
        workspace(dest, tiny_params())
        print(f"tiny workspace: {dest}")
        return 0
    if argv[:1] == ["compare"] and len(argv) == 3:
        a, b = (pipeline_outputs(pathlib.Path(x)) for x in argv[1:])
        only = sorted(set(a) ^ set(b))
        differ = sorted(k for k in set(a) & set(b) if a[k] != b[k])
        print(f"compared {len(set(a) & set(b))} files under {', '.join(OUTPUT_DIRS)}/: "
              f"{len(differ)} differ, {len(only)} in one run only")
        for k in differ:
            print(f"  differs: {k}")
        for k in only:
            print(f"  only in {'the first' if k in a else 'the second'}: {k}")
        return 1 if differ or only or not a else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
