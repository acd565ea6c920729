"""Tests of bids_muscle.stats.group against per-group computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bids_muscle.stats import agreement as A
from bids_muscle.stats import group as G

MUSCLES = (("vastus_lateralis", "right"), ("vastus_lateralis", "left"), ("gracilis", "right"))
NETWORKS = ("hrnet", "manual", "unet")


def _participant_tables(n=30, seed=0):
    rng = np.random.default_rng(seed)
    tables, meta = [], []
    for p in range(n):
        truth_ff = rng.uniform(2, 40, len(MUSCLES))
        truth_vol = rng.uniform(50, 300, len(MUSCLES))
        rows = []
        for net_i, net in enumerate(NETWORKS):
            for (muscle, side), ff, vol in zip(MUSCLES, truth_ff, truth_vol):
                rows.append({"label": 3, "name": f"{muscle}_{side}", "muscle": muscle, "side": side,
                             "network": net, "volume_ml": vol + rng.normal(0, 3) + net_i,
                             "ff_dixon_percent_mean": ff + rng.normal(0, 0.5) + 0.2 * net_i,
                             "ff_dixon_percent_n": int(vol * 80)})
        tables.append(pd.DataFrame(rows))
        meta.append({"participant": f"{p:02d}", "site": f"s{p % 3}", "region": "thigh"})
    return tables, meta


@pytest.fixture(scope="module")
def tidy():
    tables, meta = _participant_tables()
    return G.stack_tables(tables, meta)


def test_stack_tables_adds_identifiers(tidy):
    assert list(tidy.columns[:7]) == list(G.ID_COLUMNS)
    assert len(tidy) == 30 * len(MUSCLES) * len(NETWORKS)
    assert (tidy["session"] == G.MISSING).all()
    assert set(tidy["site"]) == {"s0", "s1", "s2"}
    first = tidy.loc[tidy["participant"] == "04"]
    assert (first["site"] == "s1").all() and len(first) == 9
    assert G.metric_columns(tidy) == ["volume_ml", "ff_dixon_percent_mean", "ff_dixon_percent_n"]
    tables, meta = _participant_tables(2)
    meta[0]["network"] = "x"
    with pytest.raises(ValueError, match="repeats columns"):
        G.stack_tables(tables, meta)
    with pytest.raises(ValueError, match="metadata"):
        G.stack_tables(tables, meta[:1])


def test_long_and_wide_tables(tidy):
    long = G.long_table(tidy)
    assert len(long) == len(tidy) * 3
    sel = (long["participant"] == "07") & (long["metric"] == "volume_ml") & (long["network"] == "unet") \
        & (long["muscle"] == "gracilis")
    expect = tidy.loc[(tidy["participant"] == "07") & (tidy["network"] == "unet")
                      & (tidy["muscle"] == "gracilis"), "volume_ml"].iloc[0]
    assert long.loc[sel, "value"].iloc[0] == expect
    wide = G.wide_table(tidy, metrics=["volume_ml"])
    assert len(wide) == 30
    assert wide.loc[wide["participant"] == "07", "thigh__gracilis__right__unet__volume_ml"].iloc[0] == expect
    with pytest.raises(ValueError, match="duplicate"):
        G.wide_table(pd.concat([tidy, tidy.iloc[:1]]), metrics=["volume_ml"])


def test_site_summary_matches_numpy(tidy):
    summary = G.site_summary(tidy, metrics=["ff_dixon_percent_mean"])
    assert len(summary) == 3 * 2 * 3            # sites x muscles (sides pooled) x networks
    row = summary.loc[(summary["site"] == "s2") & (summary["muscle"] == "vastus_lateralis")
                      & (summary["network"] == "manual")].iloc[0]
    v = tidy.loc[(tidy["site"] == "s2") & (tidy["muscle"] == "vastus_lateralis")
                 & (tidy["network"] == "manual"), "ff_dixon_percent_mean"].to_numpy()
    assert row["n"] == v.size == 20
    assert row["median"] == pytest.approx(np.median(v))
    q1, q3 = np.percentile(v, [25, 75])
    assert (row["q1"], row["q3"], row["iqr"]) == pytest.approx((q1, q3, q3 - q1))


def test_network_differences_against_reference(tidy):
    diffs = G.network_differences(tidy, reference="manual")
    assert set(zip(diffs["network_a"], diffs["network_b"])) == {("hrnet", "manual"), ("unet", "manual")}
    assert len(diffs) == 2 * 30 * len(MUSCLES)
    row = diffs.loc[(diffs["participant"] == "11") & (diffs["network_a"] == "unet")
                    & (diffs["muscle"] == "vastus_lateralis") & (diffs["side"] == "left")].iloc[0]
    pick = tidy.set_index(["participant", "network", "muscle", "side"])
    a = pick.loc[("11", "unet", "vastus_lateralis", "left"), "volume_ml"]
    b = pick.loc[("11", "manual", "vastus_lateralis", "left"), "volume_ml"]
    assert row["volume_ml_a"] == a and row["volume_ml_b"] == b
    assert row["delta_volume_ml"] == pytest.approx(a - b)
    every_pair = G.network_differences(tidy)
    assert len(every_pair) == 3 * 30 * len(MUSCLES)
    partial = G.network_differences(tidy.loc[~((tidy["network"] == "unet") & (tidy["participant"] == "00"))],
                                    reference="manual")
    assert len(partial) == len(diffs) - len(MUSCLES)
    with pytest.raises(ValueError, match="reference network"):
        G.network_differences(tidy, reference="nnunet")


def test_pairwise_bland_altman_matches_per_group(tidy):
    diffs = G.network_differences(tidy, reference="manual")
    ba = G.pairwise_bland_altman(diffs, by=("network_a", "network_b", "muscle"))
    assert len(ba) == 2 * 2 * 2                  # pairs x muscles x metrics
    for _, row in ba.iterrows():
        sel = (diffs["network_a"] == row["network_a"]) & (diffs["muscle"] == row["muscle"])
        ref = A.bland_altman(diffs.loc[sel, f"{row['metric']}_a"], diffs.loc[sel, f"{row['metric']}_b"])
        assert row["n"] == ref["n"]
        assert (row["bias"], row["sd"], row["loa_low"], row["loa_high"]) == pytest.approx(
            (ref["bias"], ref["sd"], ref["loa_low"], ref["loa_high"]))
    unet = ba.loc[(ba["network_a"] == "unet") & (ba["metric"] == "volume_ml")]
    assert np.all(np.abs(unet["bias"] - 1.0) < 1.5)      # simulated bias: +1 ml


def test_pairwise_g20_and_site_effects_match_scipy(tidy):
    diffs = G.network_differences(tidy, reference="manual")
    g20 = G.pairwise_g20(diffs, "ff_dixon_percent_mean", metrics=["volume_ml"])
    assert len(g20) == 2
    row = g20.loc[g20["network_a"] == "hrnet"].iloc[0]
    sel = diffs["network_a"] == "hrnet"
    ref = A.g20_comparison(diffs.loc[sel, "ff_dixon_percent_mean_b"], diffs.loc[sel, "volume_ml_a"],
                           diffs.loc[sel, "volume_ml_b"])
    for key, value in ref.items():
        assert row[key] == (pytest.approx(value) if isinstance(value, float) else value)
    assert row["n_minus"] + row["n_plus"] == 30 * len(MUSCLES)

    effects = G.site_effects(tidy, metrics=["volume_ml"])
    assert len(effects) == len(MUSCLES) * len(NETWORKS)
    row = effects.loc[(effects["muscle"] == "gracilis") & (effects["network"] == "unet")].iloc[0]
    sel = (tidy["muscle"] == "gracilis") & (tidy["network"] == "unet")
    groups = [tidy.loc[sel & (tidy["site"] == s), "volume_ml"] for s in ("s0", "s1", "s2")]
    ref = stats.kruskal(*groups)
    assert row["statistic"] == pytest.approx(ref.statistic)
    assert row["p_value"] == pytest.approx(ref.pvalue)


def test_segmentation_agreement_summary():
    rng = np.random.default_rng(4)
    frames = []
    for net, miss in (("a", 0.0), ("b", 0.1)):
        n = 80
        present_a = rng.random(n) >= miss
        dice_values = np.where(present_a, rng.normal(0.9, 0.03, n), 0.0)
        dice_values[:3] = [0.5, 0.55, 0.6]
        delta = rng.normal(0, 1, n) * (1.2 - dice_values)
        frames.append(pd.DataFrame({"network": net, "region": "calf", "dice": dice_values,
                                    "present_a": present_a, "present_b": True,
                                    "hd95_mm": rng.gamma(2, 1, n), "delta_ff": np.where(present_a, delta, np.nan)}))
    frames[0].loc[5, "present_b"] = False        # not in the reference: left out
    comp = pd.concat(frames, ignore_index=True)
    summary = G.segmentation_agreement_summary(comp)
    for net in ("a", "b"):
        row = summary.loc[summary["network"] == net].iloc[0]
        sub = comp.loc[(comp["network"] == net) & comp["present_b"]]
        found = sub.loc[sub["present_a"]]
        assert row["n"] == len(sub)
        assert row["absence_rate"] == pytest.approx(A.absence_rate(sub["present_b"], sub["present_a"]))
        assert row["outlier_rate"] == pytest.approx(A.outlier_rate(found["dice"]))
        assert row["outlier_rate"] >= 3 / len(found)
        assert row["r_dice_abs_ff"] == pytest.approx(stats.pearsonr(found["dice"], found["delta_ff"].abs()).statistic)
        assert row["bias_ff"] == pytest.approx(found["delta_ff"].mean())
        assert row["hd95_median_mm"] == pytest.approx(sub["hd95_mm"].median())
    assert summary.loc[summary["network"] == "b", "absence_rate"].iloc[0] > 0


def test_networks_are_compared_only_where_they_ran_on_the_same_region(tidy):
    # the thigh runs one network, the calf another: nothing to compare, no rows (and no error)
    split = pd.concat([tidy[tidy["network"] == "unet"],
                       tidy[tidy["network"] == "hrnet"].assign(region="calf")], ignore_index=True)
    diffs = G.network_differences(split)
    assert diffs.empty and {"network_a", "network_b", "delta_volume_ml"} <= set(diffs.columns)
    assert G.pairwise_bland_altman(diffs).empty
    # a region where two ran is compared, the other is not
    mixed = pd.concat([tidy, tidy[tidy["network"] == "unet"].assign(region="calf")], ignore_index=True)
    diffs = G.network_differences(mixed)
    assert set(diffs["region"]) == {"thigh"} and len(diffs) == 3 * 30 * len(MUSCLES)
    assert G.network_differences(mixed, reference="manual")["region"].eq("thigh").all()


def test_site_test_needs_enough_participants_at_every_site(tidy):
    assert G.site_test_coverage(tidy) is None                       # 10 per site
    few = tidy[tidy["participant"].isin(["00", "01", "02", "03", "04", "05"])]   # 2 per site
    reason = G.site_test_coverage(few)
    assert reason and f"at least {G.MIN_PER_SITE}" in reason and "s0: 2" in reason
    assert G.site_effects(few, metrics=["volume_ml"]).empty
    assert "one site" in G.site_test_coverage(tidy.assign(site="only"))
    assert len(G.site_effects(tidy, metrics=["volume_ml"], min_per_site=10)) == len(MUSCLES) * len(NETWORKS)
    assert G.site_effects(tidy, metrics=["volume_ml"], min_per_site=11).empty
