"""Group-level tables and agreement statistics from per-participant tables.

The group level reads derivative tables only. Each participant table is a
biomarker table (:func:`bids_muscle.stats.biomarkers.muscle_table`) or a
segmentation comparison (:func:`bids_muscle.stats.agreement.compare_segmentations`),
with or without its identifying columns; :func:`stack_tables` adds the
identifiers and stacks them into one *tidy* table: one row per participant,
session, site, region, side, muscle and network, with the metrics as
columns. Everything else works on that table with ``groupby`` and array
operations, so thousands of participants take seconds.

Changes between sessions (:func:`longitudinal_changes`) are ``to - from``,
from a participant's first session to each later one.

Differences between networks follow the convention of
:mod:`bids_muscle.stats.agreement`: ``delta = value_a - value_b`` with
``network_b`` the reference (Hostin 2023: ``dX = X_automatic - X_manual``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations

import numpy as np
import pandas as pd

from bids_muscle.stats import agreement

__all__ = [
    "DESCRIPTOR_COLUMNS",
    "ID_COLUMNS",
    "MISSING",
    "MIN_PER_SITE",
    "agreement_metrics",
    "long_table",
    "longitudinal_changes",
    "metric_columns",
    "network_differences",
    "pairwise_bland_altman",
    "pairwise_g20",
    "segmentation_agreement_summary",
    "site_effects",
    "site_test_coverage",
    "site_summary",
    "stack_tables",
    "wide_table",
]

ID_COLUMNS = ("participant", "session", "site", "region", "side", "muscle", "network")
DESCRIPTOR_COLUMNS = ("label", "name", "abbreviation", "slice")
MISSING = "n/a"
_KEYS_NO_NETWORK = tuple(c for c in ID_COLUMNS if c != "network")
#: Participants each site needs before a site effect is tested (Kruskal-Wallis).
MIN_PER_SITE = 5


def metric_columns(table: pd.DataFrame) -> list[str]:
    """Numeric columns of ``table`` that are neither identifiers nor descriptors."""
    skip = set(ID_COLUMNS) | set(DESCRIPTOR_COLUMNS)
    return [c for c in table.columns
            if c not in skip and pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])]


def agreement_metrics(table: pd.DataFrame) -> list[str]:
    """Default metrics compared between networks.

    ``volume_ml``, ``imat_fraction`` and every ``<map>_mean`` column that
    is present: the quantities of Hostin 2023 (volume, FF, MTR, T2 ...).
    """
    cols = [c for c in ("volume_ml", "imat_fraction") if c in table.columns]
    return cols + [c for c in table.columns if c.endswith("_mean")]


def stack_tables(
    tables: Iterable[pd.DataFrame],
    metadata: Iterable[Mapping[str, object]] | None = None,
) -> pd.DataFrame:
    """Stack participant tables into one tidy table.

    Parameters
    ----------
    tables : iterable of pandas.DataFrame
        Per-participant tables (one row per muscle, or per muscle and
        network).
    metadata : iterable of dict, optional
        One dict per table with identifier values (``participant``,
        ``session``, ``site``, ``region``, ``network`` ...) for columns the
        table lacks; a value given here for a column the table has raises
        ValueError.

    Returns
    -------
    pandas.DataFrame
        All rows, the columns of :data:`ID_COLUMNS` first (missing
        identifiers filled with ``"n/a"``), then the others in first-seen
        order.
    """
    tables = list(tables)
    if not tables:
        raise ValueError("no tables to stack")
    meta = [dict(m) for m in metadata] if metadata is not None else [{} for _ in tables]
    if len(meta) != len(tables):
        raise ValueError(f"{len(tables)} tables but {len(meta)} metadata entries")
    for i, (tab, m) in enumerate(zip(tables, meta)):
        clash = set(m) & set(tab.columns)
        if clash:
            raise ValueError(f"table {i}: metadata repeats columns {sorted(clash)}")
    stacked = pd.concat(tables, ignore_index=True, sort=False)
    lengths = np.array([len(t) for t in tables])
    for key in sorted({k for m in meta for k in m}):
        values = np.array([m.get(key, MISSING) for m in meta], dtype=object)
        column = np.repeat(values, lengths)
        if key in stacked.columns:
            known = stacked[key].notna().to_numpy()
            column = np.where(known, stacked[key].to_numpy(dtype=object), column)
        stacked[key] = column
    for key in ID_COLUMNS:
        if key not in stacked.columns:
            stacked[key] = MISSING
        else:
            stacked[key] = stacked[key].astype(object).where(stacked[key].notna(), MISSING).astype(str)
    order = list(ID_COLUMNS) + [c for c in stacked.columns if c not in ID_COLUMNS]
    return stacked[order]


def long_table(tidy: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Long format: identifiers, ``metric`` and ``value`` (one row per value)."""
    metrics = list(metrics) if metrics is not None else metric_columns(tidy)
    _require(tidy, list(ID_COLUMNS) + metrics)
    out = tidy.melt(id_vars=list(ID_COLUMNS), value_vars=metrics, var_name="metric", value_name="value")
    return out


