"""N4 bias-field correction of a series: one field, applied to every image."""

from __future__ import annotations

import numpy as np
from nibabel.affines import voxel_sizes
from nipype.interfaces.base import BaseInterfaceInputSpec, File, InputMultiObject, SimpleInterface, TraitedSpec, traits

from bids_muscle.interfaces.images import load_series, save_image
from bids_muscle.qmri.bias import foreground_mask, n4_bias_field


class _N4InputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="images of one series (echoes)")
    volumes = traits.List(traits.Either(None, traits.Int), desc="volume index per file for 4D inputs")
    reference_index = traits.Int(0, usedefault=True, desc="image the field is estimated on")
    sloppy = traits.Bool(False, usedefault=True, desc="fewer iterations, coarser estimation grid (8 mm, not 4 mm)")
    prefix = traits.Str("series", usedefault=True)


class _N4OutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="4D stack of corrected images (x, y, z, n)")
    reference = File(exists=True, desc="corrected reference image (3D)")
    bias_field = File(exists=True, desc="estimated multiplicative field")
    mask = File(exists=True, desc="foreground mask used for the estimate")


class N4BiasCorrection(SimpleInterface):
    """Estimate an N4 field on one image of a series and divide all images by it."""

    input_spec = _N4InputSpec
    output_spec = _N4OutputSpec

    def _run_interface(self, runtime):
        stack, affine = load_series(list(self.inputs.in_files), self.inputs.volumes or None)
        ref = stack[..., self.inputs.reference_index]
        mask = foreground_mask(ref)
        iterations = (20, 10) if self.inputs.sloppy else (50, 50, 30)
        field = n4_bias_field(ref, tuple(float(v) for v in voxel_sizes(affine)), mask=mask, iterations=iterations,
                              voxel_mm=8.0 if self.inputs.sloppy else 4.0)
        corrected = stack / field[..., None]
        prefix = self.inputs.prefix
        self._results["out_file"] = save_image(corrected.astype(np.float32), affine, f"{prefix}_n4.nii.gz", runtime.cwd)
        self._results["reference"] = save_image(corrected[..., self.inputs.reference_index], affine, f"{prefix}_ref_n4.nii.gz", runtime.cwd)
        self._results["bias_field"] = save_image(field, affine, f"{prefix}_biasfield.nii.gz", runtime.cwd)
        self._results["mask"] = save_image(mask.astype(np.uint8), affine, f"{prefix}_mask.nii.gz", runtime.cwd)
        return runtime
