"""What the participant report reads from a biomarker table: warnings, flags, the left/right
summary, the fat-infiltration pattern and each model's validity."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bids_muscle.reports import summary
from bids_muscle.seg.zoo import find_card


def _table(**extra) -> pd.DataFrame:
    return pd.DataFrame({
        "label": [0, 1, 2, 3, 1, 2, 3],
        "name": ["whole_region", "sartorius_right", "gracilis_right", "vastus_lateralis_right",
                 "sartorius_right", "gracilis_right", "vastus_lateralis_right"],
        "network": ["unet2d", "unet2d", "unet2d", "unet2d", "hrnet", "hrnet", "hrnet"],
        "voxel_count": [900, 300, 0, 600, 310, 120, 590],
        "ff_mese_percent_mean": [20.0, 95.0, float("nan"), 5.0, 94.0, 4.0, 5.0],
        "water_t2_ms_mean": [33.0, 33.0, float("nan"), 12.0, 33.0, 31.0, 34.0],
        **extra,
    })


def test_implausible_values_and_absent_muscles_are_flagged():
    warnings = summary.table_warnings(_table(), "thigh")
    assert sum("sartorius_right has mean ff_mese_percent_mean" in w for w in warnings) == 2
    assert any("vastus_lateralis_right has water T2 12.0 ms" in w for w in warnings)
    assert "thigh: gracilis_right found by hrnet but absent in unet2d" in warnings
    assert not any("whole_region" in w for w in warnings)
    assert len(warnings) == 4


def test_the_segmentation_flag_is_a_warning_when_present():
    table = _table(seg_confidence=[1.0, 0.9, 0.0, 0.31, 0.9, 0.8, 0.9], seg_flag=[0, 0, 1, 1, 0, 0, 0])
    warnings = summary.table_warnings(table, "thigh")
    assert ("thigh: vastus_lateralis_right (unet2d) is flagged by the segmentation as unlikely to be right "
            "(confidence 0.31); check its outline") in warnings
    assert len(warnings) == 6  # the four above, and the absent gracilis flagged too
    flags = summary.muscle_flags(table.iloc[3])
    assert flags == ["water T2 12 ms", "segmentation flagged (confidence 0.31)"]
    reason = table.assign(seg_flag_reason=["", "", "", "outside the other networks' labels", "", "", ""])
    assert summary.muscle_flags(reason.iloc[3])[-1] == (
        "segmentation flagged (confidence 0.31: outside the other networks' labels)")


def test_plausible_table_gives_no_warning():
    table = pd.DataFrame({"label": [1, 2], "name": ["soleus_right", "soleus_left"], "network": ["unet2d"] * 2,
                          "voxel_count": [500, 480], "ff_mese_percent_mean": [6.0, 7.0],
                          "water_t2_ms_mean": [31.0, 32.0]})
    assert summary.table_warnings(table, "calf") == []


def _two_sided() -> pd.DataFrame:
    return pd.DataFrame({
        "label": [41, 42, 61, 62, 0],
        "name": ["gastrocnemius_medialis_right", "soleus_right", "gastrocnemius_medialis_left", "soleus_left",
                 "whole_region"],
        "abbreviation": ["GM_R", "SOL_R", "GM_L", "SOL_L", "ALL"],
        "muscle": ["gastrocnemius_medialis", "soleus", "gastrocnemius_medialis", "soleus", "whole_region"],
        "side": ["right", "right", "left", "left", "both"],
        "voxel_count": [100, 200, 110, 0, 410],
        "volume_ml": [10.0, 20.0, 11.0, 0.0, 41.0],
        "ff_dixon_percent_mean": [5.0, 40.0, 7.5, np.nan, 20.0],
        "imat_fraction": [0.05, 0.2, 0.1, np.nan, 0.1],
        "csa_max_mm2": [1234.0, 2000.0, 1300.0, 0.0, 4000.0],
    })


def test_left_right_summary_puts_the_sides_of_a_muscle_on_one_row():
    result = summary.left_right_summary(_two_sided())
    assert [m.column for m in result["metrics"]] == ["ff_dixon_percent_mean", "volume_ml", "imat_fraction", "csa_max_mm2"]
    rows = {r["abbreviation"]: r for r in result["rows"]}
    assert set(rows) == {"GM", "SOL"}  # one row per muscle, the whole region left out
    assert rows["GM"]["cells"] == [("5.0", "7.5"), ("10.0", "11.0"), ("5.0", "10.0"), ("12.34", "13.00")]
    assert rows["SOL"]["cells"][0] == ("40.0", "–") and rows["SOL"]["flags"] == "L: absent"
    assert not rows["GM"]["flagged"] and rows["SOL"]["flagged"]


def test_fat_pattern_colours_follow_the_fat_fraction():
    pattern = summary.fat_pattern(_two_sided())
    assert pattern["maps"] == ["Dixon"]
    cells = [c for row in pattern["rows"] for c in row["cells"]]
    assert [(c["side"], c["text"]) for c in cells] == [("right", "5"), ("left", "8"), ("right", "40"), ("left", "–")]
    brightness = [sum(int(c["background"][k:k + 2], 16) for k in (1, 3, 5)) for c in cells]
    assert brightness[0] > brightness[1] > brightness[2]  # more fat, darker
    assert cells[3]["background"] == "#e8e8e8"  # no value: grey
    assert summary.fat_pattern(_two_sided().drop(columns="ff_dixon_percent_mean")) is None


def test_model_validity_reads_the_card_against_the_region_target():
    calf = json.loads(find_card("calf_unet2d").read_text())
    text, met = summary.model_validity("calf", calf, "calf_unet2d")
    dice = calf["validation"]["test_leave_one_leg_out_real"]["dice_mean"]
    assert f"real calf leave-one-leg-out Dice {dice:.3f} against the target 0.80" in text
    assert met == (dice >= 0.80)
    good = {"validation": {"test_heldout_huashan_synthetic": {"dice_mean": 0.93}}}
    assert summary.model_validity("thigh", good, "x") == (
        "thigh: model x: held-out thigh Dice 0.930 against the target 0.90 (target met).", True)
    untested = {"validation": {"test_leave_one_leg_out_real": "not run for HRNet"}}
    text, met = summary.model_validity("calf", untested, "calf_hrnet")
    assert "not run for HRNet" in text and not met
    assert summary.model_validity("calf", None, "mine")[1] is False


def _relative_luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[k:k + 2], 16) / 255 for k in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


@pytest.mark.parametrize("value", [0.0, 25.0, 50.0, 75.0, 100.0, 150.0, float("nan")])
def test_pattern_numbers_keep_a_readable_contrast(value):
    background, text = summary.ff_colour(value)
    light, dark = sorted((_relative_luminance(background), _relative_luminance(text)), reverse=True)
    assert (light + 0.05) / (dark + 0.05) >= 4.5  # WCAG AA for normal text
