"""README's table of model families is the newcomer's list of what the service trains: it names every
family in FAMILIES, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from trainer.families import FAMILIES

README = Path(__file__).resolve().parents[1] / "README.md"


def _family_table_names() -> list[str]:
    section = README.read_text(encoding="utf-8").split("## Model families", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.MULTILINE)


def test_readme_s_family_table_lists_every_family_once() -> None:
    names = _family_table_names()
    assert sorted(names) == sorted(FAMILIES), "README.md's '## Model families' table and FAMILIES differ"