def wide_table(
    tidy: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    index: Sequence[str] = ("participant", "session", "site"),
    sep: str = "__",
) -> pd.DataFrame:
    """Wide format: one row per ``index`` value, one column per value.

    Columns are named ``region, muscle, side, network, metric`` joined with
    ``sep`` (for example ``thigh__vastus_lateralis__right__hrnet__volume_ml``);
    identifier values that are ``"n/a"`` are left out of the name.
    """
    metrics = list(metrics) if metrics is not None else metric_columns(tidy)
    index = list(index)
    columns = [c for c in ("participant", "session", "site", "region", "muscle", "side", "network")
               if c not in index]
    _require(tidy, index + columns + metrics)
    keyed = tidy.set_index(index + columns)[metrics]
    if keyed.index.has_duplicates:
        raise ValueError("tables hold duplicate rows for the same participant, muscle and network")
    wide = keyed.unstack(columns)
    level_order = list(range(1, len(columns) + 1)) + [0]
    wide.columns = [sep.join(str(part) for part in (col[i] for i in level_order) if part != MISSING)
                    for col in wide.columns]
    return wide.reset_index()


def site_summary(
    tidy: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    by: Sequence[str] = ("site", "region", "muscle", "network"),
) -> pd.DataFrame:
    """Median and interquartile range of every metric per group.

    Parameters
    ----------
    tidy : pandas.DataFrame
        Output of :func:`stack_tables`.
    metrics : sequence of str, optional
        Metric columns (default: all, :func:`metric_columns`).
    by : sequence of str
        Grouping columns; the default pools the two sides of a muscle.

    Returns
    -------
    pandas.DataFrame
        ``by`` columns, ``metric``, ``n`` (non-missing values), ``median``,
        ``q1``, ``q3`` and ``iqr`` (linear interpolation), one row per
        group and metric in the order of ``metrics``.
    """
    metrics = list(metrics) if metrics is not None else metric_columns(tidy)
    by = list(by)
    _require(tidy, by + metrics)
    values = tidy[by + metrics].copy()
    values[metrics] = values[metrics].apply(pd.to_numeric, errors="coerce")
    grouped = values.groupby(by, sort=True, observed=True)[metrics]
    n = grouped.count()
    keys = n.index.to_frame(index=False)
    out = keys.loc[keys.index.repeat(len(metrics))].reset_index(drop=True)
    out["metric"] = np.tile(np.asarray(metrics, dtype=object), len(keys))
    out["n"] = n.to_numpy(dtype=np.int64).ravel()
    out["median"] = grouped.median().to_numpy(dtype=float).ravel()
    out["q1"] = grouped.quantile(0.25).to_numpy(dtype=float).ravel()
    out["q3"] = grouped.quantile(0.75).to_numpy(dtype=float).ravel()
    out["iqr"] = out["q3"] - out["q1"]
    return out


