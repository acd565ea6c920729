"""What the participant report reads from a biomarker table: the left/right summary, the
fat-infiltration pattern, per-muscle flags and warnings, and each model's validity.

Pure table work (pandas in, plain rows out); the HTML is in the templates.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

#: Plausible ranges: outside them a muscle is flagged.
PLAUSIBLE = {"ff": 90.0, "water_t2_ms": (15.0, 80.0)}
SIDES = ("right", "left")


@dataclass(frozen=True)
class Metric:
    column: str
    title: str
    unit: str
    scale: float = 1.0
    digits: int = 1


#: The values read first, in this order; a column missing from the table is left out.
SUMMARY_METRICS = (
    Metric("ff_dixon_percent_mean", "FF Dixon", "%"),
    Metric("ff_mese_percent_mean", "FF MESE", "%"),
    Metric("water_t2_ms_mean", "water T2", "ms"),
    Metric("volume_ml", "volume", "ml"),
    Metric("imat_fraction", "IMAT", "%", 100.0),
    Metric("csa_max_mm2", "largest CSA", "cm²", 0.01, 2),
    Metric("seg_confidence", "segmentation confidence", "0–1", 1.0, 2),
)
#: Fat-fraction maps of the pattern chart, with their column titles.
PATTERN_MAPS = (("ff_dixon_percent_mean", "Dixon"), ("ff_mese_percent_mean", "MESE"))
#: Colour scale of the pattern chart: fixed, so charts of different participants compare.
PATTERN_RANGE_PERCENT = (0.0, 100.0)
PATTERN_COLOURMAP = "YlOrRd"
#: Accuracy targets of the segmentation models (docs/models.md) and the card entry that measures each.
VALIDITY_TARGETS = {
    "thigh": ("test_heldout_huashan_synthetic", 0.90, "held-out thigh Dice"),
    "calf": ("test_leave_one_leg_out_real", 0.80, "real calf leave-one-leg-out Dice"),
}


def muscle_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The muscle rows (not the whole-region row)."""
    return table[table["label"] > 0] if "label" in table else table


def _display_name(muscle: str) -> str:
    return muscle.replace("_", " ").capitalize()


def _abbreviation(abbreviation: str) -> str:
    return str(abbreviation).rsplit("_", 1)[0] if str(abbreviation).endswith(("_R", "_L")) else str(abbreviation)


def _value(row: pd.Series | None, column: str) -> float:
    if row is None or column not in row or pd.isna(row[column]):
        return float("nan")
    return float(row[column])


def muscle_flags(row: pd.Series) -> list[str]:
    """Short flags of one muscle row: absent, implausible values, the segmentation's own flag."""
    flags = []
    if "voxel_count" in row and row["voxel_count"] == 0:
        flags.append("absent")
    for column in [c for c in row.index if c.startswith("ff_") and c.endswith("_mean")]:
        if _value(row, column) > PLAUSIBLE["ff"]:
            flags.append(f"{dict(PATTERN_MAPS).get(column, column)} FF > {PLAUSIBLE['ff']:.0f} %")
    low, high = PLAUSIBLE["water_t2_ms"]
    t2 = _value(row, "water_t2_ms_mean")
    if np.isfinite(t2) and not low <= t2 <= high:
        flags.append(f"water T2 {t2:.0f} ms")
    if _value(row, "seg_flag") == 1:
        flags.append("segmentation flagged" + _why(row))
    return flags


def _why(row: pd.Series) -> str:
    """' (confidence 0.31: <seg_flag_reason>)' from the segmentation's columns that are present."""
    confidence = _value(row, "seg_confidence")
    reason = row.get("seg_flag_reason")
    parts = ([f"confidence {confidence:.2f}"] if np.isfinite(confidence) else []) + (
        [str(reason)] if isinstance(reason, str) and reason.strip() else [])
    return f" ({': '.join(parts)})" if parts else ""


def _side_rows(rows: pd.DataFrame) -> list[tuple[str, str, dict]]:
    """(muscle, abbreviation, {side: row}) in table order."""
    out: dict[str, tuple[str, dict]] = {}
    for _, row in rows.iterrows():
        muscle = str(row.get("muscle", row.get("name")))
        abbreviation, sides = out.setdefault(muscle, (_abbreviation(row.get("abbreviation", muscle)), {}))
        sides[str(row.get("side", "n/a"))] = row
    return [(m, a, s) for m, (a, s) in out.items()]


def _text(value: float, metric: Metric) -> str:
    return "–" if not np.isfinite(value) else f"{value * metric.scale:.{metric.digits}f}"


def left_right_summary(table: pd.DataFrame) -> dict:
    """Summary of one network's table: one row per muscle, each metric right then left, and the flags.

    Returns ``{"metrics": [Metric], "rows": [{"muscle", "abbreviation",
    "cells": [(right, left)], "flagged": [(right?, left?)], "flags": str}]}``.
    """
    rows = muscle_rows(table)
    metrics = [m for m in SUMMARY_METRICS if m.column in rows.columns]
    out = []
    for muscle, abbreviation, sides in _side_rows(rows):
        cells, flags = [], []
        for metric in metrics:
            cells.append(tuple(_text(_value(sides.get(side), metric.column), metric) for side in SIDES))
        for side in SIDES:
            if side in sides and (found := muscle_flags(sides[side])):
                flags.append(f"{side[0].upper()}: {', '.join(found)}")
        out.append({"muscle": _display_name(muscle), "abbreviation": abbreviation, "cells": cells,
                    "flags": "; ".join(flags), "flagged": bool(flags)})
    return {"metrics": metrics, "rows": out}


