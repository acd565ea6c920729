"""Group level: agreement between the segmentations of every participant (masks on disk)."""

from __future__ import annotations

import re
from itertools import combinations
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
from nipype.interfaces.base import BaseInterfaceInputSpec, Directory, SimpleInterface, TraitedSpec, traits

from bids_muscle import bids
from bids_muscle.interfaces.group import read_sites, write_group_tables
from bids_muscle.qmri.mtr import resample_to_grid
from bids_muscle.seg.infer import resample_labels
from bids_muscle.seg.labels import load_label_table
from bids_muscle.seg.legs import voxel_sizes
from bids_muscle.stats import group as gstats
from bids_muscle.stats.agreement import compare_segmentations

DSEG_PATTERN = re.compile(
    r"sub-(?P<participant>[a-zA-Z0-9]+)(?:_ses-(?P<session>[a-zA-Z0-9]+))?_acq-(?P<region>[a-zA-Z0-9]+)"
    r"(?:_desc-(?P<desc>[a-zA-Z0-9]+))?_dseg\.nii(?:\.gz)?$"
)
#: Maps compared between masks (Hostin 2023: dFF, dT2, dMTR), with the factor from the file unit.
AGREEMENT_MAPS = {
    "ff_mese_percent": ("desc-mese_FFmap", 1.0),
    "ff_dixon_percent": ("desc-dixon_FFmap", 1.0),
    "water_t2_ms": ("desc-water_T2map", 1000.0),
    "mtr_percent": ("MTRmap", 1.0),
}
NOT_MUSCLES = {"tissue", "muscleregion"}
#: Every table :class:`SegmentationAgreement` may write under ``group/``.
AGREEMENT_TABLES = ("agreement", "agreement_summary", "agreement_bland_altman", "agreement_g20")


def find_segmentations(root: Path) -> dict[tuple, dict[str, Path]]:
    """(participant, session, region) -> {desc or '': dseg path} for every ``*_dseg.nii[.gz]`` under ``root``."""
    found: dict[tuple, dict[str, Path]] = {}
    for path in sorted(Path(root).glob("sub-*/**/anat/*_dseg.nii*")):
        match = DSEG_PATTERN.match(path.name)
        if match and match["desc"] not in NOT_MUSCLES and match["region"] in bids.REGIONS:
            key = (match["participant"], match["session"] or gstats.MISSING, match["region"])
            found.setdefault(key, {})[match["desc"] or ""] = path
    return found


def reference_of(candidates: dict[str, Path]) -> Path | None:
    """The reference labels among a participant's files: no ``desc``, else ``desc-manual``, else the only one."""
    for desc in ("", "manual"):
        if desc in candidates:
            return candidates[desc]
    return next(iter(candidates.values())) if len(candidates) == 1 else None


def _maps_on_grid(anat_dir: Path, prefix: str, target) -> dict[str, np.ndarray]:
    maps = {}
    for name, (suffix, factor) in AGREEMENT_MAPS.items():
        path = anat_dir / f"{prefix}_{suffix}.nii.gz"
        if path.is_file():
            img = nb.load(path)
            data = np.asarray(img.dataobj, dtype=np.float32) * factor
            if img.shape[:3] != target.shape[:3] or not np.allclose(img.affine, target.affine, atol=1e-3):
                data = resample_to_grid(data, img.affine, target.shape[:3], target.affine)
            maps[name] = data
    return maps


def _labels_on_grid(path: Path, target) -> np.ndarray:
    img = nb.load(path)
    labels = np.asarray(img.dataobj).astype(np.int32)
    if img.shape[:3] != target.shape[:3] or not np.allclose(img.affine, target.affine, atol=1e-3):
        labels = resample_labels(labels, img.affine, target.shape[:3], target.affine)
    return labels


