"""What every figure shares: matplotlib without a display, and PDFs whose bytes depend only on
what was drawn (the papers' figures are drawn from files the pipeline wrote, never from
constants)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from metamodels.core import shards as S  # noqa: E402

__all__ = ["plt", "save_pdf"]


def save_pdf(fig, out: str) -> None:
    """Write ``fig`` to ``out`` (PDF) atomically and close it.

    Fixed metadata (no creation date): the same inputs give the same bytes.
    """
    with S.atomic_path(out) as tmp:
        fig.savefig(tmp, format="pdf", metadata={"CreationDate": None, "Producer": "metamodels"})
    plt.close(fig)