def _rgb_hex(rgba) -> str:
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgba[:3])


def ff_colour(value: float) -> tuple[str, str]:
    """Background and text colour of a pattern cell for ``value`` percent (grey when missing)."""
    if not np.isfinite(value):
        return "#e8e8e8", "#555555"
    low, high = PATTERN_RANGE_PERCENT
    rgba = matplotlib.colormaps[PATTERN_COLOURMAP]((np.clip(value, low, high) - low) / (high - low))
    luminance = 0.2126 * rgba[0] + 0.7152 * rgba[1] + 0.0722 * rgba[2]
    return _rgb_hex(rgba), "#000000" if luminance > 0.5 else "#ffffff"


def pattern_legend(steps: int = 6) -> dict:
    """CSS gradient and tick labels of the pattern colour scale."""
    low, high = PATTERN_RANGE_PERCENT
    values = np.linspace(low, high, steps)
    stops = ", ".join(f"{ff_colour(v)[0]} {100 * k / (steps - 1):.0f}%" for k, v in enumerate(values))
    return {"gradient": f"linear-gradient(to right, {stops})", "ticks": [f"{v:.0f}" for v in values]}


def fat_pattern(table: pd.DataFrame) -> dict | None:
    """Fat-infiltration pattern of one network: muscles x (map, side), coloured by mean fat fraction.

    Returns None when the table has no fat-fraction column.
    """
    rows = muscle_rows(table)
    maps = [(c, t) for c, t in PATTERN_MAPS if c in rows.columns and rows[c].notna().any()]
    if not maps:
        return None
    out = []
    for muscle, abbreviation, sides in _side_rows(rows):
        cells = []
        for column, _ in maps:
            for side in SIDES:
                value = _value(sides.get(side), column)
                background, text = ff_colour(value)
                cells.append({"value": value, "text": "–" if not np.isfinite(value) else f"{value:.0f}",
                              "background": background, "colour": text, "side": side, "map": column})
        out.append({"muscle": _display_name(muscle), "abbreviation": abbreviation, "cells": cells})
    return {"maps": [t for _, t in maps], "rows": out, "legend": pattern_legend()}


def table_warnings(table: pd.DataFrame, region: str) -> list[str]:
    """Warnings of one region's table: implausible values, muscles one network found and another did not,
    muscles the segmentation flagged."""
    warnings = []
    rows = muscle_rows(table)
    for column in [c for c in rows.columns if c.startswith("ff_") and c.endswith("_mean")]:
        for _, r in rows[rows[column] > PLAUSIBLE["ff"]].iterrows():
            warnings.append(f"{region}: {r.get('name', r.get('label'))} has mean {column} {r[column]:.1f} % (> 90 %)")
    low, high = PLAUSIBLE["water_t2_ms"]
    if "water_t2_ms_mean" in rows:
        odd = rows[(rows["water_t2_ms_mean"] < low) | (rows["water_t2_ms_mean"] > high)]
        for _, r in odd.iterrows():
            warnings.append(f"{region}: {r.get('name', r.get('label'))} has water T2 {r['water_t2_ms_mean']:.1f} ms "
                            "(outside 15-80 ms)")
    if {"network", "voxel_count", "name"} <= set(rows.columns):
        for name, group in rows.groupby("name", sort=False):
            found = sorted(group.loc[group["voxel_count"] > 0, "network"].astype(str))
            missing = sorted(group.loc[group["voxel_count"] == 0, "network"].astype(str))
            if missing:
                where = f"found by {', '.join(found)} but " if found else ""
                warnings.append(f"{region}: {name} {where}absent in {', '.join(missing)}")
    if "seg_flag" in rows:
        for _, r in rows[rows["seg_flag"] == 1].iterrows():
            net = f" ({r['network']})" if "network" in r else ""
            warnings.append(f"{region}: {r.get('name', r.get('label'))}{net} is flagged by the segmentation as "
                            f"unlikely to be right{_why(r)}; check its outline")
    return warnings


def model_validity(region: str, card: dict | None, name: str) -> tuple[str, bool]:
    """One sentence on how the model ``name`` of ``region`` measured against its accuracy target,
    from its card's ``validation``; and whether the target is met."""
    if card is None:
        return (f"{region}: model {name}: no model card found, so its accuracy is unknown; check every outline.",
                False)
    key, target, what = VALIDITY_TARGETS.get(region, (None, None, None))
    validation = card.get("validation", {}) or {}
    test = validation.get(key) if key else None
    phantom = validation.get("test_dice_phantom_t1w")
    phantom_text = f"; phantom T1w Dice {phantom:.3f}" if isinstance(phantom, (int, float)) else ""
    if isinstance(test, dict) and isinstance(test.get("dice_mean"), (int, float)):
        dice = float(test["dice_mean"])
        met = dice >= target
        verdict = "target met" if met else "target not reached: check every outline before using the numbers"
        return (f"{region}: model {name}: {what} {dice:.3f} against the target {target:.2f} "
                f"({verdict}){phantom_text}.", met)
    reason = test if isinstance(test, str) else "not measured"
    return (f"{region}: model {name}: {what} {reason} (target {target:.2f}){phantom_text}; "
            "check every outline before using the numbers.", False)
