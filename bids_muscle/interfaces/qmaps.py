"""Quantitative-map interfaces: read the series, call :mod:`bids_muscle.qmri`, save the maps."""

from __future__ import annotations

import nibabel as nb
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from bids_muscle.interfaces.images import save_image
from bids_muscle.qmri import t2 as t2fit


class _FitMESEInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="4D stack of echoes (x, y, z, echo), bias corrected")
    mask = File(exists=True, desc="foreground mask")
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times in seconds")
    refocus_deg = traits.Float(180.0, usedefault=True, desc="nominal refocusing flip angle")
    repetition_time = traits.Either(None, traits.Float, usedefault=True, desc="TR in seconds")
    sloppy = traits.Bool(False, usedefault=True, desc="coarse dictionaries")


class _FitMESEOutputSpec(TraitedSpec):
    t2 = File(exists=True, desc="single-component EPG T2 (s)")
    pd = File(exists=True, desc="proton density back-extrapolated to t=0 (a.u.)")
    water_t2 = File(exists=True, desc="water T2 of the two-component fit (s)")
    ff = File(exists=True, desc="fat fraction of the two-component fit (percent)")
    b1 = File(exists=True, desc="B1 of the two-component fit (relative)")
    single_metadata = traits.Dict(desc="sidecar fields of the single-component maps")
    water_fat_metadata = traits.Dict(desc="sidecar fields of the two-component maps")


class FitMESE(SimpleInterface):
    """EPG dictionary fits of a multi-echo spin echo: single component and water + fat."""

    input_spec = _FitMESEInputSpec
    output_spec = _FitMESEOutputSpec

    def _run_interface(self, runtime):
        img = nb.load(self.inputs.in_file)
        echoes = np.asarray(img.dataobj, dtype=np.float32)
        te = np.asarray(self.inputs.echo_times, dtype=np.float64)
        mask = np.asarray(nb.load(self.inputs.mask).dataobj) > 0 if self.inputs.mask else None
        tr = self.inputs.repetition_time
        common = {"refocus_deg": self.inputs.refocus_deg}
        single_grid = {"n_t2": 40, "n_b1": 15} if self.inputs.sloppy else {}
        wf_grid = {"n_t2": 24, "n_b1": 15} if self.inputs.sloppy else {}
        try:
            single = t2fit.fit_t2_single(echoes, te, mask=mask, **common, **single_grid)
            water_fat = t2fit.fit_t2_water_fat(echoes, te, mask=mask, tr_s=tr, **common, **wf_grid)
        except ValueError as err:
            raise ValueError(f"{self.inputs.in_file}: {err}") from None
        for key, data in (("t2", single["t2_s"]), ("pd", single["pd"]), ("water_t2", water_fat["water_t2_s"]),
                          ("ff", water_fat["ff_percent"]), ("b1", water_fat["b1"])):
            self._results[key] = save_image(data.astype(np.float32), img.affine, f"mese_{key}.nii.gz", runtime.cwd)
        self._results["single_metadata"] = t2fit.dictionary_description(te, model="single", **common, **single_grid)
        self._results["water_fat_metadata"] = t2fit.dictionary_description(te, model="water_fat", tr_s=tr, **common, **wf_grid)
        return runtime
