"""Per-muscle biomarker tables from segmentations and quantitative maps."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
from nipype.interfaces.base import BaseInterfaceInputSpec, Directory, File, InputMultiObject, SimpleInterface, TraitedSpec, traits

from bids_muscle import bids
from bids_muscle.seg.infer import resample_labels
from bids_muscle.seg.labels import load_label_table
from bids_muscle.seg.legs import voxel_sizes
from bids_muscle.stats.biomarkers import (
    add_segmentation_quality,
    add_standard_errors,
    column_descriptions,
    muscle_table,
    slice_table,
)

#: Biomarker column name of each map and the factor from its file unit.
MAP_COLUMNS = {
    "water_t2": ("water_t2_ms", 1000.0),
    "t2": ("t2_ms", 1000.0),
    "ff_mese": ("ff_mese_percent", 1.0),
    "ff_dixon": ("ff_dixon_percent", 1.0),
    "pd": ("pd", 1.0),
    "b1": ("b1", 1.0),
    "mtr": ("mtr_percent", 1.0),
    "r2star": ("r2star_hz", 1.0),
}


def _grid_key(img) -> tuple:
    return img.shape[:3], tuple(np.round(img.affine, 4).ravel())


def _mask_on_grid(path: str, target) -> np.ndarray:
    img = nb.load(path)
    mask = np.asarray(img.dataobj).astype(np.uint8)
    if _grid_key(img) != _grid_key(target):
        mask = resample_labels(mask, img.affine, target.shape[:3], target.affine)
    return mask > 0


def _map_statistics(table: pd.DataFrame, seg: np.ndarray, seg_img, grids: dict, labels, erode_mm: float) -> pd.DataFrame:
    """``table`` (one row per ``label``) with the statistics of every map of ``grids`` inside the labels
    ``seg`` (on the grid of ``seg_img``; maps on other grids get resampled labels)."""
    for grid in grids.values():
        img = grid["img"]
        seg_here = seg if _grid_key(img) == _grid_key(seg_img) else resample_labels(seg, seg_img.affine, img.shape[:3], img.affine)
        stats = muscle_table(seg_here, voxel_sizes(img.affine), labels, grid["maps"], erode_mm=erode_mm)
        table = table.merge(stats[["label", *[c for c in stats.columns if any(c.startswith(m + "_") for m in grid["maps"])]]],
                            on="label", how="left")
    return table


def biomarker_tables(dseg_file: str, region: str, map_files: dict[str, str], erode_mm: float = 0.0,
                     imat_file: str | None = None, region_file: str | None = None,
                     members_file: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Muscle and slice tables of one segmentation; maps on other grids get resampled labels.

    ``members_file`` (4D, one label map per ensemble member on the grid of
    ``dseg_file``) gives the segmentation part of the standard errors."""
    labels = load_label_table(region)
    seg_img = nb.load(dseg_file)
    seg = np.asarray(seg_img.dataobj).astype(np.int32)
    masks = {k: _mask_on_grid(f, seg_img) if f else None for k, f in (("imat", imat_file), ("region", region_file))}
    grids: dict[tuple, dict] = {}
    for name, path in map_files.items():
        img = nb.load(path)
        grids.setdefault(_grid_key(img), {"img": img, "maps": {}})["maps"][MAP_COLUMNS[name][0]] = (
            np.asarray(img.dataobj, dtype=np.float32) * MAP_COLUMNS[name][1]
        )
    base = muscle_table(seg, voxel_sizes(seg_img.affine), labels, imat_mask=masks["imat"],
                        muscle_region_mask=masks["region"], erode_mm=erode_mm)
    slices = slice_table(seg, voxel_sizes(seg_img.affine), labels, imat_mask=masks["imat"], muscle_region_mask=masks["region"])
    base = _map_statistics(base, seg, seg_img, grids, labels, erode_mm)
    for grid in grids.values():
        img = grid["img"]
        if _grid_key(img) == _grid_key(seg_img):
            per_slice = slice_table(seg, voxel_sizes(img.affine), labels, grid["maps"])
            keep = ["slice", "label", *[c for c in per_slice.columns if any(c.startswith(m + "_") for m in grid["maps"])]]
            slices = slices.merge(per_slice[keep], on=["slice", "label"], how="left")
    members = []
    if members_file:
        stack = np.asarray(nb.load(members_file).dataobj).astype(np.int32)
        if stack.shape[:3] != seg.shape:
            raise ValueError(f"{members_file}: ensemble member labels {stack.shape[:3]} are not on the grid of {dseg_file} {seg.shape}")
        members = [_map_statistics(muscle_table(member, voxel_sizes(seg_img.affine), labels)[["label", "volume_ml"]],
                                   member, seg_img, grids, labels, erode_mm)
                   for member in np.moveaxis(stack, 3, 0)]
    return add_standard_errors(base, members), slices, sorted({m for g in grids.values() for m in g["maps"]})


