"""Quantitative-map interfaces: read the series, call :mod:`bids_muscle.qmri`, save the maps."""

from __future__ import annotations

import nibabel as nb
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, InputMultiObject, SimpleInterface, TraitedSpec, traits

from bids_muscle.interfaces.images import load_pair_on_grid, load_series, save_image
from bids_muscle.qmri import b1 as b1map
from bids_muscle.qmri import dixon, mtr, se2echo
from bids_muscle.qmri import t2 as t2fit
from bids_muscle.qmri.bias import foreground_mask
from bids_muscle.qmri.denoise import default_window, denoise_mppca
from bids_muscle.qmri.epg import DEFAULT_TIME_BANDWIDTH, default_slice_profile


class _FitMESEInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="4D stack of echoes (x, y, z, echo), bias corrected")
    mask = File(exists=True, desc="foreground mask")
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times in seconds")
    refocus_deg = traits.Float(180.0, usedefault=True, desc="nominal refocusing flip angle")
    repetition_time = traits.Either(None, traits.Float, usedefault=True, desc="TR in seconds")
    sloppy = traits.Bool(False, usedefault=True, desc="coarse dictionaries")
    denoise = traits.Enum("mppca", "none", usedefault=True, desc="denoising of the echoes before the fits")
    fat_t2 = traits.Float(t2fit.FAT_T2_S, usedefault=True, desc="fat T2 (s) of the two-component fit")
    refocus_width = traits.Float(1.0, usedefault=True,
                                 desc="refocusing / excitation slice thickness of the slice profile (0: ideal slice)")
    b1_map = File(exists=True, desc="measured B1 map (any grid; resampled to the MESE grid) constraining both fits")
    b1_units = traits.Str("", usedefault=True, desc="Units of the B1 map sidecar ('percent' or relative)")
    b1_source = traits.Str("", usedefault=True, desc="where the B1 map comes from, for the sidecars")


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
        profile = (None if self.inputs.refocus_width == 0
                   else default_slice_profile(refocus_width_ratio=self.inputs.refocus_width))
        common = {"refocus_deg": self.inputs.refocus_deg, "slice_profile": profile}
        single_grid = {"n_t2": 40, "n_b1": 15} if self.inputs.sloppy else {}
        wf_grid = {"n_t2": 24, "n_b1": 15} if self.inputs.sloppy else {}
        denoising = {}
        b1_prior, b1_meta = None, {}
        if self.inputs.b1_map:
            from bids_muscle.interfaces.images import load_volume

            raw_b1, b1_affine = load_volume(self.inputs.b1_map)
            try:
                b1_prior = b1map.b1_on_grid(b1map.relative_b1(raw_b1, self.inputs.b1_units or None), b1_affine,
                                            echoes.shape[:3], img.affine)
            except ValueError as err:
                raise ValueError(f"{self.inputs.b1_map}: {err}") from None
            tolerance, step = t2fit.b1_window(**{k: v for k, v in wf_grid.items() if k == "n_b1"})
            inside = mask if mask is not None else np.ones(b1_prior.shape, bool)
            measured = np.isfinite(b1_prior) & inside
            b1_meta = {"B1Source": self.inputs.b1_source or "measured B1 map", "B1Regularisation": {
                "Method": "dictionary search restricted to B1 within B1Tolerance of the measured B1 map "
                          "(resampled linearly to the MESE grid); unconstrained where the map has no value; "
                          "the sub-grid refinement may move the B1 up to one dictionary step further",
                "B1Tolerance": round(tolerance, 4),
                "DictionaryB1Step": round(step, 4),
                "MeasuredB1Coverage": round(float(measured.sum() / max(int(inside.sum()), 1)), 4),
                "MeasuredB1Median": round(float(np.median(b1_prior[measured])), 4) if measured.any() else None}}
        try:
            if self.inputs.denoise == "mppca":
                window = default_window(echoes.shape[3])
                echoes, components, _ = denoise_mppca(echoes, mask=mask, window=window)
                kept = components[mask] if mask is not None else components
                denoising = {"Denoising": {
                    "Method": "local PCA with Marchenko-Pastur thresholding (Veraart et al. 2016)",
                    "Window": f"{window}x{window} in-plane",
                    "MedianComponentsKept": int(np.median(kept)) if kept.size else 0}}
            single = t2fit.fit_t2_single(echoes, te, mask=mask, b1_map=b1_prior, **common, **single_grid)
            water_fat = t2fit.fit_t2_water_fat(echoes, te, mask=mask, tr_s=tr, b1_map=b1_prior, fat_t2_s=self.inputs.fat_t2,
                                               **common, **wf_grid)
        except ValueError as err:
            raise ValueError(f"{self.inputs.in_file}: {err}") from None
        if b1_meta:  # near +B1Tolerance or -B1Tolerance: the echo trains disagree with the map
            offset = (water_fat["b1"] - b1_prior)[measured]
            offset = offset[np.isfinite(offset)]
            b1_meta["B1Regularisation"]["MedianWaterFatB1MinusMeasured"] = (
                round(float(np.median(offset)), 4) if offset.size else None)
        for key, data in (("t2", single["t2_s"]), ("pd", single["pd"]), ("water_t2", water_fat["water_t2_s"]),
                          ("ff", water_fat["ff_percent"]), ("b1", water_fat["b1"])):
            self._results[key] = save_image(data.astype(np.float32), img.affine, f"mese_{key}.nii.gz", runtime.cwd)
        profile_model = {"SliceProfileModel": "ideal slice" if profile is None else {
            "Pulses": "Hann-windowed sinc, small-tip profile", "TimeBandwidth": DEFAULT_TIME_BANDWIDTH,
            "RefocusingWidthRatio": self.inputs.refocus_width}}
        self._results["single_metadata"] = {
            **t2fit.dictionary_description(te, model="single", **common, **single_grid), **profile_model, **denoising,
            **b1_meta}
        self._results["water_fat_metadata"] = {
            **t2fit.dictionary_description(te, model="water_fat", tr_s=tr, fat_t2_s=self.inputs.fat_t2, **common, **wf_grid),
            **profile_model, **denoising, **b1_meta}
        return runtime