def network_differences(
    tidy: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    reference: str | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
) -> pd.DataFrame:
    """Biomarker differences between networks, muscle by muscle.

    Parameters
    ----------
    tidy : pandas.DataFrame
        Output of :func:`stack_tables` with several values of ``network``
        (a manual segmentation counts as one, e.g. ``network="manual"``).
    metrics : sequence of str, optional
        Metrics to compare (default :func:`agreement_metrics`).
    reference : str, optional
        Compare every other network with this one (``network_b``).
    pairs : sequence of (str, str), optional
        Explicit ``(network_a, network_b)`` pairs. Without ``reference`` and
        ``pairs``, every pair of networks in sorted order.

    Networks are compared only within a region, and a pair only in the
    regions where both networks ran (the thigh may run one network and the
    calf another: that is no comparison).

    Returns
    -------
    pandas.DataFrame
        One row per participant, session, site, region, side, muscle and
        pair where both networks have a row: identifier columns,
        ``network_a``, ``network_b`` and for each metric ``m``: ``m_a``,
        ``m_b`` and ``delta_m = m_a - m_b``; no rows (these columns only)
        when no region has two of the networks.
    """
    metrics = list(metrics) if metrics is not None else agreement_metrics(tidy)
    if not metrics:
        raise ValueError("no metrics to compare")
    keys = list(_KEYS_NO_NETWORK)
    _require(tidy, list(ID_COLUMNS) + metrics)
    networks = sorted(tidy["network"].unique())
    if reference is not None and reference not in networks:
        raise ValueError(f"reference network {reference!r} not in the tables {networks}")
    for na, nb in pairs or ():
        if na not in networks or nb not in networks:
            raise ValueError(f"pair ({na!r}, {nb!r}) names a network not in the tables {networks}")
    keyed = tidy.set_index(keys + ["network"])[metrics]
    if keyed.index.has_duplicates:
        raise ValueError("tables hold duplicate rows for the same participant, muscle and network")
    by_network = keyed.unstack("network")
    index_frame = by_network.index.to_frame(index=False)
    present = {n: by_network.xs(n, axis=1, level="network").notna().any(axis=1).to_numpy() for n in networks}

    columns = keys + ["network_a", "network_b"] + [f"{p}{m}{s}" for m in metrics
                                                   for p, s in (("", "_a"), ("", "_b"), ("delta_", ""))]
    blocks = []
    for region in sorted(index_frame["region"].unique()):
        in_region = index_frame["region"].to_numpy() == region
        ran = [n for n in networks if (present[n] & in_region).any()]
        if pairs is not None:
            region_pairs = [(na, nb) for na, nb in pairs if na in ran and nb in ran]
        elif reference is not None:
            region_pairs = [(n, reference) for n in ran if n != reference] if reference in ran else []
        else:
            region_pairs = list(combinations(ran, 2))
        for na, nb in region_pairs:
            both = in_region & present[na] & present[nb]
            block = {k: index_frame[k].to_numpy()[both] for k in keys}
            block["network_a"] = np.full(both.sum(), na, dtype=object)
            block["network_b"] = np.full(both.sum(), nb, dtype=object)
            for m in metrics:
                va = by_network[(m, na)].to_numpy(dtype=float)[both]
                vb = by_network[(m, nb)].to_numpy(dtype=float)[both]
                block[f"{m}_a"] = va
                block[f"{m}_b"] = vb
                block[f"delta_{m}"] = va - vb
            blocks.append(pd.DataFrame(block, columns=columns))
    if not blocks:
        return pd.DataFrame(columns=columns)
    return pd.concat(blocks, ignore_index=True)


