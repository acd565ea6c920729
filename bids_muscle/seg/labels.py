"""Muscle label tables.

Each region (``thigh``, ``calf``) has one table in ``bids_muscle/data/labels``
with a stable integer index per muscle and side, a snake_case name with the
side, a short abbreviation, the muscle name without side, the side and a
display colour. Right-side muscles take the lower block of indices
(thigh 1-20, calf 41-60), left-side muscles the upper block (thigh 21-40,
calf 61-80), so one label map can hold both legs of both regions without
collisions.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

REGIONS = ("thigh", "calf")
SIDES = ("right", "left")


@dataclass(frozen=True)
class Label:
    index: int
    name: str
    abbreviation: str
    muscle: str
    side: str
    color: str


@lru_cache(maxsize=None)
def load_label_table(region: str) -> tuple[Label, ...]:
    """Return the label table of ``region`` as a tuple of :class:`Label`."""
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}; expected one of {REGIONS}")
    text = resources.files("bids_muscle.data.labels").joinpath(f"{region}.tsv").read_text()
    rows = csv.DictReader(text.splitlines(), delimiter="\t")
    return tuple(
        Label(int(r["index"]), r["name"], r["abbreviation"], r["muscle"], r["side"], r["color"])
        for r in rows
    )


def muscle_names(region: str) -> tuple[str, ...]:
    """Muscle names without side, in table order, for ``region``."""
    seen: dict[str, None] = {}
    for label in load_label_table(region):
        seen.setdefault(label.muscle, None)
    return tuple(seen)


def label_index(region: str, muscle: str, side: str) -> int:
    """Integer label of ``muscle`` on ``side`` in ``region``."""
    for label in load_label_table(region):
        if label.muscle == muscle and label.side == side:
            return label.index
    raise KeyError(f"no label for {muscle!r} ({side}) in the {region} table")


def mirror_index(region: str, index: int) -> int:
    """Label of the same muscle on the other side."""
    by_index = {lab.index: lab for lab in load_label_table(region)}
    lab = by_index[index]
    other = "left" if lab.side == "right" else "right"
    return label_index(region, lab.muscle, other)


def dseg_tsv_text(region: str) -> str:
    """BIDS ``dseg.tsv`` text (index, name, abbreviation, color) for ``region``."""
    lines = ["index\tname\tabbreviation\tcolor"]
    lines += [f"{lab.index}\t{lab.name}\t{lab.abbreviation}\t{lab.color}" for lab in load_label_table(region)]
    return "\n".join(lines) + "\n"
