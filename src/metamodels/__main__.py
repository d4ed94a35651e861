"""Command line: ``python -m metamodels VERB ...`` — one verb per pipeline stage.

Each experiment declares its own verbs in its ``cli.py`` (``register(sub)``); this
module only assembles them, in the order of the DAG, keeps every verb's process to
the threads its rule declares (:mod:`metamodels.core.threads`, before NumPy or JAX
loads), points JAX at its persistent compilation cache (:mod:`metamodels.core.jaxcache`),
and turns the failures a user can fix (bad params, missing data, a wrong
input file) into one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys

from metamodels.backdoor import cli as backdoor
from metamodels.core import cli as core
from metamodels.core import config as C
from metamodels.core import jaxcache
from metamodels.core import threads
from metamodels.decompiler import cli as decompiler
from metamodels.hparams import cli as hparams
from metamodels.modadd import cli as modadd
from metamodels.variants import cli as variants
from metamodels.zoo import cli as zoo

EXPERIMENTS = (zoo, decompiler, variants, backdoor, hparams, modadd, core)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="metamodels", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    for experiment in EXPERIMENTS:
        experiment.register(sub)
    args = ap.parse_args(argv)
    try:
        n_threads = threads.wanted(getattr(args, "config", None))
        limited = threads.limit(n_threads)
        jaxcache.export()  # JAX's persistent compilation cache, per thread-pool size
        args.func(args)
    except C.ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        # A file a verb reads that is missing or malformed (any verb), or an error the verb's
        # `expected` names, is the user's to fix: one line, exit 2. Anything else is a bug.
        line = core.file_error_line(e)
        if line is None:
            if not isinstance(e, getattr(args, "expected", tuple)()):
                raise
            line = str(e)
        print(f"error: {line}", file=sys.stderr)
        return 2
    if limited:
        c = threads.census()
        print(f"[threads] kept to {n_threads}: XLA CPU pool "
              f"{c.get('xla_pool', '- (JAX not loaded)')}, BLAS/OpenMP {c.get('blas', '-')}; "
              f"{c.get('os', '?')} OS threads in all", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