def compare_participant_segmentations(out_dir: Path, reference_dir: Path | None, sites: dict[str, str],
                                      participants: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per participant, region, label and (network, reference) pair.

    Pairs are every two networks that ran on the same participant and region
    (``network_b`` is the second in name order) and, with ``reference_dir``,
    every network against the reference labels (``network_b = "reference"``).
    Only ``participants`` when given.
    """
    networks = {key: found for key, found in find_segmentations(out_dir).items()
                if not participants or key[0] in participants}
    references = find_segmentations(reference_dir) if reference_dir else {}
    rows = []
    for (participant, session, region), by_net in sorted(networks.items()):
        by_net = {k: v for k, v in by_net.items() if k}
        pairs = [(a, b, by_net[a], by_net[b]) for a, b in combinations(sorted(by_net), 2)]
        ref = reference_of(references.get((participant, session, region), {}))
        if ref is not None:
            pairs += [(net, "reference", path, ref) for net, path in sorted(by_net.items())]
        if not pairs:
            continue
        first = nb.load(next(iter(by_net.values())))
        prefix = next(iter(by_net.values())).name.split("_desc-")[0]
        maps = _maps_on_grid(next(iter(by_net.values())).parent, prefix, first)
        labels = load_label_table(region)
        for net_a, net_b, path_a, path_b in pairs:
            table = compare_segmentations(
                _labels_on_grid(path_a, first), _labels_on_grid(path_b, first), labels, voxel_sizes(first.affine), maps
            )
            side = {lab.index: (lab.muscle, lab.side) for lab in labels}
            table.insert(0, "muscle", [side[v][0] for v in table["label"]])
            table.insert(1, "side", [side[v][1] for v in table["label"]])
            table = table.assign(participant=participant, session=session, site=sites.get(participant, gstats.MISSING),
                                 region=region, network=net_a, network_a=net_a, network_b=net_b)
            rows.append(table)
    if not rows:
        return pd.DataFrame()
    out = pd.concat(rows, ignore_index=True)
    ids = ["participant", "session", "site", "region", "side", "muscle", "network_a", "network_b"]
    return out[ids + [c for c in out.columns if c not in ids]]


class _AgreementInputSpec(BaseInterfaceInputSpec):
    out_dir = Directory(exists=True, mandatory=True)
    participants_tsv = traits.Str(desc="participants.tsv of the raw dataset (site column); may be missing")
    site_column = traits.Str("site", usedefault=True)
    reference_dir = traits.Either(None, traits.Str, usedefault=True, desc="derivatives with reference _dseg files")
    participants = traits.List(traits.Str, desc="participant labels to compare (all when empty)")


class _AgreementOutputSpec(TraitedSpec):
    tables = traits.Dict(desc="table name -> path")


class SegmentationAgreement(SimpleInterface):
    """Dice, HD95, ASSD, volume and biomarker differences between networks (and a reference), with summaries."""

    input_spec = _AgreementInputSpec
    output_spec = _AgreementOutputSpec

    def _run_interface(self, runtime):
        out_dir = Path(self.inputs.out_dir)
        sites = read_sites(Path(self.inputs.participants_tsv), self.inputs.site_column)
        reference = Path(self.inputs.reference_dir) if self.inputs.reference_dir else None
        comparisons = compare_participant_segmentations(out_dir, reference, sites, tuple(self.inputs.participants))
        group_dir = out_dir / "group"
        if comparisons.empty:
            self._results["tables"] = {}
            write_group_tables(group_dir, {}, AGREEMENT_TABLES)
            return runtime
        written = {"agreement": comparisons}
        by = ["network_a", "network_b", "region"]
        written["agreement_summary"] = gstats.segmentation_agreement_summary(comparisons, by=by)
        deltas = [c[len("delta_"):] for c in comparisons.columns if c.startswith("delta_")]
        found = comparisons[comparisons["present_a"] & comparisons["present_b"]]
        if deltas and not found.empty:
            written["agreement_bland_altman"] = gstats.pairwise_bland_altman(found, deltas, by=by)
            ff = next((m for m in ("ff_dixon_percent", "ff_mese_percent") if m in deltas), None)
            if ff is not None:
                written["agreement_g20"] = gstats.pairwise_g20(found, ff, deltas, by=by)
        self._results["tables"] = {name: str(path) for name, path in
                                   write_group_tables(group_dir, written, AGREEMENT_TABLES).items()}
        return runtime
