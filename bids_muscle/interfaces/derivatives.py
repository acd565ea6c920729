"""Write derivatives into the output dataset with names and sidecars from :mod:`bids_muscle.bids`."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, Directory, File, InputMultiObject, SimpleInterface, TraitedSpec, traits

from bids_muscle import bids


class _SinkInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image to store")
    out_dir = Directory(mandatory=True, desc="derivatives root")
    bids_dir = Directory(exists=True, mandatory=True, desc="raw dataset root (for BIDS URIs)")
    entities = traits.Dict(mandatory=True, desc="short BIDS entities: sub, ses, acq, desc ...")
    suffix = traits.Str(mandatory=True)
    source_files = InputMultiObject(File(exists=True), desc="raw inputs this image derives from")
    metadata = traits.Dict(desc="sidecar content besides Sources")
    dtype = traits.Enum("float32", "uint8", "int16", usedefault=True, desc="stored data type")


class _SinkOutputSpec(TraitedSpec):
    out_file = File(desc="written derivative")


class DerivativesSink(SimpleInterface):
    """Copy one image into the derivatives tree atomically, with its JSON sidecar."""

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec

    def _run_interface(self, runtime):
        img = nb.load(self.inputs.in_file)
        data = np.asarray(img.dataobj).astype(self.inputs.dtype)
        sources = [bids.bids_uri(Path(f), Path(self.inputs.bids_dir)) for f in dict.fromkeys(self.inputs.source_files or [])]
        entities = {k: v for k, v in self.inputs.entities.items() if v not in (None, "")}
        path = bids.write_derivative_image(
            Path(self.inputs.out_dir), entities, self.inputs.suffix, data, img.affine, sources, dict(self.inputs.metadata or {})
        )
        self._results["out_file"] = str(path)
        return runtime
