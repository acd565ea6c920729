"""Participant report: figures of every map and segmentation found in the derivatives.

The report is assembled from what is on disk under ``sub-<label>/``, so it
shows exactly what the run wrote. Figures go to ``sub-<label>/figures/`` and
``sub-<label>.html`` links them with relative paths (it opens offline).
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nb  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from jinja2 import Environment, PackageLoader, select_autoescape  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from bids_muscle import bids  # noqa: E402

#: (suffix, desc) of maps shown, with display title, unit scale, unit and colour range.
MAPS = (
    ("T2map", "water", "water T2", 1000.0, "ms", (20, 60)),
    ("T2map", None, "T2", 1000.0, "ms", (20, 80)),
    ("FFmap", "mese", "fat fraction (MESE)", 1.0, "%", (0, 100)),
    ("FFmap", "dixon", "fat fraction (Dixon)", 1.0, "%", (0, 100)),
    ("PDmap", None, "proton density", 1.0, "a.u.", None),
    ("TB1map", "epg", "B1 (EPG)", 1.0, "relative", (0.6, 1.3)),
    ("TB1map", "dam", "B1 (double angle)", 1.0, "relative", (0.6, 1.3)),
    ("R2starmap", None, "R2*", 1.0, "1/s", (0, 150)),
    ("MTRmap", None, "MTR", 1.0, "%", (0, 60)),
)
PLAUSIBLE = {"ff": 90.0, "water_t2_ms": (15.0, 80.0)}


@dataclass
class RegionSection:
    name: str
    figures: list = field(default_factory=list)
    table: str = ""


def _entities(path: Path) -> dict:
    return dict(re.findall(r"([a-z]+)-([a-zA-Z0-9]+)", path.name.split(".")[0]))


def _slices(shape_z: int, n: int = 3) -> list[int]:
    return sorted({int(round(v)) for v in np.linspace(shape_z * 0.2, shape_z * 0.8 - 1, n)})


def _load(path: Path) -> np.ndarray:
    return np.asarray(nb.as_closest_canonical(nb.load(str(path))).dataobj, dtype=np.float32)


def _show(ax, image2d, **kw):
    # canonical RAS arrays shown radiologically: anterior up, subject's right on the image left
    ax.imshow(np.rot90(image2d)[:, ::-1], **kw)
    ax.axis("off")


def _label_colormap(table: Path) -> tuple[ListedColormap, dict]:
    rows = pd.read_csv(table, sep="\t")
    n = int(rows["index"].max()) + 1
    colours = np.zeros((n, 4))
    for _, r in rows.iterrows():
        colours[int(r["index"])] = matplotlib.colors.to_rgba(r.get("color", "#ff0000"))
    return ListedColormap(colours), dict(zip(rows["index"], rows.get("abbreviation", rows["name"])))


def _seg_figure(anat: np.ndarray, dseg: np.ndarray, table: Path | None, out: Path, title: str,
                mask_colour: str = "#ff3030") -> None:
    zs = _slices(anat.shape[2])
    fig, axes = plt.subplots(1, len(zs), figsize=(4 * len(zs), 2.6), squeeze=False)
    vmax = np.percentile(anat, 99.5)
    if table is not None and table.exists():
        cmap, names = _label_colormap(table)
    else:  # a binary mask: one bright colour
        cmap, names = ListedColormap([(0, 0, 0, 0), mask_colour]), {}
    for ax, z in zip(axes[0], zs):
        _show(ax, anat[..., z], cmap="gray", vmin=0, vmax=vmax)
        lab = np.ma.masked_equal(dseg[..., z], 0)
        _show(ax, lab, cmap=cmap, vmin=0, vmax=cmap.N - 1, alpha=0.45, interpolation="nearest")
        ax.set_title(f"slice {z}", fontsize=8)
    present = [int(v) for v in np.unique(dseg) if v > 0]
    if names and present:
        handles = [matplotlib.patches.Patch(color=cmap(v), label=str(names.get(v, v))) for v in present]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 13), fontsize=6, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.savefig(out, dpi=80, bbox_inches="tight")
    plt.close(fig)


def _maps_figure(maps: list[tuple[str, np.ndarray, float, str, tuple | None]], out: Path) -> None:
    fig, axes = plt.subplots(1, len(maps), figsize=(3.6 * len(maps), 2.4), squeeze=False)
    for ax, (title, data, scale, unit, lim) in zip(axes[0], maps):
        shown = data[..., data.shape[2] // 2] * scale  # middle slice of each map (grids may differ, e.g. B1)
        if lim is None:
            finite = shown[np.isfinite(shown) & (shown > 0)]
            lim = (0, float(np.percentile(finite, 99))) if finite.size else (0, 1)
        _show(ax, np.ma.masked_invalid(shown), cmap="viridis", vmin=lim[0], vmax=lim[1])
        ax.set_title(title, fontsize=8)
        cbar = fig.colorbar(ax.images[-1], ax=ax, fraction=0.04)
        cbar.set_label(unit, fontsize=7)
        cbar.ax.tick_params(labelsize=6)
    fig.savefig(out, dpi=80, bbox_inches="tight")
    plt.close(fig)


def _versions() -> list[tuple[str, str]]:
    out = []
    for pkg in ("bids_muscle", "nipype", "niworkflows", "pybids", "SimpleITK", "torch", "numpy", "nibabel"):
        try:
            out.append((pkg, importlib.metadata.version(pkg)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _warnings_from_table(table: pd.DataFrame, region: str) -> list[str]:
    warnings = []
    muscle_rows = table[table["label"] > 0] if "label" in table else table
    for column in [c for c in muscle_rows.columns if c.startswith("ff_") and c.endswith("_mean")]:
        high = muscle_rows[muscle_rows[column] > PLAUSIBLE["ff"]]
        for _, r in high.iterrows():
            warnings.append(f"{region}: {r.get('name', r.get('label'))} has mean {column} {r[column]:.1f} % (> 90 %)")
    low, high_t2 = PLAUSIBLE["water_t2_ms"]
    if "water_t2_ms_mean" in muscle_rows:
        odd = muscle_rows[(muscle_rows["water_t2_ms_mean"] < low) | (muscle_rows["water_t2_ms_mean"] > high_t2)]
        for _, r in odd.iterrows():
            warnings.append(f"{region}: {r.get('name', r.get('label'))} has water T2 {r['water_t2_ms_mean']:.1f} ms (outside 15-80 ms)")
    if {"network", "voxel_count", "name"} <= set(muscle_rows.columns):
        for name, rows in muscle_rows.groupby("name", sort=False):
            found = sorted(rows.loc[rows["voxel_count"] > 0, "network"].astype(str))
            missing = sorted(rows.loc[rows["voxel_count"] == 0, "network"].astype(str))
            if missing:
                where = f"found by {', '.join(found)} but " if found else ""
                warnings.append(f"{region}: {name} {where}absent in {', '.join(missing)}")
    return warnings


def build_participant_report(
    out_dir: Path,
    subject: str,
    session: str | None = None,
    command: str = "",
    methods: list[str] | None = None,
    warnings: list[str] | None = None,
) -> Path:
    """Write ``sub-<subject>.html`` and its figures from the derivatives on disk."""
    out_dir = Path(out_dir)
    anat_dir = bids.subject_dir(out_dir, subject, session)
    fig_dir = out_dir / f"sub-{subject}" / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    warnings = list(warnings or [])
    sections = []
    files = sorted(anat_dir.glob("*.nii.gz")) if anat_dir.exists() else []
    regions = sorted({_entities(f).get("acq") for f in files} - {None})
    prefix = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    for region in regions:
        sec = RegionSection(region)
        rfiles = [f for f in files if _entities(f).get("acq") == region]
        anat = next((f for f in rfiles if _entities(f).get("desc") == "n4"), None)
        anat_data = _load(anat) if anat else None
        for dseg in [f for f in rfiles if f.name.endswith("_dseg.nii.gz")]:
            net = _entities(dseg).get("desc", "seg")
            png = fig_dir / f"{prefix}_acq-{region}_desc-{net}_dseg.png"
            _seg_figure(anat_data, _load(dseg), out_dir / f"desc-{net}_dseg.tsv", png, f"{region}: segmentation {net}")
            sec.figures.append({"src": png.relative_to(out_dir).as_posix(), "caption": f"Segmentation '{net}' over the anatomical reference"})
        for mask_desc in ("muscleregion", "imat"):
            mask = next((f for f in rfiles if f.name.endswith(f"desc-{mask_desc}_mask.nii.gz")), None)
            mask_data = _load(mask) if mask is not None else None
            if mask_data is not None and anat_data is not None and mask_data.shape == anat_data.shape:
                png = fig_dir / f"{prefix}_acq-{region}_desc-{mask_desc}_mask.png"
                colour = "#ff3030" if mask_desc == "imat" else "#30c0ff"
                _seg_figure(anat_data, mask_data.astype(int), None, png, f"{region}: {mask_desc} mask", colour)
                sec.figures.append({"src": png.relative_to(out_dir).as_posix(), "caption": bids.DESCRIPTIONS[mask_desc]})
        maps = []
        for suffix, desc, title, scale, unit, lim in MAPS:
            match = [f for f in rfiles if f.name.endswith(f"_{suffix}.nii.gz") and _entities(f).get("desc") == desc]
            if match:
                maps.append((title, _load(match[0]), scale, unit, lim))
        if maps:
            png = fig_dir / f"{prefix}_acq-{region}_maps.png"
            _maps_figure(maps, png)
            sec.figures.append({"src": png.relative_to(out_dir).as_posix(), "caption": "Quantitative maps (middle slice) with units"})
        elif anat_data is not None:
            png = fig_dir / f"{prefix}_acq-{region}_anat.png"
            _maps_figure([("anatomical reference (N4)", anat_data, 1.0, "a.u.", None)], png)
            sec.figures.append({"src": png.relative_to(out_dir).as_posix(), "caption": "Anatomical reference after N4"})
        table_file = anat_dir / f"{prefix}_acq-{region}_biomarkers.tsv"
        if table_file.exists():
            table = pd.read_csv(table_file, sep="\t")
            warnings += _warnings_from_table(table, region)
            shown = table[[c for c in table.columns if not c.endswith(("_p25", "_p75", "_sd"))]]
            sec.table = shown.to_html(index=False, float_format=lambda v: f"{v:.2f}", na_rep="n/a", border=0)
        sections.append(sec)
    if not regions:
        warnings.append(f"no derivatives found under {anat_dir}")
    env = Environment(loader=PackageLoader("bids_muscle.reports", "templates"), autoescape=select_autoescape(["html"]))
    html = env.get_template("participant.html").render(
        subject=subject,
        session=session,
        regions=sections,
        warnings=warnings,
        methods=methods or [],
        versions=_versions(),
        command=command,
    )
    return bids.write_text_atomic(bids.report_path(out_dir, subject, session), html)
