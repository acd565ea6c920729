"""Segmentation interfaces: run the model zoo on the anatomical reference, derive the muscle region."""

from __future__ import annotations

import nibabel as nb
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, OutputMultiObject, SimpleInterface, TraitedSpec, traits

from bids_muscle.imat.classify import INPUT_PAIRS, classify_imat
from bids_muscle.imat.classify import METHODS as IMAT_METHODS
from bids_muscle.imat.region import muscle_region_from_labels
from bids_muscle.interfaces.images import save_image
from bids_muscle.seg.ensemble import DEFAULT_SCALES, ensemble_contrasts, flag_muscles, segment_ensemble
from bids_muscle.seg.infer import muscle_region_mask, resample_labels
from bids_muscle.seg.labels import load_label_table
from bids_muscle.seg.legs import voxel_sizes
from bids_muscle.seg.zoo import find_card, load_model


def model_name(region: str, network: str) -> str:
    """Zoo name of the ``network`` model of ``region``, e.g. ``thigh_unet2d``."""
    return f"{region}_{network}"


class _SegmentInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="anatomical reference (bias corrected)")
    dixon_stack = File(exists=True, desc="4D water (volume 0) and fat (volume 1) on the grid of in_file, corrected by "
                                         "the same N4 field: the ensemble segments water, fat and water+fat")
    scales = traits.List(traits.Float, list(DEFAULT_SCALES), usedefault=True,
                         desc="model voxel sizes (factors of the card's) of the ensemble")
    region = traits.Enum("thigh", "calf", mandatory=True)
    networks = traits.List(traits.Str, mandatory=True, desc="networks to run (zoo names without region)")
    model_dir = traits.Either(None, traits.Str, usedefault=True, desc="user model folder; package models otherwise")
    num_threads = traits.Int(1, usedefault=True)
    probabilities = traits.Bool(False, usedefault=True, desc="also write per-label probabilities")


class _SegmentOutputSpec(TraitedSpec):
    dsegs = OutputMultiObject(File(exists=True), desc="one label map per network")
    member_dsegs = OutputMultiObject(File(exists=True), desc="per network: the labels of each ensemble member (4D)")
    probsegs = OutputMultiObject(File(exists=True), desc="one probability map per network")
    model_cards = traits.List(traits.Dict, desc="card of each network's model")
    probseg_labels = traits.List(traits.List(traits.Int), desc="label index of each probseg volume, per network")
    quality = traits.List(traits.Dict, desc="per network: Confidence and Flags per label index, and the members fused")


class SegmentMuscles(SimpleInterface):
    """Segment individual muscles of both legs with each requested network,
    as an ensemble of contrasts and scales (:mod:`bids_muscle.seg.ensemble`)
    with a confidence and QC flags per muscle."""

    input_spec = _SegmentInputSpec
    output_spec = _SegmentOutputSpec

    def _run_interface(self, runtime):
        img = nb.load(self.inputs.in_file)
        image = np.asarray(img.dataobj, dtype=np.float32)
        fat = None
        if self.inputs.dixon_stack:
            fat = np.asarray(nb.load(self.inputs.dixon_stack).dataobj, dtype=np.float32)[..., 1]
        images = ensemble_contrasts(image, fat)
        voxel_ml = float(np.prod(voxel_sizes(img.affine))) / 1000.0
        table = {lab.index: lab.abbreviation for lab in load_label_table(self.inputs.region)}
        dsegs, member_dsegs, probsegs, cards, probseg_labels, quality = [], [], [], [], [], []
        for network in self.inputs.networks:
            model, card = load_model(model_name(self.inputs.region, network), self.inputs.model_dir)
            result = segment_ensemble(images, img.affine, model, card, scales=self.inputs.scales,
                                      num_threads=self.inputs.num_threads)
            dseg = result["dseg"].astype(np.int16)
            dsegs.append(save_image(dseg, img.affine, f"{network}_dseg.nii.gz", runtime.cwd))
            member_dsegs.append(save_image(np.moveaxis(result["member_dsegs"], 0, -1), img.affine,
                                           f"{network}_members_dseg.nii.gz", runtime.cwd))
            if self.inputs.probabilities:
                probsegs.append(save_image(result["probseg"], img.affine, f"{network}_probseg.nii.gz", runtime.cwd))
                probseg_labels.append([int(v) for v in result["probseg_labels"]])
            confidence = result["confidence"]
            counts = np.bincount(dseg[dseg > 0].ravel())
            volumes = {label: float(counts[label]) * voxel_ml if label < counts.size else 0.0 for label in confidence}
            flags = flag_muscles(confidence, volumes, self.inputs.region)
            quality.append({"Confidence": confidence, "Flags": flags, "Members": result["members"]})
            cards.append({"Name": card.name, "Architecture": card.architecture, "SHA256": card.sha256,
                          "TrainingData": card.training_data, "Labels": "desc-%s_dseg.tsv" % network,
                          "Ensemble": [{"Image": name, "VoxelSizeFactor": scale} for name, scale in result["members"]],
                          "ExpectedDice": {table[k]: round(v, 3) for k, v in sorted(confidence.items()) if k in table},
                          "Flagged": {table[k]: v for k, v in sorted(flags.items()) if v and k in table}})
        self._results["dsegs"] = dsegs
        self._results["member_dsegs"] = member_dsegs
        self._results["probsegs"] = probsegs
        self._results["model_cards"] = cards
        self._results["probseg_labels"] = probseg_labels
        self._results["quality"] = quality
        return runtime