class _BiomarkersInputSpec(BaseInterfaceInputSpec):
    dsegs = InputMultiObject(File(exists=True), mandatory=True, desc="one muscle label map per network")
    member_dsegs = InputMultiObject(File(exists=True), desc="per network: 4D labels of each ensemble member (SegmentMuscles)")
    networks = traits.List(traits.Str, mandatory=True, desc="network name of each label map")
    seg_quality = traits.List(traits.Dict, desc="per label map: Confidence and Flags per label index (SegmentMuscles)")
    region = traits.Enum("thigh", "calf", mandatory=True)
    water_t2 = File(exists=True, desc="water T2 map (s)")
    t2 = File(exists=True, desc="T2 map (s)")
    ff_mese = File(exists=True, desc="MESE fat fraction (percent)")
    ff_dixon = File(exists=True, desc="Dixon fat fraction (percent)")
    pd = File(exists=True, desc="proton density")
    b1 = File(exists=True, desc="relative B1")
    mtr = File(exists=True, desc="MTR (percent)")
    r2star = File(exists=True, desc="R2* (1/s)")
    imat_mask = File(exists=True)
    muscle_region = File(exists=True)
    erode_mm = traits.Float(0.0, usedefault=True)
    out_dir = Directory(mandatory=True)
    entities = traits.Dict(mandatory=True)
    source_files = traits.List(traits.Str, desc="raw inputs (BIDS URIs are derived)")
    bids_dir = Directory(exists=True, mandatory=True)


class _BiomarkersOutputSpec(TraitedSpec):
    out_table = File(desc="per-muscle table")
    out_slices = File(desc="per-slice table")


class MuscleBiomarkers(SimpleInterface):
    """One row per muscle x network with volume, IMAT fraction and statistics of every map."""

    input_spec = _BiomarkersInputSpec
    output_spec = _BiomarkersOutputSpec

    def _map_files(self) -> dict[str, str]:
        return {name: getattr(self.inputs, name) for name in MAP_COLUMNS if getattr(self.inputs, name)}

    def _run_interface(self, runtime):
        if len(self.inputs.dsegs) != len(self.inputs.networks):
            raise ValueError("one network name per segmentation is needed")
        muscles, slices, names = [], [], []
        quality = self.inputs.seg_quality or [None] * len(self.inputs.dsegs)
        members = self.inputs.member_dsegs or [None] * len(self.inputs.dsegs)
        for dseg, net, q, member in zip(self.inputs.dsegs, self.inputs.networks, quality, members):
            table, per_slice, names = biomarker_tables(
                dseg, self.inputs.region, self._map_files(), self.inputs.erode_mm,
                self.inputs.imat_mask or None, self.inputs.muscle_region or None, member,
            )
            if q is not None:
                table = add_segmentation_quality(table, q["Confidence"], q["Flags"])
            muscles.append(table.assign(network=net))
            slices.append(per_slice.assign(network=net))
        descriptions = column_descriptions(names)
        descriptions["network"] = {"Description": "segmentation network that produced the muscle masks"}
        sources = [bids.bids_uri(Path(f), Path(self.inputs.bids_dir)) for f in dict.fromkeys(self.inputs.source_files)]
        sidecar = {"Sources": sources, "ErosionRadius_mm": self.inputs.erode_mm, **descriptions}
        entities = {k: v for k, v in self.inputs.entities.items() if v}
        out_dir = Path(self.inputs.out_dir)
        self._results["out_table"] = str(bids.write_derivative_table(out_dir, entities, "biomarkers", bids.tsv_text(pd.concat(muscles)), sidecar))
        self._results["out_slices"] = str(bids.write_derivative_table(out_dir, entities, "slices", bids.tsv_text(pd.concat(slices)), sidecar))
        return runtime