#: Two-sided 95 % quantile of the normal distribution used for the change intervals.
_Z95 = 1.96
_LONGITUDINAL_COLUMNS = ("participant", "site", "region", "side", "muscle", "network", "metric", "session_from",
                        "session_to", "value_from", "value_to", "change", "se_change", "ci95_low", "ci95_high",
                        "exceeds_error", "flagged")


def _se_column(metric: str) -> str:
    """Standard-error column of ``metric``: ``<x>_se`` for ``<x>_mean``, else ``<metric>_se``."""
    return f"{metric[: -len('_mean')]}_se" if metric.endswith("_mean") else f"{metric}_se"


def longitudinal_changes(tidy: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-muscle change between sessions, with its 95 % interval.

    For every participant with two or more sessions of a region, each
    muscle (region, side, muscle and network) is compared between the
    participant's first session of that region (sessions sorted as
    strings: ``"10"`` sorts before ``"2"``) and every later session:
    ``change = value_to - value_from``. Rows with ``session`` ``"n/a"``
    are left out.

    The standard error of the change combines those of the two visits,
    ``se_change = sqrt(se_from^2 + se_to^2)``, and the 95 % interval is
    ``change -/+ 1.96 se_change``. This assumes that the measurement
    errors of the two visits are independent and normally distributed:
    an error shared by both visits (same network, same model bias) is not
    in the interval, and with few voxels or a skewed error the coverage
    is not exactly 95 %.

    Parameters
    ----------
    tidy : pandas.DataFrame
        Output of :func:`stack_tables`: the :data:`ID_COLUMNS`, the
        metrics, their standard errors where known (``<x>_se`` beside
        ``<x>_mean``, ``volume_ml_se`` beside ``volume_ml``) and
        optionally ``seg_flag``.
    metrics : sequence of str, optional
        Metrics to compare (default :func:`agreement_metrics`: volume,
        IMAT fraction and every ``<map>_mean``). A metric without a
        standard-error column still gets its change, with NaN interval.

    Returns
    -------
    pandas.DataFrame
        Long table, one row per participant, region, side, muscle,
        network, metric and pair of sessions: ``participant``, ``site``
        (of the later session; ``"<from>-><to>"`` when the participant
        changed site), ``region``, ``side``, ``muscle``, ``network``,
        ``metric``, ``session_from``, ``session_to``, ``value_from``,
        ``value_to``, ``change``, ``se_change``, ``ci95_low``,
        ``ci95_high``, ``exceeds_error`` (1.0 when the interval excludes
        0, 0.0 when it holds 0, NaN without a standard error or a value)
        and ``flagged`` (1 when either session's row has ``seg_flag`` = 1,
        else 0). No rows (these columns only) when no participant has a
        region in two sessions.

    Raises
    ------
    ValueError
        Without metrics, when a column is missing, or when a participant,
        session and muscle has several rows.
    """
    metrics = list(dict.fromkeys(metrics)) if metrics is not None else agreement_metrics(tidy)
    if not metrics:
        raise ValueError("no metrics to compare")
    _require(tidy, list(ID_COLUMNS) + metrics)
    keys = ["participant", "region", "side", "muscle", "network"]
    se_of = {m: _se_column(m) for m in metrics}
    se_cols = [c for c in dict.fromkeys(se_of.values()) if c in tidy.columns and c not in metrics]
    numeric = list(dict.fromkeys(metrics + se_cols + (["seg_flag"] if "seg_flag" in tidy.columns else [])))
    rows = tidy.loc[tidy["session"].astype(str) != MISSING, keys + ["session", "site"] + numeric].copy()
    rows["session"] = rows["session"].astype(str)
    rows[numeric] = rows[numeric].apply(pd.to_numeric, errors="coerce")
    if rows.duplicated(keys + ["session"]).any():
        raise ValueError("tables hold duplicate rows for the same participant, session, muscle and network")
    first = rows.groupby(["participant", "region"], sort=False)["session"].transform("min")
    is_first = (rows["session"] == first).to_numpy()
    pairs = rows.loc[~is_first].merge(rows.loc[is_first], on=keys, how="inner", suffixes=("_to", "_from"))
    if pairs.empty:
        return pd.DataFrame(columns=list(_LONGITUDINAL_COLUMNS))
    pairs = pairs.sort_values(["participant", "region", "session_to"], kind="stable").reset_index(drop=True)

    def block(columns: list[str | None], suffix: str) -> np.ndarray:
        return np.column_stack([pairs[f"{c}{suffix}"].to_numpy(dtype=np.float64) if c is not None
                                else np.full(len(pairs), np.nan) for c in columns])

    se_names = [se_of[m] if (se_of[m] in se_cols or se_of[m] in metrics) else None for m in metrics]
    value_from, value_to = block(metrics, "_from"), block(metrics, "_to")
    se_change = np.sqrt(block(se_names, "_from") ** 2 + block(se_names, "_to") ** 2)
    change = value_to - value_from
    low, high = change - _Z95 * se_change, change + _Z95 * se_change
    known = np.isfinite(low) & np.isfinite(high)
    exceeds = np.where(known, ((low > 0) | (high < 0)).astype(np.float64), np.nan)
    if "seg_flag_from" in pairs.columns:
        flagged = ((pairs["seg_flag_from"] == 1) | (pairs["seg_flag_to"] == 1)).to_numpy().astype(np.int64)
    else:
        flagged = np.zeros(len(pairs), dtype=np.int64)
    site = pairs["site_to"].astype(str).where(pairs["site_from"].astype(str) == pairs["site_to"].astype(str),
                                              pairs["site_from"].astype(str) + "->" + pairs["site_to"].astype(str))
    k = len(metrics)
    out = {"participant": pairs["participant"], "site": site}
    out.update({c: pairs[c] for c in ("region", "side", "muscle", "network")})
    out = {c: np.repeat(np.asarray(v, dtype=object), k) for c, v in out.items()}
    out["metric"] = np.tile(np.asarray(metrics, dtype=object), len(pairs))
    out["session_from"] = np.repeat(pairs["session_from"].to_numpy(dtype=object), k)
    out["session_to"] = np.repeat(pairs["session_to"].to_numpy(dtype=object), k)
    for name, arr in (("value_from", value_from), ("value_to", value_to), ("change", change),
                      ("se_change", se_change), ("ci95_low", low), ("ci95_high", high), ("exceeds_error", exceeds)):
        out[name] = arr.ravel()
    out["flagged"] = np.repeat(flagged, k)
    return pd.DataFrame(out, columns=list(_LONGITUDINAL_COLUMNS))


def _delta_metrics(differences: pd.DataFrame, metrics: Sequence[str] | None) -> list[str]:
    if metrics is None:
        return [c[len("delta_"):] for c in differences.columns if c.startswith("delta_")]
    return list(metrics)


def pairwise_bland_altman(
    differences: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    by: Sequence[str] = ("network_a", "network_b", "region"),
) -> pd.DataFrame:
    """Bland-Altman statistics per network pair (and further groups).

    Parameters
    ----------
    differences : pandas.DataFrame
        Output of :func:`network_differences` (or any table with
        ``delta_<metric>`` columns and the ``by`` columns).
    metrics : sequence of str, optional
        Metrics (default: every ``delta_`` column).
    by : sequence of str
        Grouping columns; add ``"muscle"`` for per-muscle limits.

    Returns
    -------
    pandas.DataFrame
        ``by`` columns, ``metric``, ``n``, ``bias`` (mean of a - b), ``sd``
        (ddof=1), ``loa_low``, ``loa_high`` (bias -/+ 1.96 sd), as
        :func:`bids_muscle.stats.agreement.bland_altman`.
    """
    metrics = _delta_metrics(differences, metrics)
    by = list(by)
    cols = [f"delta_{m}" for m in metrics]
    _require(differences, by + cols)
    deltas = differences[by + cols].copy()
    deltas[cols] = deltas[cols].where(np.isfinite(deltas[cols].to_numpy(dtype=float)))
    grouped = deltas.groupby(by, sort=True, observed=True)[cols]
    n = grouped.count()
    keys = n.index.to_frame(index=False)
    out = keys.loc[keys.index.repeat(len(cols))].reset_index(drop=True)
    out["metric"] = np.tile(np.asarray(metrics, dtype=object), len(keys))
    out["n"] = n.to_numpy(dtype=np.int64).ravel()
    out["bias"] = grouped.mean().to_numpy(dtype=float).ravel()
    out["sd"] = grouped.std(ddof=1).to_numpy(dtype=float).ravel()
    out["loa_low"] = out["bias"] - 1.96 * out["sd"]
    out["loa_high"] = out["bias"] + 1.96 * out["sd"]
    return out


def pairwise_g20(
    differences: pd.DataFrame,
    ff_metric: str,
    metrics: Sequence[str] | None = None,
    by: Sequence[str] = ("network_a", "network_b", "region"),
    threshold_percent: float = 20.0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """G20- / G20+ comparison (Hostin 2023) for every network pair.

    Muscles are split by the fat fraction measured with the reference
    network (``<ff_metric>_b``); see
    :func:`bids_muscle.stats.agreement.g20_comparison` for the tests.

    Returns
    -------
    pandas.DataFrame
        ``by`` columns, ``metric`` and the keys of ``g20_comparison``.
    """
    metrics = _delta_metrics(differences, metrics)
    by = list(by)
    _require(differences, by + [f"{ff_metric}_b"] + [f"{m}_{s}" for m in metrics for s in "ab"])
    rows = []
    for key, group in differences.groupby(by, sort=True, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        ff = group[f"{ff_metric}_b"].to_numpy(dtype=float)
        for m in metrics:
            res = agreement.g20_comparison(ff, group[f"{m}_a"].to_numpy(dtype=float),
                                           group[f"{m}_b"].to_numpy(dtype=float),
                                           threshold_percent=threshold_percent, alpha=alpha)
            rows.append({**dict(zip(by, key)), "metric": m, **res})
    return pd.DataFrame(rows)


def site_effects(
    tidy: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    by: Sequence[str] = ("region", "muscle", "side", "network"),
    min_per_site: int = MIN_PER_SITE,
) -> pd.DataFrame:
    """Kruskal-Wallis test of a site effect for every metric and group.

    A group is tested only when it holds at least two sites and every site
    has at least ``min_per_site`` participants: with fewer, the test's
    chi-square approximation means nothing (one participant per site gives
    the same p on every row). :func:`site_test_coverage` says why a table
    is empty.

    Returns
    -------
    pandas.DataFrame
        ``by`` columns, ``metric``, ``statistic`` (H), ``p_value``,
        ``n_sites``, ``n``; see :func:`bids_muscle.stats.agreement.site_effect`.
    """
    metrics = list(metrics) if metrics is not None else agreement_metrics(tidy)
    by = list(by)
    _require(tidy, by + ["site", "participant"] + metrics)
    rows = []
    for key, group in tidy.groupby(by, sort=True, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        per_site = group.groupby("site", observed=True)["participant"].nunique()
        if len(per_site) < 2 or per_site.min() < min_per_site:
            continue
        sites = group["site"].to_numpy()
        for m in metrics:
            res = agreement.site_effect(group[m].to_numpy(dtype=float), sites)
            rows.append({**dict(zip(by, key)), "metric": m, **res})
    return pd.DataFrame(rows, columns=[*by, "metric", "statistic", "p_value", "n_sites", "n"])


def site_test_coverage(tidy: pd.DataFrame, min_per_site: int = MIN_PER_SITE) -> str | None:
    """Why no site test can be run on ``tidy`` (one sentence), or None when one can.

    Counts participants per site over the whole table; see :func:`site_effects`.
    """
    _require(tidy, ["site", "participant"])
    per_site = tidy.groupby("site", observed=True)["participant"].nunique().sort_index()
    counts = ", ".join(f"{site}: {n}" for site, n in per_site.items())
    if len(per_site) < 2:
        return f"no site test: one site only ({counts} participant(s))"
    if per_site.min() < min_per_site:
        return (f"no site test: a Kruskal-Wallis test needs at least {min_per_site} participants at every site "
                f"(participants per site: {counts})")
    return None


def segmentation_agreement_summary(
    comparisons: pd.DataFrame,
    by: Sequence[str] = ("network", "region"),
) -> pd.DataFrame:
    """Summary of stacked segmentation comparisons (Hostin 2023, Table 1).

    Parameters
    ----------
    comparisons : pandas.DataFrame
        Stacked outputs of
        :func:`bids_muscle.stats.agreement.compare_segmentations` (network
        under test in ``network``) with the ``by`` columns.
    by : sequence of str
        Grouping columns.

    Returns
    -------
    pandas.DataFrame
        Per group: ``n`` (muscles in the reference), ``dice_mean``,
        ``dice_sd``, ``dice_median`` (absent muscles count with Dice 0),
        ``outlier_rate`` (Dice below
        ``Q1 - 1.5 IQR`` of the group, over muscles found by both),
        ``absence_rate``, ``hd95_median_mm``, ``assd_median_mm``, and for
        every ``delta_<m>`` column ``bias_<m>``, ``sd_<m>`` and
        ``r_dice_abs_<m>`` (Pearson correlation of Dice with the absolute
        error over muscles found by both).
    """
    by = list(by)
    need = by + ["dice", "present_a", "present_b"]
    _require(comparisons, need)
    deltas = [c for c in comparisons.columns if c.startswith("delta_")]
    frame = comparisons.loc[comparisons["present_b"].astype(bool)].copy()
    found = frame["present_a"].astype(bool)
    frame["absent_"] = (~found).astype(float)
    frame["dice_found_"] = frame["dice"].where(found)

    grouped = frame.groupby(by, sort=True, observed=True)
    out = grouped.size().rename("n").to_frame()
    out["dice_mean"] = grouped["dice"].mean()
    out["dice_sd"] = grouped["dice"].std(ddof=1)
    out["dice_median"] = grouped["dice"].median()
    q1 = grouped["dice_found_"].transform(lambda s: s.quantile(0.25))
    q3 = grouped["dice_found_"].transform(lambda s: s.quantile(0.75))
    frame["outlier_"] = (frame["dice_found_"] < q1 - 1.5 * (q3 - q1)).astype(float).where(
        frame["dice_found_"].notna())
    grouped = frame.groupby(by, sort=True, observed=True)
    out["outlier_rate"] = grouped["outlier_"].mean()
    out["absence_rate"] = grouped["absent_"].mean()
    for col in ("hd95_mm", "assd_mm"):
        if col in frame.columns:
            out[f"{col[:-3]}_median_mm"] = grouped[col].median()
    for col in deltas:
        m = col[len("delta_"):]
        out[f"bias_{m}"] = grouped[col].mean()
        out[f"sd_{m}"] = grouped[col].std(ddof=1)
        frame[f"abs_{m}_"] = frame[col].abs()
        pair = frame[["dice_found_", f"abs_{m}_"]].dropna()
        pair = pair.join(frame[by])
        out[f"r_dice_abs_{m}"] = pair.groupby(by, sort=True, observed=True).apply(
            _pearson, include_groups=False)
    return out.reset_index()


def _pearson(group: pd.DataFrame) -> float:
    x = group.iloc[:, 0].to_numpy(dtype=float)
    y = group.iloc[:, 1].to_numpy(dtype=float)
    return agreement.dice_error_correlation(x, y)["r"]


def _require(table: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks columns {missing}")
