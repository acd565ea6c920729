"""Tests of bids_muscle.stats.group.longitudinal_changes and the group table it feeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_muscle.interfaces.group import AGGREGATE_TABLES, aggregate
from bids_muscle.reports.group import build_group_report
from bids_muscle.stats import group as G

MUSCLES = (("vastus_lateralis", "right"), ("vastus_lateralis", "left"), ("gracilis", "right"))


def _session_table(volume, ff, volume_se=None, ff_se=None, seg_flag=None) -> pd.DataFrame:
    table = pd.DataFrame({"label": np.arange(1, len(MUSCLES) + 1),
                          "muscle": [m for m, _ in MUSCLES], "side": [s for _, s in MUSCLES],
                          "network": "unet3d", "volume_ml": volume, "ff_dixon_percent_mean": ff})
    if volume_se is not None:
        table["volume_ml_se"] = volume_se
    if ff_se is not None:
        table["ff_dixon_percent_se"] = ff_se
    if seg_flag is not None:
        table["seg_flag"] = seg_flag
    return table


def _tidy(entries) -> pd.DataFrame:
    """entries: (participant, session, table) -> stacked tidy table of the thigh."""
    tables = [t for _, _, t in entries]
    meta = [{"participant": p, "site": f"site{p}", "region": "thigh", **({"session": s} if s else {})}
            for p, s, _ in entries]
    return G.stack_tables(tables, meta)


def _row(changes, participant, muscle, side, metric, session_to="2"):
    sel = changes[(changes["participant"] == participant) & (changes["muscle"] == muscle)
                  & (changes["side"] == side) & (changes["metric"] == metric) & (changes["session_to"] == session_to)]
    assert len(sel) == 1
    return sel.iloc[0]


def test_changes_and_intervals_are_exact():
    vol1, vol2 = np.array([100.0, 120.0, 40.0]), np.array([90.0, 121.0, 40.0])
    ff1, ff2 = np.array([5.0, 6.0, 10.0]), np.array([8.0, 6.5, 10.0])
    vse1, vse2 = np.array([3.0, 2.0, 1.0]), np.array([4.0, 2.0, 1.0])
    fse1, fse2 = np.array([0.6, 0.3, 0.0]), np.array([0.8, 0.4, 0.0])
    entries = [
        ("01", "1", _session_table(vol1, ff1, vse1, fse1)),
        ("01", "2", _session_table(vol2, ff2, vse2, fse2)),
        ("02", "1", _session_table(vol1 + 1, ff1, vse1, fse1)),
        ("02", "2", _session_table(vol1 + 11, ff1 + 1, vse1, fse1)),
        ("02", "3", _session_table(vol1 - 1, ff1 - 2, vse2, fse2)),
    ]
    changes = G.longitudinal_changes(_tidy(entries))
    assert list(changes.columns) == ["participant", "site", "region", "side", "muscle", "network", "metric",
                                     "session_from", "session_to", "value_from", "value_to", "change", "se_change",
                                     "ci95_low", "ci95_high", "exceeds_error", "flagged"]
    # participant 01: one pair; participant 02: ses-1 -> ses-2 and ses-1 -> ses-3; 3 muscles x 2 metrics each
    assert len(changes) == 3 * 3 * 2
    assert set(changes["metric"]) == {"volume_ml", "ff_dixon_percent_mean"}
    assert (changes["session_from"] == "1").all()
    assert sorted(changes.loc[changes["participant"] == "02", "session_to"].unique()) == ["2", "3"]

    r = _row(changes, "01", "vastus_lateralis", "right", "volume_ml")
    assert (r["value_from"], r["value_to"], r["change"]) == (100.0, 90.0, -10.0)
    assert r["se_change"] == pytest.approx(5.0)            # sqrt(3^2 + 4^2)
    assert r["ci95_low"] == pytest.approx(-10.0 - 1.96 * 5.0)
    assert r["ci95_high"] == pytest.approx(-10.0 + 1.96 * 5.0)
    assert r["exceeds_error"] == 1.0 and r["site"] == "site01" and r["region"] == "thigh"
    r = _row(changes, "01", "vastus_lateralis", "right", "ff_dixon_percent_mean")
    assert r["change"] == pytest.approx(3.0) and r["se_change"] == pytest.approx(1.0)  # sqrt(0.6^2 + 0.8^2)
    assert (r["ci95_low"], r["ci95_high"]) == (pytest.approx(1.04), pytest.approx(4.96))
    assert r["exceeds_error"] == 1.0
    r = _row(changes, "01", "vastus_lateralis", "left", "ff_dixon_percent_mean")
    assert r["change"] == pytest.approx(0.5) and r["se_change"] == pytest.approx(0.5)
    assert r["exceeds_error"] == 0.0                        # 0.5 -/+ 0.98 holds 0
    r = _row(changes, "01", "gracilis", "right", "ff_dixon_percent_mean")
    assert r["change"] == 0.0 and r["se_change"] == 0.0 and r["exceeds_error"] == 0.0
    r = _row(changes, "02", "vastus_lateralis", "left", "volume_ml", session_to="3")
    assert r["value_from"] == 121.0 and r["change"] == pytest.approx(-2.0)
    assert r["se_change"] == pytest.approx(np.sqrt(8.0))
    r = _row(changes, "02", "gracilis", "right", "ff_dixon_percent_mean", session_to="3")
    assert r["change"] == pytest.approx(-2.0) and r["se_change"] == 0.0 and r["exceeds_error"] == 1.0
    np.testing.assert_allclose(changes["change"], changes["value_to"] - changes["value_from"])
    np.testing.assert_allclose(changes["ci95_high"] - changes["ci95_low"], 2 * 1.96 * changes["se_change"])
    assert (changes["flagged"] == 0).all()


def test_intervals_cover_the_true_change_95_percent_of_the_time():
    rng = np.random.default_rng(20261207)
    n_participants, n_muscles = 400, 10          # 4000 muscles, x 2 metrics
    muscle = np.tile(np.arange(n_muscles), n_participants)
    participant = np.repeat([f"{p:03d}" for p in range(n_participants)], n_muscles)
    truth_from = rng.uniform(50, 300, muscle.size)
    truth_change = rng.normal(0, 5, muscle.size)
    frames = []
    for session, truth in (("1", truth_from), ("2", truth_from + truth_change)):
        se_vol = rng.uniform(0.5, 6.0, muscle.size)
        se_ff = rng.uniform(0.1, 1.5, muscle.size)
        frames.append(pd.DataFrame({
            "participant": participant, "session": session, "site": "a", "region": "thigh", "side": "right",
            "muscle": [f"m{m}" for m in muscle], "network": "unet3d",
            "volume_ml": truth + rng.normal(0, se_vol), "volume_ml_se": se_vol,
            "ff_dixon_percent_mean": truth / 10 + rng.normal(0, se_ff), "ff_dixon_percent_se": se_ff}))
    tidy = pd.concat(frames, ignore_index=True)
    changes = G.longitudinal_changes(tidy)
    assert len(changes) == 2 * muscle.size
    truth = pd.Series(truth_change, index=pd.MultiIndex.from_arrays([participant, [f"m{m}" for m in muscle]]))
    for metric, scale in (("volume_ml", 1.0), ("ff_dixon_percent_mean", 0.1)):
        rows = changes[changes["metric"] == metric]
        true = truth.loc[list(zip(rows["participant"], rows["muscle"]))].to_numpy() * scale
        covered = (rows["ci95_low"].to_numpy() <= true) & (true <= rows["ci95_high"].to_numpy())
        assert 0.93 <= covered.mean() <= 0.97, (metric, covered.mean())
        # exceeds_error is the complement of "the interval holds 0"
        holds_zero = (rows["ci95_low"] <= 0) & (rows["ci95_high"] >= 0)
        assert ((rows["exceeds_error"] == 1) == ~holds_zero).all()


def test_participants_with_one_session_give_no_rows():
    one = _session_table([100.0, 120.0, 40.0], [5.0, 6.0, 10.0], [1.0] * 3, [0.1] * 3)
    entries = [("01", "1", one), ("02", "1", one), ("02", "2", one), ("03", None, one), ("04", "2", one)]
    changes = G.longitudinal_changes(_tidy(entries))
    assert set(changes["participant"]) == {"02"}
    assert len(changes) == 3 * 2 and (changes["change"] == 0).all()
    # no participant with two sessions: an empty table with the columns
    empty = G.longitudinal_changes(_tidy([e for e in entries if e[0] != "02"]))
    assert empty.empty and "exceeds_error" in empty.columns
    # the same session twice is a duplicate, not a change
    with pytest.raises(ValueError, match="duplicate"):
        G.longitudinal_changes(_tidy([("01", "1", one), ("01", "1", one), ("01", "2", one)]))


def test_sessions_sort_as_text_and_the_first_is_the_baseline():
    entries = [("01", s, _session_table([float(v)] * 3, [1.0] * 3, [1.0] * 3, [0.1] * 3))
               for s, v in (("2", 120), ("10", 100), ("3", 130))]
    changes = G.longitudinal_changes(_tidy(entries), metrics=["volume_ml"])
    assert (changes["session_from"] == "10").all()         # "10" < "2" < "3" as text
    assert sorted(changes["session_to"].unique()) == ["2", "3"]
    assert set(changes.loc[changes["session_to"] == "3", "change"]) == {30.0}


def test_missing_standard_error_gives_nan_interval():
    entries = [
        ("01", "1", _session_table([100.0, 120.0, 40.0], [5.0, 6.0, 10.0], volume_se=[1.0, np.nan, 1.0])),
        ("01", "2", _session_table([110.0, 130.0, 50.0], [7.0, 6.0, 10.0], volume_se=[1.0, 1.0, 1.0])),
    ]
    changes = G.longitudinal_changes(_tidy(entries))
    ff = changes[changes["metric"] == "ff_dixon_percent_mean"]   # no ff_dixon_percent_se column at all
    assert len(ff) == 3 and ff["change"].notna().all()
    assert ff[["se_change", "ci95_low", "ci95_high", "exceeds_error"]].isna().all().all()
    vol = changes[changes["metric"] == "volume_ml"].set_index(["muscle", "side"])
    assert vol.loc[("vastus_lateralis", "left"), "change"] == 10.0
    assert np.isnan(vol.loc[("vastus_lateralis", "left"), ["se_change", "ci95_low", "exceeds_error"]]
                    .to_numpy(dtype=float)).all()                # se missing in one session only
    assert vol.loc[("vastus_lateralis", "right"), "exceeds_error"] == 1.0
    # imat_fraction has no standard error in the tables: change only
    entries = [(p, s, t.assign(imat_fraction=f)) for (p, s, t), f in zip(entries, (0.1, 0.15))]
    imat = G.longitudinal_changes(_tidy(entries), metrics=["imat_fraction"])
    assert imat["change"].to_numpy() == pytest.approx([0.05] * 3) and imat["se_change"].isna().all()


def test_seg_flag_in_one_session_sets_flagged():
    vol, ff = [100.0, 120.0, 40.0], [5.0, 6.0, 10.0]
    entries = [
        ("01", "1", _session_table(vol, ff, [1.0] * 3, [0.1] * 3, seg_flag=[0, 1, 0])),
        ("01", "2", _session_table(vol, ff, [1.0] * 3, [0.1] * 3, seg_flag=[0, 0, 1])),
        ("02", "1", _session_table(vol, ff, [1.0] * 3, [0.1] * 3, seg_flag=[0, 0, 0])),
        ("02", "2", _session_table(vol, ff, [1.0] * 3, [0.1] * 3, seg_flag=[np.nan, 0, 0])),
    ]
    changes = G.longitudinal_changes(_tidy(entries))
    flagged = changes.groupby(["participant", "muscle", "side"])["flagged"].agg(["min", "max"])
    assert (flagged["min"] == flagged["max"]).all()          # the same for every metric of a muscle
    assert flagged["max"].to_dict() == {
        ("01", "gracilis", "right"): 1, ("01", "vastus_lateralis", "left"): 1,
        ("01", "vastus_lateralis", "right"): 0, ("02", "gracilis", "right"): 0,
        ("02", "vastus_lateralis", "left"): 0, ("02", "vastus_lateralis", "right"): 0}


def _write_biomarkers(out: Path, session: str, volume: float, ff: float) -> None:
    anat = out / "sub-01" / f"ses-{session}" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"label": [1, 2], "name": ["gracilis_right", "gracilis_left"], "muscle": "gracilis",
                          "side": ["right", "left"], "network": "unet3d", "volume_ml": [volume, volume + 5],
                          "volume_ml_se": [1.0, 1.0], "ff_dixon_percent_mean": [ff, ff],
                          "ff_dixon_percent_se": [0.2, "n/a"], "seg_flag": [0, 0]})
    table.to_csv(anat / f"sub-01_ses-{session}_acq-thigh_biomarkers.tsv", sep="\t", index=False)


def test_aggregate_writes_the_longitudinal_table(tmp_path):
    assert "longitudinal" in AGGREGATE_TABLES
    out = tmp_path / "out"
    _write_biomarkers(out, "1", 100.0, 5.0)
    _write_biomarkers(out, "2", 90.0, 9.0)
    tables, notes = aggregate(out, tmp_path / "missing_participants.tsv")
    path = out / "group" / "longitudinal.tsv"
    assert tables["longitudinal"] == path and path.is_file()
    assert not any(n.startswith("no longitudinal change") for n in notes)
    changes = pd.read_csv(path, sep="\t", na_values=["n/a"], dtype={"participant": str, "session_from": str,
                                                                     "session_to": str})
    assert len(changes) == 2 * 2                              # 2 muscles x (volume, ff)
    assert set(zip(changes["session_from"], changes["session_to"])) == {("1", "2")}
    assert (changes["participant"] == "01").all()
    vol = changes[(changes["metric"] == "volume_ml") & (changes["side"] == "right")].iloc[0]
    assert vol["change"] == -10.0 and vol["exceeds_error"] == 1
    assert vol["se_change"] == pytest.approx(np.sqrt(2.0), rel=1e-5)  # the TSV keeps 6 significant digits
    ff = changes[changes["metric"] == "ff_dixon_percent_mean"].set_index("side")
    assert ff.loc["right", "change"] == 4.0 and ff.loc["right", "exceeds_error"] == 1
    assert np.isnan(ff.loc["left", "ci95_low"]) and ff.loc["left", "change"] == 4.0
    html = build_group_report(out, {k: str(v) for k, v in tables.items()}, notes=notes).read_text()
    assert "Changes between sessions beyond the measurement error" in html
    assert "3 of 4 changes" in html and 'href="longitudinal.tsv"' in html

    # one session left: no table (the stale one is removed) and a note says why
    (out / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_acq-thigh_biomarkers.tsv").unlink()
    tables, notes = aggregate(out, tmp_path / "missing_participants.tsv")
    assert "longitudinal" not in tables and not path.exists()
    assert "no longitudinal change: no participant has two sessions" in notes