class _FitMEGREInputSpec(BaseInterfaceInputSpec):
    magnitude = InputMultiObject(File(exists=True), mandatory=True, desc="magnitude echoes, sorted by echo time")
    phase = InputMultiObject(File(exists=True), desc="phase echoes (radians, or scanner integers scaled to +-pi)")
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times in seconds")
    field_strength = traits.Float(mandatory=True, desc="MagneticFieldStrength in tesla")
    mask = File(exists=True, desc="foreground mask")
    fat_model = traits.Enum("hamilton6", "single", usedefault=True, desc="fat spectrum")


class _FitMEGREOutputSpec(TraitedSpec):
    ff = File(exists=True, desc="fat fraction (percent)")
    r2star = File(desc="R2* (1/s)")
    b0 = File(desc="off-resonance (Hz)")
    metadata = traits.Dict(desc="sidecar fields")


#: sidecar text of each fat spectrum of :func:`bids_muscle.qmri.fat_spectrum.fat_spectrum`
FAT_MODEL_NAMES = {"hamilton6": "6-peak (Hamilton et al. 2011)", "single": "single peak at -3.4 ppm"}


def _phase_radians(phase: np.ndarray) -> np.ndarray:
    """Phase images in radians; scanner integer phase (e.g. -4096..4095) is rescaled to +-pi."""
    top = float(np.nanmax(np.abs(phase)))
    return phase if top <= np.pi + 1e-3 else phase * (np.pi / top)


