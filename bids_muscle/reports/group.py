"""Group report: figures and tables from the group TSV files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from jinja2 import Environment, PackageLoader, select_autoescape  # noqa: E402

from bids_muscle import bids  # noqa: E402

SITE_P_FLAG = 0.05


def _read(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"])


def _distribution_figure(tidy: pd.DataFrame, metric: str, out: Path) -> bool:
    rows = tidy[(tidy["label"] > 0) & tidy[metric].notna()] if "label" in tidy else tidy[tidy[metric].notna()]
    if rows.empty:
        return False
    muscles = sorted(rows["muscle"].unique())
    sites = sorted(rows["site"].astype(str).unique())
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(muscles) * len(sites)), 3.2))
    width = 0.8 / len(sites)
    for k, site in enumerate(sites):
        data = [rows[(rows["muscle"] == m) & (rows["site"].astype(str) == site)][metric].to_numpy() for m in muscles]
        pos = np.arange(len(muscles)) + k * width
        box = ax.boxplot([d if d.size else [np.nan] for d in data], positions=pos, widths=width * 0.9, patch_artist=True, showfliers=False)
        for patch in box["boxes"]:
            patch.set_facecolor(plt.get_cmap("tab10")(k))
        ax.plot([], [], color=plt.get_cmap("tab10")(k), label=site, linewidth=6)
    ax.set_xticks(np.arange(len(muscles)) + 0.4 - width / 2)
    ax.set_xticklabels(muscles, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    fig.savefig(out, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return True


def _bland_altman_figure(diffs: pd.DataFrame, metric: str, out: Path) -> bool:
    a, b, d = f"{metric}_a", f"{metric}_b", f"delta_{metric}"
    if not {a, b, d} <= set(diffs.columns) or diffs.empty:
        return False
    pairs = diffs.groupby(["network_a", "network_b"])
    fig, axes = plt.subplots(1, len(pairs), figsize=(4 * len(pairs), 3), squeeze=False)
    for ax, ((na, nb_), rows) in zip(axes[0], pairs):
        mean = (rows[a] + rows[b]) / 2.0
        delta = rows[d]
        ok = mean.notna() & delta.notna()
        ax.scatter(mean[ok], delta[ok], s=6)
        if ok.sum() > 1:
            bias, sd = delta[ok].mean(), delta[ok].std(ddof=1)
            for y, style in ((bias, "-"), (bias - 1.96 * sd, "--"), (bias + 1.96 * sd, "--")):
                ax.axhline(y, color="k", linestyle=style, linewidth=0.8)
        ax.set_title(f"{na} - {nb_}", fontsize=8)
        ax.set_xlabel(f"mean {metric}", fontsize=7)
        ax.set_ylabel(f"difference {metric}", fontsize=7)
    fig.savefig(out, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return True


def _dice_figure(agreement: pd.DataFrame, out: Path) -> bool:
    rows = agreement[agreement["present_b"].astype(bool)]
    if rows.empty:
        return False
    pairs = [f"{a} vs {b}" for a, b in zip(rows["network_a"], rows["network_b"])]
    rows = rows.assign(pair=pairs, muscle_region=rows["region"] + ": " + rows["muscle"])
    muscles = sorted(rows["muscle_region"].unique())
    pair_names = sorted(rows["pair"].unique())
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(muscles) * len(pair_names)), 3.2))
    width = 0.8 / len(pair_names)
    for k, pair in enumerate(pair_names):
        data = [rows[(rows["muscle_region"] == m) & (rows["pair"] == pair)]["dice"].dropna().to_numpy() for m in muscles]
        box = ax.boxplot([d if d.size else [np.nan] for d in data], positions=np.arange(len(muscles)) + k * width,
                         widths=width * 0.9, patch_artist=True, showfliers=True)
        for patch in box["boxes"]:
            patch.set_facecolor(plt.get_cmap("tab10")(k))
        ax.plot([], [], color=plt.get_cmap("tab10")(k), label=pair, linewidth=6)
    ax.set_xticks(np.arange(len(muscles)) + 0.4 - width / 2)
    ax.set_xticklabels(muscles, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.savefig(out, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return True


def build_group_report(out_dir: Path, tables: dict[str, str], command: str = "", notes: list[str] | None = None) -> Path:
    """Write ``group/report.html`` with figures in ``group/figures/``."""
    group_dir = Path(out_dir) / "group"
    fig_dir = group_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for old in fig_dir.glob("*.png"):  # the folder is the report's own: no figure of an earlier run stays
        old.unlink()
    tidy = _read(tables["biomarkers"])
    figures, sections, flags = [], [], []
    for metric in [m for m in ("ff_dixon_percent_mean", "ff_mese_percent_mean", "water_t2_ms_mean", "mtr_percent_mean", "volume_ml") if m in tidy]:
        png = fig_dir / f"distribution_{metric}.png"
        if _distribution_figure(tidy, metric, png):
            figures.append({"title": f"{metric} per muscle and site", "src": png.relative_to(group_dir).as_posix()})
    if "network_differences" in tables:
        diffs = _read(tables["network_differences"])
        for metric in ("ff_mese_percent_mean", "water_t2_ms_mean", "volume_ml"):
            png = fig_dir / f"bland_altman_{metric}.png"
            if _bland_altman_figure(diffs, metric, png):
                figures.append({"title": f"Bland-Altman: {metric} between networks", "src": png.relative_to(group_dir).as_posix()})
        sections.append({"title": "Bland-Altman statistics", "table": _read(tables["bland_altman"]).to_html(index=False, na_rep="n/a", float_format=lambda v: f"{v:.3g}")})
    if "agreement" in tables:
        png = fig_dir / "dice_per_muscle.png"
        if _dice_figure(_read(tables["agreement"]), png):
            figures.append({"title": "Dice per muscle between segmentations", "src": png.relative_to(group_dir).as_posix()})
        sections.append({"title": "Segmentation agreement (Dice, HD95, absence and outlier rates)",
                         "table": _read(tables["agreement_summary"]).to_html(index=False, na_rep="n/a", float_format=lambda v: f"{v:.3g}")})
    if "site_effects" in tables:
        effects = _read(tables["site_effects"])
        if "p_value" in effects:
            for _, r in effects[effects["p_value"] < SITE_P_FLAG].iterrows():
                flags.append(f"site effect (Kruskal-Wallis p = {r['p_value']:.3g}) for {r.get('metric', '')} in {r.get('region', '')} {r.get('muscle', '')}")
    summary = _read(tables["site_summary"])
    sections.append({"title": "Per-site medians and IQR", "table": summary.head(400).to_html(index=False, na_rep="n/a", float_format=lambda v: f"{v:.3g}")})
    excluded = _read(tables["excluded"])
    env = Environment(loader=PackageLoader("bids_muscle.reports", "templates"), autoescape=select_autoescape(["html"]))
    html = env.get_template("group.html").render(
        n_participants=tidy["participant"].nunique(),
        n_sites=tidy["site"].nunique(),
        networks=sorted(tidy["network"].astype(str).unique()),
        tables=[(name, Path(path).relative_to(group_dir).as_posix()) for name, path in tables.items()],
        excluded=excluded.to_html(index=False) if not excluded.empty else "",
        flags=flags,
        notes=notes or [],
        figures=figures,
        sections=sections,
        command=command,
    )
    return bids.write_text_atomic(group_dir / "report.html", html)