class _RegionInputSpec(BaseInterfaceInputSpec):
    dseg = File(exists=True, mandatory=True, desc="muscle labels (first network)")
    reference = File(exists=True, desc="anatomical reference, for a <region>_muscleregion network")
    region = traits.Enum("thigh", "calf", desc="body region (selects the muscle-region network)")
    model_dir = traits.Either(None, traits.Str, usedefault=True, desc="user model folder; package models otherwise")
    num_threads = traits.Int(1, usedefault=True)
    ff_map = File(exists=True, desc="fat fraction map (percent): weak labels, and the threshold method")
    water_t2 = File(exists=True, desc="water T2 (s) of the two-component MESE fit, on the grid of ff_map")
    t2 = File(exists=True, desc="single-component T2 (s), on the grid of ff_map")
    pd = File(exists=True, desc="proton density, on the grid of ff_map")
    imat_method = traits.Enum(*IMAT_METHODS, usedefault=True, desc="IMAT classification method")
    closing_mm = traits.Float(4.0, usedefault=True)
    imat_cut_percent = traits.Float(50.0, usedefault=True)


class _RegionOutputSpec(TraitedSpec):
    muscle_region = File(exists=True)
    region_metadata = traits.Dict(desc="sidecar fields of the muscle region")
    imat_mask = File(desc="IMAT on the grid of the fat-fraction map")
    imat_probability = File(desc="IMAT probability (clustering methods)")
    imat_metadata = traits.Dict(desc="sidecar fields of the IMAT mask")


class MuscleRegionIMAT(SimpleInterface):
    """Muscle region from the labels, and IMAT inside it (Amer et al. 2022).

    The muscle region is the output of the ``<region>_muscleregion`` network
    on the anatomical reference when that model exists (joined with the
    muscle labels), else the muscle labels closed in-plane. The clustering
    methods need a pair of maps (water T2 + FF, or T2 + PD);
    when they are missing (e.g. Dixon only), IMAT falls back to the
    fat-fraction threshold and the sidecar says so.
    """

    input_spec = _RegionInputSpec
    output_spec = _RegionOutputSpec

    def _run_interface(self, runtime):
        img = nb.load(self.inputs.dseg)
        labels = np.asarray(img.dataobj).astype(np.int32)
        network_region = self._network_region(img)
        if network_region is None:
            region = muscle_region_from_labels(labels, voxel_sizes(img.affine), self.inputs.closing_mm)
        else:
            region = network_region | (labels > 0)
        self._results["muscle_region"] = save_image(region.astype(np.uint8), img.affine, "muscleregion.nii.gz", runtime.cwd)
        if not self.inputs.ff_map:
            return runtime
        ff_img = nb.load(self.inputs.ff_map)
        ff_labels = resample_labels(labels, img.affine, ff_img.shape[:3], ff_img.affine)
        if network_region is None:
            ff_region = muscle_region_from_labels(ff_labels, voxel_sizes(ff_img.affine), self.inputs.closing_mm)
        else:
            ff_region = resample_labels(region.astype(np.int16), img.affine, ff_img.shape[:3], ff_img.affine) > 0
        ff = np.asarray(ff_img.dataobj, dtype=np.float32)
        maps = {"ff_percent": ff}
        for name, key in (("water_t2", "water_t2_s"), ("t2", "t2_s"), ("pd", "pd")):
            path = getattr(self.inputs, name)
            if path:
                maps[key] = np.asarray(nb.load(path).dataobj, dtype=np.float32)
        method = self.inputs.imat_method
        meta = {"Method": method, "FatFractionCut_percent": self.inputs.imat_cut_percent}
        pair = next((p for p in INPUT_PAIRS if all(k in maps for k in p[0])), None)
        if method != "threshold" and pair is None:
            meta.update(Method="threshold", RequestedMethod=method,
                        Note="the clustering methods need water T2 + FF or T2 + PD maps from a multi-echo spin echo")
            method = "threshold"
        if not ff_region.any():
            imat, probability = np.zeros(ff.shape, bool), None
        else:
            imat, probability = classify_imat(maps, ff_region, method=method, cut_percent=self.inputs.imat_cut_percent)
        if method in ("dcae", "dcae-kmeans"):
            meta.update(Maps=list(pair[0]), Encoder=pair[1] if method == "dcae" else pair[2])
        elif method == "kmeans":
            meta["Maps"] = list(pair[0])
        self._results["imat_mask"] = save_image(imat.astype(np.uint8), ff_img.affine, "imat.nii.gz", runtime.cwd)
        if probability is not None:
            self._results["imat_probability"] = save_image(probability.astype(np.float32), ff_img.affine,
                                                           "imat_probability.nii.gz", runtime.cwd)
        self._results["imat_metadata"] = meta
        return runtime

    def _network_region(self, dseg_img) -> np.ndarray | None:
        """Muscle region from the region's muscle-region network on the dseg grid, or None without one."""
        name = model_name(self.inputs.region, "muscleregion") if self.inputs.region and self.inputs.reference else None
        if name is not None:
            try:
                find_card(name, self.inputs.model_dir)
            except ValueError:
                name = None
        if name is None:
            self._results["region_metadata"] = {"Method": f"muscle labels closed in-plane ({self.inputs.closing_mm:g} mm)"}
            return None
        model, card = load_model(name, self.inputs.model_dir)
        ref = nb.load(self.inputs.reference)
        mask = muscle_region_mask(np.asarray(ref.dataobj, dtype=np.float32), ref.affine, model, card,
                                  num_threads=self.inputs.num_threads)
        self._results["region_metadata"] = {"Method": "muscle-region network joined with the muscle labels",
                                            "Model": {"Name": card.name, "SHA256": card.sha256}}
        return resample_labels(mask.astype(np.int16), ref.affine, dseg_img.shape[:3], dseg_img.affine) > 0