class FitMEGRE(SimpleInterface):
    """Water-fat separation of a multi-echo gradient echo (complex, or magnitude only)."""

    input_spec = _FitMEGREInputSpec
    output_spec = _FitMEGREOutputSpec

    def _run_interface(self, runtime):
        magnitude, affine = load_series(list(self.inputs.magnitude))
        te = np.asarray(self.inputs.echo_times, dtype=np.float64)
        mask = np.asarray(nb.load(self.inputs.mask).dataobj) > 0 if self.inputs.mask else foreground_mask(magnitude[..., 0])
        fat_model = self.inputs.fat_model
        meta = {"EchoTime": [round(float(t), 6) for t in te], "MagneticFieldStrength": self.inputs.field_strength,
                "FatModel": FAT_MODEL_NAMES[fat_model]}
        try:
            if self.inputs.phase:
                phase, _ = load_series(list(self.inputs.phase))
                signal = magnitude * np.exp(1j * _phase_radians(phase))
                out = dixon.separate_water_fat(signal, te, self.inputs.field_strength, mask=mask, fat_model=fat_model)
                meta["Algorithm"] = ("complex multi-echo water-fat separation: variable projection over an off-resonance "
                                     "grid, field map grown across the image to avoid swaps, R2* fitted, "
                                     "fat fraction by magnitude discrimination")
            else:
                out = dixon.fat_fraction_from_magnitude_echoes(magnitude, te, self.inputs.field_strength, mask=mask,
                                                               fat_model=fat_model)
                meta["Algorithm"] = "magnitude-only multi-echo fit (fat fraction ambiguous above 50 %, water assumed dominant)"
        except ValueError as err:
            raise ValueError(f"{self.inputs.magnitude[0]}: {err}") from None
        self._results["ff"] = save_image(np.asarray(out["ff_percent"], np.float32), affine, "dixon_ff.nii.gz", runtime.cwd)
        if "r2star_per_s" in out:
            self._results["r2star"] = save_image(np.asarray(out["r2star_per_s"], np.float32), affine, "r2star.nii.gz", runtime.cwd)
        if "b0_hz" in out:
            self._results["b0"] = save_image(np.asarray(out["b0_hz"], np.float32), affine, "b0.nii.gz", runtime.cwd)
        self._results["metadata"] = meta
        return runtime


class _MTRInputSpec(BaseInterfaceInputSpec):
    mt_off = File(exists=True, mandatory=True)
    mt_on = File(exists=True, mandatory=True)


class _MTROutputSpec(TraitedSpec):
    mtr = File(exists=True, desc="MTR (percent) on the MT-off grid")


class ComputeMTR(SimpleInterface):
    """MTR = 100 (M_off - M_on) / M_off, with MT-on resampled to the MT-off grid when they differ."""

    input_spec = _MTRInputSpec
    output_spec = _MTROutputSpec

    def _run_interface(self, runtime):
        m_off, m_on, off_affine = load_pair_on_grid(self.inputs.mt_off, self.inputs.mt_on)
        mask = foreground_mask(m_off)
        self._results["mtr"] = save_image(mtr.mtr_percent(m_off, m_on, mask=mask), off_affine, "mtr.nii.gz", runtime.cwd)
        return runtime


class _TwoPointInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="the two echoes, sorted by echo time")
    volumes = traits.List(traits.Either(None, traits.Int), desc="volume index per file for 4D inputs")
    echo_times = traits.List(traits.Float, mandatory=True, minlen=2, maxlen=2)


class _TwoPointOutputSpec(TraitedSpec):
    t2 = File(exists=True, desc="T2 (s)")
    s0 = File(exists=True, desc="signal extrapolated to t=0")
    metadata = traits.Dict(desc="sidecar fields (Registration when the echoes are separate series)")


def _registration_metadata(info: dict) -> dict:
    dof = info["degrees_of_freedom"]
    return {
        "Method": (f"rigid ({'in-plane, 3' if dof == 3 else '6'} degrees of freedom), SimpleITK, of the second "
                   "echo onto the first (a separate series), resampled by cubic B-spline; kept only when it "
                   "lowers the edge artefacts of ln(S1/S2) (mean in-plane gradient magnitude in the body)"),
        "Metric": "Mattes mutual information, 32 bins, two levels (2x shrunk), images smoothed by one "
                  "in-plane voxel at full resolution",
        "Applied": info["applied"],
        "TranslationMm": [round(t, 3) for t in info["translation_mm"]],
        "RotationDeg": [round(a, 3) for a in info["rotation_deg"]],
        "RotationCenterMm": [round(c, 2) for c in info["center_mm"]],
        "MaxDisplacementMm": round(info["max_displacement_mm"], 3),
        "EdgeEnergyBefore": round(info["edge_energy_before"], 5),
        "EdgeEnergyAfter": round(info["edge_energy_after"], 5),
        "Convention": "array axes i, j, k of the first echo; the transform maps a point of the first echo "
                      "to the same anatomy in the second (translation = displacement of the second echo)",
    }


