"""Participant report: what the run wrote under ``sub-<label>/``, for a person to check in a minute.

Per region: every slice of the anatomical reference with the outlines of
each segmentation, the muscle region and IMAT as layers that switch off;
the fat-infiltration pattern (muscles x side, coloured by fat fraction);
the per-muscle summary with right and left side by side and the flags, the
full table behind it; each quantitative map as its own figure with its
colour bar. Then the warnings (each model's validity against its target,
per-muscle flags), the methods with their references, the software and
the command. The methods also go to ``logs/sub-<label>_CITATION.md`` and
``.bib``.

Figures go to ``sub-<label>/figures/`` and the page links them with
relative paths; the stylesheet and script are inline, so the report opens
offline and loads nothing from the network.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors  # noqa: E402
import nibabel as nb  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bids_muscle import bids  # noqa: E402
from bids_muscle.reports import figures, methods, summary  # noqa: E402
from bids_muscle.reports.assets import render  # noqa: E402
from bids_muscle.seg.infer import resample_labels  # noqa: E402
from bids_muscle.seg.labels import REGIONS, load_label_table  # noqa: E402
from bids_muscle.seg.zoo import find_card  # noqa: E402

#: (suffix, desc) of the maps shown, with title, factor from the file unit, unit, colour range and colour map.
MAPS = (
    ("FFmap", "dixon", "fat fraction (Dixon)", 1.0, "%", (0, 100), "magma"),
    ("FFmap", "mese", "fat fraction (MESE)", 1.0, "%", (0, 100), "magma"),
    ("T2map", "water", "water T2", 1000.0, "ms", (20, 60), "viridis"),
    ("T2map", None, "T2", 1000.0, "ms", (20, 80), "viridis"),
    ("T2map", "twopoint", "T2 (two echoes)", 1000.0, "ms", (20, 80), "viridis"),
    ("PDmap", None, "proton density", 1.0, "a.u.", None, "gray"),
    ("MTRmap", None, "MTR", 1.0, "%", (0, 60), "viridis"),
    ("R2starmap", None, "R2*", 1.0, "1/s", (0, 150), "viridis"),
    ("TB1map", "epg", "B1 (EPG fit)", 1.0, "relative", (0.6, 1.3), "coolwarm"),
    ("TB1map", "dam", "B1 (double angle)", 1.0, "relative", (0.6, 1.3), "coolwarm"),
)
MASK_LAYERS = (
    ("muscleregion", "muscle region", (0.19, 0.75, 1.0, 1.0), False),
    ("imat", "IMAT", (1.0, 0.1, 0.1, 0.75), True),
)


def _entities(path: Path) -> dict:
    return dict(re.findall(r"([a-z]+)-([a-zA-Z0-9]+)", path.name.split(".")[0]))


def _canonical(path: Path) -> nb.Nifti1Image:
    return nb.as_closest_canonical(nb.load(str(path)))


def _array(img) -> np.ndarray:
    return np.asarray(img.dataobj, dtype=np.float32)


def _spacing_xy(img) -> tuple[float, float]:
    return tuple(float(v) for v in img.header.get_zooms()[:2])


def _sidecar(path: Path) -> dict:
    side = path.with_name(path.name.replace(".nii.gz", ".json"))
    try:
        return json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _label_colours(out_dir: Path, network: str, region: str) -> tuple[dict, list]:
    """Label value -> RGBA, and the legend (value, abbreviation, colour) of a segmentation."""
    table = Path(out_dir) / f"desc-{network}_dseg.tsv"
    if table.is_file():
        rows = pd.read_csv(table, sep="\t")
        entries = [(int(r["index"]), str(r.get("abbreviation", r["name"])), str(r.get("color", "#ff0000")))
                   for _, r in rows.iterrows()]
    else:
        entries = [(lab.index, lab.abbreviation, lab.color) for lab in load_label_table(region)]
    colours = {i: matplotlib.colors.to_rgba(c) for i, _, c in entries if i > 0}
    return colours, [(i, a, c) for i, a, c in entries if i > 0]


def _on_grid(path: Path, target) -> np.ndarray:
    img = _canonical(path)
    data = np.asarray(img.dataobj)
    if data.shape[:3] == target.shape[:3] and np.allclose(img.affine, target.affine, atol=1e-3):
        return data.astype(np.int64)
    return resample_labels(data.astype(np.int32), img.affine, target.shape[:3], target.affine).astype(np.int64)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _viewer(out_dir: Path, fig_dir: Path, stem: str, region: str, anat_path: Path, rfiles: list[Path]) -> dict:
    """Slices of the anatomical reference and one outline layer per segmentation and mask."""
    anat = _canonical(anat_path)
    spacing = _spacing_xy(anat)
    slices = figures.anatomy_slices(_array(anat), spacing, fig_dir, f"{stem}_desc-anat")
    layers = []
    for dseg in sorted(f for f in rfiles if f.name.endswith("_dseg.nii.gz")):
        network = _entities(dseg).get("desc", "seg")
        colours, legend = _label_colours(out_dir, network, region)
        labels = _on_grid(dseg, anat)
        present = set(np.unique(labels).tolist())
        paths = figures.layer_slices(labels, spacing, colours, fig_dir, f"{stem}_desc-{network}_outline")
        layers.append({"id": network, "title": f"{network} muscles",
                       "srcs": [_rel(p, out_dir) for p in paths],
                       "legend": [(abbreviation, colour) for index, abbreviation, colour in legend if index in present]})
    for desc, title, rgba, filled in MASK_LAYERS:
        mask = next((f for f in rfiles if f.name.endswith(f"desc-{desc}_mask.nii.gz")), None)
        if mask is None:
            continue
        paths = figures.layer_slices((_on_grid(mask, anat) > 0).astype(np.int64), spacing, {1: rgba}, fig_dir,
                                     f"{stem}_desc-{desc}_outline", filled=filled)
        layers.append({"id": desc, "title": title, "srcs": [_rel(p, out_dir) for p in paths],
                       "legend": [(title, matplotlib.colors.to_hex(rgba))]})
    return {"id": f"viewer-{region}", "anatomy": [_rel(p, out_dir) for p in slices], "layers": layers,
            "start": len(slices) // 2, "reference": anat_path.name}


def _map_figures(out_dir: Path, fig_dir: Path, stem: str, rfiles: list[Path]) -> list[dict]:
    shown = []
    for suffix, desc, title, scale, unit, limits, cmap in MAPS:
        match = [f for f in rfiles if f.name.endswith(f"_{suffix}.nii.gz") and _entities(f).get("desc") == desc]
        if not match:
            continue
        img = _canonical(match[0])
        data = _array(img) * scale
        png = fig_dir / f"{stem}_{'desc-' + desc + '_' if desc else ''}{suffix}.png"
        z, lim = figures.map_figure(data, _spacing_xy(img), title, unit, limits, png, cmap)
        shown.append({"src": _rel(png, out_dir), "title": title,
                      "caption": f"{title} ({unit}), slice {z + 1} of {data.shape[2]}; colour range "
                                 f"{lim[0]:g}–{lim[1]:g} {unit}; {match[0].name}"})
    return shown


def _model_validity(region: str, rfiles: list[Path], model_dir: str | None) -> list[tuple[str, bool]]:
    out = []
    for dseg in sorted(f for f in rfiles if f.name.endswith("_dseg.nii.gz")):
        model = _sidecar(dseg).get("Model", {})
        name = model.get("Name") or f"{region}_{_entities(dseg).get('desc', 'seg')}"
        try:
            card = json.loads(find_card(name, model_dir).read_text())
        except (ValueError, OSError, json.JSONDecodeError):
            card = None
        out.append(summary.model_validity(region, card, name))
    return out


def _full_table(table: pd.DataFrame) -> str:
    return table.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="n/a", border=0)


def _region_section(out_dir: Path, fig_dir: Path, anat_dir: Path, prefix: str, region: str, files: list[Path],
                    model_dir: str | None) -> tuple[dict, list[str], list[tuple[str, bool]]]:
    rfiles = [f for f in files if _entities(f).get("acq") == region]
    stem = f"{prefix}_acq-{region}"
    section = {"name": region, "viewer": None, "networks": [], "maps": [], "full_table": ""}
    anat = next((f for f in rfiles if _entities(f).get("desc") == "n4"), None)
    if anat is not None:
        section["viewer"] = _viewer(out_dir, fig_dir, stem, region, anat, rfiles)
        sources = _sidecar(anat).get("Sources", [])
        section["viewer"]["source"] = sources[0].split("/")[-1] if sources else anat.name
    warnings = []
    table_file = anat_dir / f"{stem}_biomarkers.tsv"
    if table_file.is_file():
        table = pd.read_csv(table_file, sep="\t", na_values=["n/a"])
        warnings += summary.table_warnings(table, region)
        groups = table.groupby("network", sort=False) if "network" in table else [("", table)]
        for network, rows in groups:
            section["networks"].append({"name": str(network), "summary": summary.left_right_summary(rows),
                                        "pattern": summary.fat_pattern(rows)})
        section["full_table"] = _full_table(table)
        section["table_file"] = _rel(table_file, out_dir)
    section["maps"] = _map_figures(out_dir, fig_dir, stem, rfiles)
    return section, warnings, _model_validity(region, rfiles, model_dir)


def build_participant_report(
    out_dir: Path,
    subject: str,
    session: str | None = None,
    command: str = "",
    methods_by_region: dict[str, list[str]] | None = None,
    warnings: list[str] | None = None,
    model_dir: str | None = None,
) -> Path:
    """Write ``sub-<subject>[_ses-<session>].html``, its figures and the CITATION files.

    Parameters
    ----------
    out_dir
        The derivatives folder.
    subject, session
        Labels without ``sub-`` / ``ses-``.
    command
        The command line of the run.
    methods_by_region
        Workflow descriptions of each region
        (:func:`bids_muscle.reports.methods.workflow_descriptions`).
    warnings
        Warnings found before the report (inputs, refusals).
    model_dir
        ``--model-dir`` of the run, where model cards are looked up before the package's.
    """
    out_dir = Path(out_dir)
    anat_dir = bids.subject_dir(out_dir, subject, session)
    fig_dir = out_dir / f"sub-{subject}" / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    for old in fig_dir.glob(f"{prefix}_acq-*"):  # the figures are the report's own: none of an earlier run stays
        old.unlink()
    warnings = list(warnings or [])
    files = sorted(anat_dir.glob("*.nii.gz")) if anat_dir.exists() else []
    found = {_entities(f).get("acq") for f in files} - {None}
    regions = [r for r in REGIONS if r in found] + sorted(found - set(REGIONS))
    sections, validity = [], []
    for region in regions:
        section, found_warnings, region_validity = _region_section(out_dir, fig_dir, anat_dir, prefix, region, files,
                                                                   model_dir)
        sections.append(section)
        warnings += found_warnings
        validity += region_validity
    if not regions:
        warnings.append(f"no derivatives found under {anat_dir}")
    paragraphs = methods.methods_paragraphs(methods_by_region or {})
    md, bib = methods.write_citation_files(out_dir, subject, session, paragraphs)
    html = render(
        "participant.html",
        subject=subject,
        session=session,
        regions=sections,
        warnings=warnings,
        validity=validity,
        warning_count=len(warnings) + sum(not met for _, met in validity),
        methods=paragraphs,
        references=methods.cited(paragraphs),
        citation_files=[_rel(md, out_dir), _rel(bib, out_dir)],
        versions=methods.versions(),
        command=command,
    )
    return bids.write_text_atomic(bids.report_path(out_dir, subject, session), html)
