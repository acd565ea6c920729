"""Group report: figures and tables from the group TSV files, thigh and calf apart.

For each region: the fat-infiltration pattern of every participant (a heat
map of mean fat fraction, participants x muscles, both ordered by
hierarchical clustering so that participants with the same pattern sit
together) and the distributions per muscle and site. Then the segmentation
agreement, the statistics that the numbers allow (and the reason for those
they do not), the per-site summary in full, links to every participant
report and table, the methods with references, the software and the
command.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.cluster import hierarchy  # noqa: E402

from bids_muscle import bids  # noqa: E402
from bids_muscle.reports import methods  # noqa: E402
from bids_muscle.reports.assets import render  # noqa: E402
from bids_muscle.seg.labels import REGIONS  # noqa: E402

SITE_P_FLAG = 0.05
#: Tables longer than this are linked, not shown; the page says so.
SHOWN_ROWS = 2000
#: Metrics whose distributions are drawn, with their axis titles.
DISTRIBUTIONS = (
    ("ff_dixon_percent_mean", "fat fraction, Dixon (%)"),
    ("ff_mese_percent_mean", "fat fraction, MESE (%)"),
    ("water_t2_ms_mean", "water T2 (ms)"),
    ("mtr_percent_mean", "MTR (%)"),
    ("volume_ml", "volume (ml)"),
    ("imat_fraction", "IMAT fraction"),
)
#: Fat-fraction columns of the pattern heat map, in order of preference.
PATTERN_COLUMNS = ("ff_dixon_percent_mean", "ff_mese_percent_mean")
_ID_TEXT = {"participant": str, "session": str, "site": str, "session_from": str, "session_to": str}


def _read(path: str | Path) -> pd.DataFrame:
    table = pd.read_csv(path, sep="\t", na_values=["n/a"], dtype=_ID_TEXT)
    ids = [c for c in _ID_TEXT if c in table]
    table[ids] = table[ids].fillna("n/a")  # identifiers stay text: participant 01 is not 1, a missing site is n/a
    return table


def _html(table: pd.DataFrame) -> str:
    return table.to_html(index=False, na_rep="n/a", float_format=lambda v: f"{v:.3g}", border=0)


def _shown(name: str, table: pd.DataFrame, href: str) -> dict:
    """A table section: the whole table, or, when too long to show, the reason and the link."""
    if len(table) <= SHOWN_ROWS:
        return {"title": name, "table": _html(table), "note": f"{len(table)} rows; also in {href}", "href": href}
    return {"title": name, "table": "", "href": href,
            "note": f"{len(table)} rows, more than the {SHOWN_ROWS} shown in a page: open {href} for the complete table"}


def _participant_key(row) -> str:
    session = row.get("session")
    return f"sub-{row['participant']}" + (f" ses-{session}" if session not in (None, "n/a") else "")


def cluster_order(matrix: np.ndarray) -> np.ndarray:
    """Leaf order of average-linkage clustering of the rows (Euclidean; NaN filled with the column mean)."""
    if matrix.shape[0] < 3:
        return np.arange(matrix.shape[0])
    filled = np.where(np.isfinite(matrix), matrix, np.nanmean(np.where(np.isfinite(matrix), matrix, np.nan), axis=0))
    filled = np.nan_to_num(filled, nan=0.0)
    return hierarchy.leaves_list(hierarchy.linkage(filled, method="average", metric="euclidean",
                                                   optimal_ordering=True))


def pattern_matrix(tidy: pd.DataFrame, column: str) -> pd.DataFrame:
    """Participants (and sessions) x muscles-with-side of ``column``, rows and columns ordered by similarity."""
    rows = tidy[(tidy["label"] > 0) & tidy[column].notna()] if "label" in tidy else tidy[tidy[column].notna()]
    if rows.empty:
        return pd.DataFrame()
    rows = rows.assign(who=rows.apply(_participant_key, axis=1),
                       what=rows["abbreviation"].astype(str) if "abbreviation" in rows else rows["muscle"])
    matrix = rows.pivot_table(index="who", columns="what", values=column, aggfunc="mean")
    values = matrix.to_numpy(dtype=np.float64)
    return matrix.iloc[cluster_order(values), cluster_order(values.T)]


def _pattern_figure(matrix: pd.DataFrame, title: str, out: Path) -> None:
    n_rows, n_cols = matrix.shape
    fig, ax = plt.subplots(figsize=(min(2.5 + 0.38 * n_cols, 24), min(1.8 + 0.32 * n_rows, 60)), layout="constrained")
    colours = plt.get_cmap("YlOrRd").with_extremes(bad="#dddddd")
    shown = ax.pcolormesh(np.ma.masked_invalid(matrix.to_numpy(dtype=float)), cmap=colours, vmin=0, vmax=100,
                          edgecolors="white", linewidth=0.5)
    ax.set_xticks(np.arange(n_cols) + 0.5, matrix.columns, rotation=90, fontsize=9)
    ax.set_yticks(np.arange(n_rows) + 0.5, matrix.index, fontsize=9)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=11)
    bar = fig.colorbar(shown, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("mean fat fraction (%)", fontsize=10)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def _distribution_figure(rows: pd.DataFrame, metric: str, axis_title: str, out: Path) -> bool:
    rows = rows[(rows["label"] > 0) & rows[metric].notna()] if "label" in rows else rows[rows[metric].notna()]
    if rows.empty:
        return False
    muscles = list(dict.fromkeys(rows["muscle"]))
    sites = sorted(rows["site"].astype(str).unique())
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(muscles) * max(len(sites), 1) + 1.5), 3.6), layout="constrained")
    width = 0.8 / len(sites)
    for k, site in enumerate(sites):
        data = [rows[(rows["muscle"] == m) & (rows["site"].astype(str) == site)][metric].to_numpy() for m in muscles]
        box = ax.boxplot([d if d.size else [np.nan] for d in data], positions=np.arange(len(muscles)) + k * width,
                         widths=width * 0.9, patch_artist=True, showfliers=False)
        for patch in box["boxes"]:
            patch.set_facecolor(plt.get_cmap("tab10")(k))
        for m, d in enumerate(data):  # every participant as a dot: few per site is the usual case
            ax.plot(np.full(d.size, m + k * width), d, "o", color="k", markersize=2.5)
        n_site = rows.loc[rows["site"].astype(str) == site, "participant"].nunique()
        ax.plot([], [], color=plt.get_cmap("tab10")(k), label=f"{site} (n = {n_site})", linewidth=6)
    ax.set_xticks(np.arange(len(muscles)) + 0.4 - width / 2, [m.replace("_", " ") for m in muscles],
                  rotation=50, ha="right", fontsize=9)
    ax.set_ylabel(axis_title, fontsize=10)
    ax.legend(fontsize=8, title="site", title_fontsize=8)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return True


def _bland_altman_figure(diffs: pd.DataFrame, metric: str, out: Path) -> bool:
    a, b, d = f"{metric}_a", f"{metric}_b", f"delta_{metric}"
    if not {a, b, d} <= set(diffs.columns) or diffs.empty:
        return False
    pairs = diffs.groupby(["network_a", "network_b"])
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.4), squeeze=False, layout="constrained")
    for ax, ((na, nb_), rows) in zip(axes[0], pairs):
        mean = (rows[a] + rows[b]) / 2.0
        delta = rows[d]
        ok = mean.notna() & delta.notna()
        ax.scatter(mean[ok], delta[ok], s=8)
        if ok.sum() > 1:
            bias, sd = delta[ok].mean(), delta[ok].std(ddof=1)
            for y, style in ((bias, "-"), (bias - 1.96 * sd, "--"), (bias + 1.96 * sd, "--")):
                ax.axhline(y, color="k", linestyle=style, linewidth=0.8)
        ax.set_title(f"{na} - {nb_}", fontsize=10)
        ax.set_xlabel(f"mean {metric}", fontsize=9)
        ax.set_ylabel(f"difference {metric}", fontsize=9)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return True


def _dice_figure(agreement: pd.DataFrame, out: Path) -> bool:
    rows = agreement[agreement["present_b"].astype(bool)]
    if rows.empty:
        return False
    rows = rows.assign(pair=[f"{a} vs {b}" for a, b in zip(rows["network_a"], rows["network_b"])],
                       muscle_region=rows["region"] + ": " + rows["muscle"])
    muscles = sorted(rows["muscle_region"].unique())
    pair_names = sorted(rows["pair"].unique())
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(muscles) * len(pair_names)), 3.6), layout="constrained")
    width = 0.8 / len(pair_names)
    for k, pair in enumerate(pair_names):
        data = [rows[(rows["muscle_region"] == m) & (rows["pair"] == pair)]["dice"].dropna().to_numpy() for m in muscles]
        box = ax.boxplot([d if d.size else [np.nan] for d in data], positions=np.arange(len(muscles)) + k * width,
                         widths=width * 0.9, patch_artist=True, showfliers=True)
        for patch in box["boxes"]:
            patch.set_facecolor(plt.get_cmap("tab10")(k))
        ax.plot([], [], color=plt.get_cmap("tab10")(k), label=pair, linewidth=6)
    ax.set_xticks(np.arange(len(muscles)) + 0.4 - width / 2, muscles, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return True


def _participants(tidy: pd.DataFrame, out_dir: Path) -> list[dict]:
    """One row per participant and session with its site, regions and the relative link to its report."""
    keys = [c for c in ("participant", "session") if c in tidy]
    out = []
    for ids, rows in tidy.groupby(keys, sort=True, dropna=False):
        ids = ids if isinstance(ids, tuple) else (ids,)
        participant = str(ids[0])
        session = str(ids[1]) if len(ids) > 1 and ids[1] != "n/a" else None
        report = bids.report_path(out_dir, participant, session)
        out.append({"participant": participant, "session": session or "",
                    "site": ", ".join(sorted(rows["site"].astype(str).unique())) if "site" in rows else "",
                    "regions": ", ".join(r for r in REGIONS if r in set(rows["region"])),
                    "href": f"../{report.name}",
                    "exists": report.is_file()})
    return out


def _region_figures(tidy: pd.DataFrame, region: str, fig_dir: Path, group_dir: Path) -> dict:
    rows = tidy[tidy["region"] == region]
    section = {"name": region, "patterns": [], "distributions": [], "n": rows["participant"].nunique()}
    for network, net_rows in rows.groupby("network", sort=True):
        column = next((c for c in PATTERN_COLUMNS if c in net_rows and net_rows[c].notna().any()), None)
        if column is None:
            continue
        matrix = pattern_matrix(net_rows, column)
        if matrix.empty:
            continue
        png = fig_dir / f"pattern_{region}_{network}.png"
        source = "Dixon" if "dixon" in column else "MESE"
        _pattern_figure(matrix, f"{region}: mean fat fraction ({source}), {network}", png)
        section["patterns"].append({
            "src": png.relative_to(group_dir).as_posix(), "network": str(network),
            "title": f"{region.capitalize()} fat-infiltration pattern ({source} fat fraction, {network})",
            "caption": f"{matrix.shape[0]} participant(s) x {matrix.shape[1]} muscles; rows and columns ordered by "
                       "average-linkage hierarchical clustering (Euclidean distance), so similar patterns sit "
                       "together; grey: no value" + ("" if matrix.shape[0] >= 3 else "; fewer than 3 participants: "
                                                         "rows in table order")})
    for metric, axis_title in DISTRIBUTIONS:
        if metric not in rows:
            continue
        png = fig_dir / f"distribution_{region}_{metric}.png"
        if _distribution_figure(rows, metric, axis_title, png):
            section["distributions"].append({"src": png.relative_to(group_dir).as_posix(),
                                             "title": f"{region.capitalize()}: {axis_title} per muscle and site"})
    return section


def build_group_report(out_dir: Path, tables: dict[str, str], command: str = "", notes: list[str] | None = None,
                       methods_text: list[str] | None = None) -> Path:
    """Write ``group/report.html`` with figures in ``group/figures/``."""
    out_dir = Path(out_dir)
    group_dir = out_dir / "group"
    fig_dir = group_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for old in fig_dir.glob("*.png"):  # the folder is the report's own: no figure of an earlier run stays
        old.unlink()
    tidy = _read(tables["biomarkers"])
    found = set(tidy["region"].astype(str))
    regions = [_region_figures(tidy, r, fig_dir, group_dir) for r in [*REGIONS, *sorted(found - set(REGIONS))]
               if r in found]
    href = {name: Path(path).relative_to(group_dir).as_posix() for name, path in tables.items()}
    agreement, statistics = [], []
    if "agreement" in tables:
        png = fig_dir / "dice_per_muscle.png"
        if _dice_figure(_read(tables["agreement"]), png):
            agreement.append({"title": "Dice per muscle between segmentations", "src": png.relative_to(group_dir).as_posix()})
    if "network_differences" in tables:
        diffs = _read(tables["network_differences"])
        for metric in ("ff_mese_percent_mean", "water_t2_ms_mean", "volume_ml"):
            png = fig_dir / f"bland_altman_{metric}.png"
            if _bland_altman_figure(diffs, metric, png):
                agreement.append({"title": f"Bland-Altman: {metric} between networks",
                                  "src": png.relative_to(group_dir).as_posix()})
    sections = []
    if "agreement_summary" in tables:
        sections.append(_shown("Segmentation agreement (Dice, HD95, absence and outlier rates)",
                               _read(tables["agreement_summary"]), href["agreement_summary"]))
    if "bland_altman" in tables:
        sections.append(_shown("Bland-Altman statistics between networks", _read(tables["bland_altman"]),
                               href["bland_altman"]))
    flags = []
    if "site_effects" in tables:
        effects = _read(tables["site_effects"])
        statistics.append(_shown("Site effects (Kruskal-Wallis)", effects, href["site_effects"]))
        if "p_value" in effects:
            for _, r in effects[effects["p_value"] < SITE_P_FLAG].iterrows():
                flags.append(f"site effect (Kruskal-Wallis p = {r['p_value']:.3g}) for {r.get('metric', '')} in "
                             f"{r.get('region', '')} {r.get('muscle', '')}")
    if "longitudinal" in tables:
        changes = _read(tables["longitudinal"])
        beyond = changes[changes["exceeds_error"] == 1] if "exceeds_error" in changes else changes.iloc[:0]
        shown = _shown("Changes between sessions beyond the measurement error", beyond, href["longitudinal"])
        shown["note"] = (f"{len(beyond)} of {len(changes)} changes (muscle, metric and pair of sessions) have a 95 % "
                         "interval that excludes 0 (independent, normal errors of the two visits); " + shown["note"])
        statistics.append(shown)
    if "site_summary" in tables:
        sections.append(_shown("Per-site medians and IQR", _read(tables["site_summary"]), href["site_summary"]))
    excluded = _read(tables["excluded"]) if "excluded" in tables else pd.DataFrame()
    paragraphs = methods.methods_paragraphs({}, extra=methods_text)
    html = render(
        "group.html",
        n_participants=tidy["participant"].nunique(),
        n_sites=tidy["site"].nunique(),
        networks=sorted(tidy["network"].astype(str).unique()),
        participants=_participants(tidy, out_dir),
        tables=list(href.items()),
        excluded=_html(excluded) if not excluded.empty else "",
        flags=flags,
        notes=notes or [],
        regions=regions,
        agreement=agreement,
        statistics=statistics,
        sections=sections,
        methods=paragraphs,
        references=methods.cited(paragraphs),
        versions=methods.versions(),
        command=command,
    )
    return bids.write_text_atomic(group_dir / "report.html", html)
