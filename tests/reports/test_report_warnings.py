"""Warnings the participant report derives from the biomarker table."""

from __future__ import annotations

import pandas as pd

from bids_muscle.reports.participant import _warnings_from_table


def test_implausible_values_and_absent_muscles_are_flagged():
    table = pd.DataFrame({
        "label": [0, 1, 2, 3, 1, 2, 3],
        "name": ["whole_region", "sartorius_r", "gracilis_r", "vastus_lateralis_r",
                 "sartorius_r", "gracilis_r", "vastus_lateralis_r"],
        "network": ["unet2d", "unet2d", "unet2d", "unet2d", "hrnet", "hrnet", "hrnet"],
        "voxel_count": [900, 300, 0, 600, 310, 120, 590],
        "ff_mese_percent_mean": [20.0, 95.0, float("nan"), 5.0, 94.0, 4.0, 5.0],
        "water_t2_ms_mean": [33.0, 33.0, float("nan"), 12.0, 33.0, 31.0, 34.0],
    })
    warnings = _warnings_from_table(table, "thigh")
    assert sum("sartorius_r has mean ff_mese_percent_mean" in w for w in warnings) == 2
    assert any("vastus_lateralis_r has water T2 12.0 ms" in w for w in warnings)
    assert "thigh: gracilis_r found by hrnet but absent in unet2d" in warnings
    assert not any("whole_region" in w for w in warnings)
    assert len(warnings) == 4


def test_plausible_table_gives_no_warning():
    table = pd.DataFrame({"label": [1, 2], "name": ["soleus_r", "soleus_l"], "network": ["unet2d"] * 2,
                          "voxel_count": [500, 480], "ff_mese_percent_mean": [6.0, 7.0],
                          "water_t2_ms_mean": [31.0, 32.0]})
    assert _warnings_from_table(table, "calf") == []
