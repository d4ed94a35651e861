"""What every verb of ``python -m metamodels`` shares, and the project-wide verbs.

Pipeline verbs take their parameters either from a params file (``--params
params.yaml``, the whole file) or as JSON sections (``--config '{...}'``, what
the Snakemake rules pass, so each rule's rerun trigger sees exactly the
parameters it uses). Each experiment's ``cli.py`` declares its verbs with a
``register(sub)`` function; imports of the stage code happen inside each
command, so ``--help`` and ``check-params`` start in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import sys

from metamodels.core import config as C


def params_of(args) -> dict:
    """The params a verb runs with: ``--config`` JSON sections (validated) or ``--params``."""
    if args.config is not None:
        params = json.loads(args.config)
        C.validate_partial(params, "--config")
        return params
    return C.load(args.params)


def add_params(p: argparse.ArgumentParser) -> None:
    """Give a verb the ``--params FILE`` / ``--config JSON`` pair read by :func:`params_of`."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    g.add_argument("--config", help="JSON object with the params sections this verb needs")


def file_errors() -> tuple[type[Exception], ...]:
    """The ``expected`` errors of verbs that read a user's own file (``compile``,
    ``decompile``): a wrong or missing file is reported in one line, exit 2."""
    return (ValueError, FileNotFoundError)


# OSErrors that say a path is wrong (missing, a directory, ...), whichever verb meets them.
PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
               FileExistsError)


def file_error_line(e: BaseException) -> str | None:
    """One line, ``FILE: what is wrong``, for an error every verb reports without a traceback:
    a file that is missing, unreadable or in the wrong format (``shards.FileFormatError``,
    raised by every reader: ``shards.load_npz``, ``shards.read_json``) or an OSError on a named
    path. None for anything else (the verb's own ``expected`` errors, or a bug)."""
    shards = sys.modules.get("metamodels.core.shards")  # loaded if it raised (NumPy: lazily)
    if shards is not None and isinstance(e, shards.FileFormatError):
        return str(e)
    if isinstance(e, PATH_ERRORS) and e.filename is not None:
        from metamodels.core.shards import os_error_text
        return f"{e.filename}: {os_error_text(e)}"
    return None


def cmd_check_params(args) -> None:
    C.load(args.params)
    print(f"{args.params}: valid")


def cmd_dvc_yaml(args) -> None:
    from metamodels.core import versioning
    extra = ["--configfile", args.configfile] if args.configfile else []
    versioning.write(args.out, ".", extra)
    print(f"[dvc-yaml] wrote {args.out}", file=sys.stderr)


def cmd_dvc_stages(args) -> None:
    from metamodels.core import versioning
    found = versioning.stages(".", args.which)
    items = sorted({p for outs in found.values() for p in outs}) if args.outputs else sorted(found)
    print("\n".join(items))


def register(sub) -> None:
    """Declare the project-wide verbs: check-params, dvc-yaml, dvc-stages."""
    p = sub.add_parser("check-params", help="validate a params file against the schema")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=cmd_check_params)

    p = sub.add_parser("dvc-yaml", help="generate dvc.yaml from the Snakemake DAG")
    p.add_argument("--out", default="dvc.yaml")
    p.add_argument("--configfile", help="params file the DAG is built from (default params.yaml)")
    p.set_defaults(func=cmd_dvc_yaml)

    p = sub.add_parser("dvc-stages", help="list dvc.yaml stages that are built or locked")
    p.add_argument("which", choices=["built", "locked"])
    p.add_argument("--outputs", action="store_true", help="print their outputs instead")
    p.set_defaults(func=cmd_dvc_stages)