class TwoPointT2(SimpleInterface):
    """T2 = (TE2 - TE1) / ln(S1 / S2) from a 2-echo spin echo.

    When the echoes are separate files (not two volumes of one 4D file), the
    second is put on the first's grid (by the affines if they differ) and
    registered rigidly onto it (:func:`bids_muscle.qmri.se2echo.align_second_echo`).
    """

    input_spec = _TwoPointInputSpec
    output_spec = _TwoPointOutputSpec

    def _run_interface(self, runtime):
        from bids_muscle.interfaces.images import load_volume

        files = list(self.inputs.in_files)
        volumes = self.inputs.volumes or [None] * len(files)
        te1, te2 = self.inputs.echo_times
        s1, affine = load_volume(files[0], volumes[0])
        s2, affine2 = load_volume(files[1], volumes[1])
        metadata = {}
        try:
            mask = foreground_mask(s1)
            if files[0] != files[1]:
                if s2.shape != s1.shape or not np.allclose(affine, affine2, atol=1e-3):
                    s2 = np.nan_to_num(mtr.resample_to_grid(s2, affine2, s1.shape, affine, order=3, cval=0.0))
                s2, info = se2echo.align_second_echo(s1, s2, nb.affines.voxel_sizes(affine), mask)
                metadata["Registration"] = _registration_metadata(info)
            out = se2echo.t2_two_point(s1, s2, te1, te2, mask=mask)
        except (ValueError, RuntimeError) as err:
            raise ValueError(f"{files[0]}: {err}") from None
        self._results["t2"] = save_image(out["t2_s"], affine, "t2_twopoint.nii.gz", runtime.cwd)
        self._results["s0"] = save_image(out["s0"], affine, "s0_twopoint.nii.gz", runtime.cwd)
        self._results["metadata"] = metadata
        return runtime


class _DAMInputSpec(BaseInterfaceInputSpec):
    s_alpha = File(exists=True, mandatory=True, desc="image at the nominal angle alpha")
    s_2alpha = File(exists=True, mandatory=True, desc="image at 2 alpha")
    nominal_deg = traits.Float(mandatory=True, desc="alpha in degrees")


class _DAMOutputSpec(TraitedSpec):
    b1 = File(exists=True, desc="B1 relative to nominal")


class DoubleAngleB1(SimpleInterface):
    """Relative B1 = arccos(S_2a / (2 S_a)) / alpha."""

    input_spec = _DAMInputSpec
    output_spec = _DAMOutputSpec

    def _run_interface(self, runtime):
        s_a, s_2a, affine = load_pair_on_grid(self.inputs.s_alpha, self.inputs.s_2alpha)
        b1 = b1map.b1_double_angle(s_a, s_2a, nominal_deg=self.inputs.nominal_deg, mask=foreground_mask(s_a))
        self._results["b1"] = save_image(b1, affine, "b1_dam.nii.gz", runtime.cwd)
        return runtime


class _WaterFatInputSpec(BaseInterfaceInputSpec):
    water = File(exists=True, mandatory=True)
    fat = File(exists=True, mandatory=True)


class _WaterFatOutputSpec(TraitedSpec):
    ff = File(exists=True, desc="fat fraction (percent)")


class WaterFatFF(SimpleInterface):
    """Fat fraction 100 |F| / (|W| + |F|) from scanner water and fat images."""

    input_spec = _WaterFatInputSpec
    output_spec = _WaterFatOutputSpec

    def _run_interface(self, runtime):
        water, fat, affine = load_pair_on_grid(self.inputs.water, self.inputs.fat)
        ff = dixon.fat_fraction_from_water_fat(water, fat, mask=foreground_mask(water + fat))
        self._results["ff"] = save_image(ff, affine, "dixon_ff.nii.gz", runtime.cwd)
        return runtime
