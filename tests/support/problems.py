"""Reading the problems a refused upload lists."""

from __future__ import annotations

from api.services.ingest import Problem


def where(problems: list[Problem]) -> set[tuple[int | None, str | None]]:
    """The (row, field) each problem names."""
    return {(p.row, p.field) for p in problems}
