"""Rows of a zoo-format shard (docs/data-formats.md), without importing tracr or JAX: what
the ``tokenize`` stage and other light readers need."""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

from metamodels.core import shards as S


def shard_programs(arrays: Mapping[str, np.ndarray]) -> int:
    return int(arrays["length"].shape[0])


def row(arrays: Mapping[str, np.ndarray], i: int) -> dict[str, Any]:
    """One program of a loaded shard as a dict (tokens, weights, layout, meta...).

    Raises shards.FileFormatError when the row's offsets point outside its columns."""
    t0, t1 = arrays["tokens_offsets"][i:i + 2]
    w0, w1 = arrays["weights_offsets"][i:i + 2]
    for name, (a, b), column in (("tokens", (t0, t1), "tokens_offsets"),
                                 ("weights", (w0, w1), "weights_offsets")):
        if not 0 <= a <= b <= arrays[name].size:
            raise S.FileFormatError(getattr(arrays, "path", "<arrays>"), f"column '{column}' row "
                                    f"{i} points outside '{name}' (truncated or damaged file)",
                                    column)
    return {"tokens": arrays["tokens"][t0:t1], "weights": arrays["weights"][w0:w1],
            "program": json.loads(str(arrays["program_json"][i])),
            "source": str(arrays["source"][i]),
            "layout": json.loads(str(arrays["layout_json"][i])),
            "meta": json.loads(str(arrays["meta_json"][i]))}
