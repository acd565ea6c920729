"""Segmentation interfaces: run the model zoo on the anatomical reference, derive the muscle region."""

from __future__ import annotations

import nibabel as nb
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, OutputMultiObject, SimpleInterface, TraitedSpec, traits

from bids_muscle.imat.region import imat_threshold, muscle_region_from_labels
from bids_muscle.interfaces.images import save_image
from bids_muscle.seg.infer import resample_labels, segment
from bids_muscle.seg.legs import voxel_sizes
from bids_muscle.seg.zoo import load_model


def model_name(region: str, network: str) -> str:
    """Zoo name of the ``network`` model of ``region``, e.g. ``thigh_unet2d``."""
    return f"{region}_{network}"


class _SegmentInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="anatomical reference (bias corrected)")
    region = traits.Enum("thigh", "calf", mandatory=True)
    networks = traits.List(traits.Str, mandatory=True, desc="networks to run (zoo names without region)")
    model_dir = traits.Either(None, traits.Str, usedefault=True, desc="user model folder; package models otherwise")
    num_threads = traits.Int(1, usedefault=True)
    probabilities = traits.Bool(False, usedefault=True, desc="also write per-label probabilities")


class _SegmentOutputSpec(TraitedSpec):
    dsegs = OutputMultiObject(File(exists=True), desc="one label map per network")
    probsegs = OutputMultiObject(File(exists=True), desc="one probability map per network")
    model_cards = traits.List(traits.Dict, desc="card of each network's model")
    probseg_labels = traits.List(traits.List(traits.Int), desc="label index of each probseg volume, per network")


class SegmentMuscles(SimpleInterface):
    """Segment individual muscles of both legs with each requested network."""

    input_spec = _SegmentInputSpec
    output_spec = _SegmentOutputSpec

    def _run_interface(self, runtime):
        img = nb.load(self.inputs.in_file)
        image = np.asarray(img.dataobj, dtype=np.float32)
        dsegs, probsegs, cards, probseg_labels = [], [], [], []
        for network in self.inputs.networks:
            model, card = load_model(model_name(self.inputs.region, network), self.inputs.model_dir)
            result = segment(image, img.affine, model, card, return_probabilities=self.inputs.probabilities,
                             num_threads=self.inputs.num_threads)
            dsegs.append(save_image(result["dseg"].astype(np.int16), img.affine, f"{network}_dseg.nii.gz", runtime.cwd))
            if result["probseg"] is not None:
                probsegs.append(save_image(result["probseg"], img.affine, f"{network}_probseg.nii.gz", runtime.cwd))
                probseg_labels.append([int(v) for v in result["probseg_labels"]])
            cards.append({"Name": card.name, "Architecture": card.architecture, "SHA256": card.sha256,
                          "TrainingData": card.training_data, "Labels": "desc-%s_dseg.tsv" % network})
        self._results["dsegs"] = dsegs
        self._results["probsegs"] = probsegs
        self._results["model_cards"] = cards
        self._results["probseg_labels"] = probseg_labels
        return runtime


class _RegionInputSpec(BaseInterfaceInputSpec):
    dseg = File(exists=True, mandatory=True, desc="muscle labels (first network)")
    ff_map = File(exists=True, desc="fat fraction map (percent) for the IMAT threshold")
    closing_mm = traits.Float(4.0, usedefault=True)
    imat_cut_percent = traits.Float(50.0, usedefault=True)


class _RegionOutputSpec(TraitedSpec):
    muscle_region = File(exists=True)
    imat_mask = File(desc="IMAT on the grid of the fat-fraction map")


class MuscleRegionIMAT(SimpleInterface):
    """Muscle region from the labels and IMAT as FF above a cut inside it."""

    input_spec = _RegionInputSpec
    output_spec = _RegionOutputSpec

    def _run_interface(self, runtime):
        img = nb.load(self.inputs.dseg)
        labels = np.asarray(img.dataobj).astype(np.int32)
        region = muscle_region_from_labels(labels, voxel_sizes(img.affine), self.inputs.closing_mm)
        self._results["muscle_region"] = save_image(region.astype(np.uint8), img.affine, "muscleregion.nii.gz", runtime.cwd)
        if self.inputs.ff_map:
            ff_img = nb.load(self.inputs.ff_map)
            ff_labels = resample_labels(labels, img.affine, ff_img.shape[:3], ff_img.affine)
            ff_region = muscle_region_from_labels(ff_labels, voxel_sizes(ff_img.affine), self.inputs.closing_mm)
            imat = imat_threshold(np.asarray(ff_img.dataobj, dtype=np.float32), ff_region, self.inputs.imat_cut_percent)
            self._results["imat_mask"] = save_image(imat.astype(np.uint8), ff_img.affine, "imat.nii.gz", runtime.cwd)
        return runtime
