"""Participant workflow: one per participant and session, one branch per region."""

from __future__ import annotations

from nipype.interfaces import utility as niu
import nibabel as nb
import numpy as np
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from pathlib import Path

from bids_muscle import bids
from bids_muscle.bids import DESCRIPTIONS, RegionInputs
from bids_muscle.config import Config
from bids_muscle.interfaces.bias import N4BiasCorrection
from bids_muscle.interfaces.biomarkers import MuscleBiomarkers
from bids_muscle.interfaces.derivatives import DerivativesSink
from bids_muscle.interfaces.qmaps import ComputeMTR, DoubleAngleB1, FitMEGRE, FitMESE, TwoPointT2, WaterFatFF
from bids_muscle.interfaces.reports import ParticipantReport
from bids_muscle.interfaces.segmentation import MuscleRegionIMAT, SegmentMuscles
from bids_muscle.qmri import dixon
from bids_muscle.reports.methods import workflow_descriptions
from bids_muscle.seg.ensemble import ensemble_members
from bids_muscle.seg.zoo import region_networks

MESE_MAPS = ("t2", "pd", "water_t2", "ff", "b1")
IMAT_DESCRIPTIONS = {
    "dcae": "classified by clustering (k-means, two classes) the embeddings of 16x16 patches of the water T2 and "
            "fat-fraction maps from a convolutional autoencoder trained with a triplet loss on weak labels "
            "(fat fraction above 50 %), clusters named by their majority weak label; without multi-echo spin "
            "echo maps, its voxels with fat fraction above 50 %",
    "dcae-kmeans": "classified by k-means on the embeddings of a convolutional autoencoder trained without the "
                   "triplet loss",
    "kmeans": "classified by k-means (two classes) on the quantitative map values",
    "threshold": "its voxels with fat fraction above 50 %",
}


def _unless_written(*targets) -> bool | None:
    """``overwrite`` of a node that writes outside the work dir: rerun it when one of
    its ``targets`` is missing (a deleted output comes back); otherwise nipype's cache
    decides, so a rerun with nothing changed recomputes and rewrites nothing."""
    return True if not all(Path(t).exists() for t in targets) else None


def _node_name(*parts: str | None) -> str:
    return "_".join(p for p in parts if p).replace("-", "_")


def init_participant_wf(
    config: Config, subject: str, session: str | None, regions: list[RegionInputs], networks: dict[str, list[str]]
) -> Workflow:
    """Build the workflow of one participant (and session).

    Parameters
    ----------
    config
        Run configuration.
    subject, session
        Labels without ``sub-``/``ses-``.
    regions
        Inputs of each region found for this participant.
    networks
        Segmentation networks with a model for each region (may be empty).

    Outputs
    -------
    Derivatives under ``config.output_dir`` and the report ``sub-<label>.html``.
    """
    name = _node_name("sub", subject, "ses" if session else None, session, "wf")
    workflow = Workflow(name=name)  # the opening methods paragraph is templates/methods/intro.txt
    region_wfs = [init_region_wf(config, rin, networks.get(rin.region, [])) for rin in regions]
    report = pe.Node(
        ParticipantReport(out_dir=str(config.output_dir), subject=subject, command=config.command),
        name="report",
        overwrite=_unless_written(bids.report_path(config.output_dir, subject, session)),
    )
    if session:
        report.inputs.session = session
    if config.model_dir:
        report.inputs.model_dir = str(config.model_dir)
    merge = pe.Node(niu.Merge(len(region_wfs)), name="written", run_without_submitting=True)
    for k, rwf in enumerate(region_wfs):
        workflow.connect(rwf, "outputnode.written", merge, f"in{k + 1}")
    workflow.connect(merge, "out", report, "written")
    report.inputs.region_methods = {rin.region: workflow_descriptions(rwf) for rin, rwf in zip(regions, region_wfs)}
    report.inputs.warnings = [
        f"{rin.region}: no segmentation model available for networks "
        f"{', '.join(region_networks(rin.region, config.networks))}; "
        "per-muscle tables were not computed"
        for rin in regions
        if not networks.get(rin.region)
    ] + [warning for rin in regions for warning in input_warnings(rin)]
    return workflow


def _sink(config: Config, name: str, entities: dict, suffix: str, sources: list, metadata: dict, dtype: str = "float32"):
    target = bids.derivative_path(config.output_dir, {k: v for k, v in entities.items() if v}, suffix)
    return pe.Node(
        DerivativesSink(
            out_dir=str(config.output_dir),
            bids_dir=str(config.bids_dir),
            entities=entities,
            suffix=suffix,
            source_files=[str(s) for s in sources],
            metadata=metadata,
            dtype=dtype,
        ),
        name=name,
        run_without_submitting=True,
        overwrite=_unless_written(target, target.with_name(target.name.replace(".nii.gz", ".json"))),
    )


def megre_refusal(rin: RegionInputs) -> str | None:
    """Why the region's multi-echo gradient echo gives no Dixon fat
    fraction (echo times that cannot separate water from fat, see
    :func:`bids_muscle.qmri.dixon.check_separable`), or None."""
    if rin.megre_mag is None or rin.field_strength_t is None:
        return None
    try:
        dixon.check_separable(rin.megre_mag.echo_times_s, rin.field_strength_t)
    except ValueError as err:
        return f"{rin.region}: {rin.megre_mag.files[0].name}: {err}"
    return None


def input_warnings(rin: RegionInputs) -> list[str]:
    """What the user should know about the region's inputs before trusting its maps."""
    warnings = [refusal] if (refusal := megre_refusal(rin)) else []
    if rin.mese is not None and rin.mese.metadata[0].get("RepetitionTime") is None:
        warnings.append(f"{rin.region}: {rin.mese.files[0].name}: no RepetitionTime in the sidecar: the water/fat EPG "
                        "fit assumes full T1 recovery, which reads fat fraction high when TR is short")
    return warnings


def _dixon_source(rin: RegionInputs) -> str | None:
    """Source of the Dixon fat fraction: ``megre`` (a multi-echo gradient
    echo that can separate water from fat), ``waterfat`` (the scanner's
    water and fat images) or None."""
    if rin.megre_mag is not None and megre_refusal(rin) is None:
        return "megre"
    return "waterfat" if rin.dixon_water is not None else None


def _collect(workflow: Workflow, outputs: list[tuple], outputnode) -> None:
    """Merge the (node, field) pairs of everything written into ``outputnode.written``."""
    merge = pe.Node(niu.Merge(len(outputs), ravel_inputs=True), name="collect_written", run_without_submitting=True)
    for k, (node, field) in enumerate(outputs):
        workflow.connect(node, field, merge, f"in{k + 1}")
    workflow.connect(merge, "out", outputnode, "written")


def init_region_wf(config: Config, rin: RegionInputs, networks: list[str]) -> Workflow:
    """Everything done on one region (thigh or calf) of one participant.

    Parameters
    ----------
    config
        Run configuration.
    rin
        Inputs of the region.
    networks
        Segmentation networks to run (models exist for them).

    Outputs
    -------
    outputnode.written
        List of derivative files written (used to order the report after them).
    """
    workflow = Workflow(name=f"{rin.region}_wf")
    ref = rin.anatomical_reference
    if ref is not None:
        workflow.__desc__ = (
            f"For the {rin.region}, the anatomical reference ({ref.name.split('_')[-1].split('.')[0]} image) was "
            "corrected for intensity non-uniformity with N4 (Tustison et al. 2010) in SimpleITK."
        )
    else:  # a double-angle B1 pair only (see RegionInputs.anatomical_reference)
        workflow.__desc__ = (
            f"For the {rin.region}, only a double-angle B1 acquisition was available: no anatomical reference, "
            "so no bias-field correction and no muscle segmentation."
        )
    if rin.region_probabilities is not None:
        workflow.__desc__ = (
            f"The images carried no acq-<region> entity; a thigh/calf classifier (after Agosti et al. 2021) "
            f"applied to the anatomical reference called them {rin.region} "
            f"(probability {rin.region_probabilities[rin.region]:.2f}). " + workflow.__desc__
        )
    outputnode = pe.Node(niu.IdentityInterface(fields=["written"]), name="outputnode")
    ent = rin.entities
    written = []

    n4_ref = None
    if ref is not None:
        # a Dixon fat image shares the water reference's field: both feed the segmentation ensemble
        dixon_pair = _dixon_pair(rin)
        anat_files = [str(ref), str(rin.dixon_fat)] if dixon_pair else [str(ref)]
        n4_ref = pe.Node(N4BiasCorrection(in_files=anat_files, sloppy=config.sloppy, prefix="anat"), name="n4_anat")
        ref_suffix = ref.name.split("_")[-1].split(".")[0]  # T1w, PDw, T2w, MESE ...: desc-n4_<suffix>
        ds_ref = _sink(config, "ds_anat_n4", {**ent, "desc": "n4"}, ref_suffix, [ref],
                       {"Description": "anatomical reference, N4 bias-field corrected"})
        workflow.connect(n4_ref, "reference", ds_ref, "in_file")
        written.append((ds_ref, "out_file"))

    b1dam_wf = None
    if rin.b1_dam is not None:
        b1dam_wf = init_b1dam_wf(config, rin)
        written.append((b1dam_wf, "outputnode.written"))

    mese_wf = None
    if rin.mese is not None and len(rin.mese.files) >= 3:
        mese_wf = init_mese_wf(config, rin)
        written.append((mese_wf, "outputnode.written"))
        if rin.b1_prior is not None and rin.b1_prior[0] == "dam":
            workflow.connect(b1dam_wf, "outputnode.map", mese_wf, "inputnode.b1_map")
    elif rin.mese is not None:
        written.append((init_twopoint_wf(config, rin), "outputnode.written"))

    dixon_wf, dixon_ff = None, None
    dixon_source = _dixon_source(rin)
    if dixon_source == "megre":
        dixon_wf = init_dixon_wf(config, rin)
        dixon_ff = "outputnode.ff"
    elif dixon_source == "waterfat":
        dixon_wf = init_waterfat_wf(config, rin)
        dixon_ff = "outputnode.map"
    if dixon_wf is not None:
        written.append((dixon_wf, "outputnode.written"))

    mtr_wf = None
    if rin.mt_on is not None:
        mtr_wf = init_mtr_wf(config, rin)
        written.append((mtr_wf, "outputnode.written"))

    if networks and n4_ref is not None:
        seg_wf = init_segmentation_wf(config, rin, networks, dixon_pair=dixon_pair)
        workflow.connect(n4_ref, "reference", seg_wf, "inputnode.reference")
        if dixon_pair:
            workflow.connect(n4_ref, "out_file", seg_wf, "inputnode.dixon_stack")
        written.append((seg_wf, "outputnode.written"))
        if mese_wf is not None:
            workflow.connect(mese_wf, "outputnode.ff", seg_wf, "inputnode.ff")
            for field in MESE_MAPS:
                workflow.connect(mese_wf, f"outputnode.{field}", seg_wf, f"inputnode.mese_{field}")
        elif dixon_wf is not None:
            workflow.connect(dixon_wf, dixon_ff, seg_wf, "inputnode.ff")
        if dixon_wf is not None:
            workflow.connect(dixon_wf, dixon_ff, seg_wf, "inputnode.ff_dixon")
        if dixon_source == "megre" and rin.megre_phase is not None:
            workflow.connect(dixon_wf, "outputnode.r2star", seg_wf, "inputnode.r2star")
        if mtr_wf is not None:
            workflow.connect(mtr_wf, "outputnode.map", seg_wf, "inputnode.mtr")
    _collect(workflow, written, outputnode)
    return workflow


def init_mese_wf(config: Config, rin: RegionInputs) -> Workflow:
    """T2, PD, water T2, fat fraction and B1 maps from a multi-echo spin echo.

    N4 is estimated on the first echo and the same field divides every echo,
    so the echo decay is untouched. The single-component EMC fit gives
    ``T2map`` and ``PDmap``; the two-component water/fat fit gives
    ``desc-water_T2map``, ``desc-mese_FFmap`` and ``desc-epg_TB1map``.

    With a measured B1 (``rin.b1_prior``: the dataset's ``TB1map``, else
    the double-angle map of the ``TB1DAM`` pair, connected to
    ``inputnode.b1_map``), both fits search only the dictionary B1 values
    near it; the sidecars say which map under ``B1Source``.

    Inputs
    ------
    inputnode.b1_map
        The double-angle B1 map (only when ``rin.b1_prior`` is ``dam``).

    Outputs
    -------
    outputnode.written
        Derivatives written.
    outputnode.t2, pd, water_t2, ff, b1
        The written maps (derivative paths).
    """
    workflow = Workflow(name="mese_wf")
    te_ms = ", ".join(f"{t * 1000:.1f}" for t in rin.mese.echo_times_s)
    workflow.__desc__ = (
        f"The multi-echo spin echo ({len(rin.mese.files)} echoes, TE {te_ms} ms, refocusing "
        f"{rin.refocusing_flip_angle_deg:.0f} deg) was corrected with the N4 field of its first echo"
        + (", denoised by local principal component analysis with Marchenko-Pastur thresholding "
           "(Veraart et al. 2016; Does et al. 2019)" if config.mese_denoise == "mppca" else "")
        + " and fitted voxel-wise by extended phase graph (EPG) dictionary matching: a single-component "
        "echo-modulation-curve fit (Ben-Eliezer et al. 2015; Amer et al. 2022) gave T2 and proton density, "
        f"and a two-component water/fat model with fixed fat T2 ({config.mese_fat_t2_ms:g} ms) and T1 (Marty et al. "
        "2016) gave water T2, fat fraction and B1; both modelled the slice profile of "
        + ("an ideal slice." if config.mese_refocus_width == 0 else
           f"Hann-windowed sinc pulses with a refocusing slice {config.mese_refocus_width:g} times as thick as the "
           "excited one.")
    )
    b1_prior = rin.b1_prior
    if b1_prior is not None:
        kind, b1_files = b1_prior
        workflow.__desc__ += (
            " The B1 of both fits was restricted to within 0.05 (at least two dictionary steps) of "
            + (f"the dataset's B1 map ({b1_files[0].name})" if kind == "tb1map" else "the double-angle B1 map")
            + ", resampled to the grid of the multi-echo spin echo; voxels it does not cover were left unconstrained."
        )
    inputnode = pe.Node(niu.IdentityInterface(fields=["b1_map"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["written", *MESE_MAPS]), name="outputnode")
    files = [str(f) for f in rin.mese.files]
    volumes = [m.get("VolumeIndex") for m in rin.mese.metadata]
    n4 = pe.Node(N4BiasCorrection(in_files=files, volumes=volumes, sloppy=config.sloppy, prefix="mese"), name="n4_mese")
    fit = pe.Node(
        FitMESE(
            echo_times=list(rin.mese.echo_times_s),
            refocus_deg=rin.refocusing_flip_angle_deg or 180.0,
            repetition_time=rin.mese.metadata[0].get("RepetitionTime"),
            sloppy=config.sloppy,
            denoise=config.mese_denoise,
            fat_t2=config.mese_fat_t2_ms / 1000.0,
            refocus_width=config.mese_refocus_width,
        ),
        name="fit_mese",
        n_procs=config.omp_nthreads,
    )
    workflow.connect([(n4, fit, [("out_file", "in_file"), ("mask", "mask")])])
    sources = list(files)
    if b1_prior is not None:
        uris = [bids.bids_uri(f, config.bids_dir) for f in b1_files]
        sources += [str(f) for f in b1_files]
        if kind == "tb1map":
            fit.inputs.b1_map = str(b1_files[0])
            fit.inputs.b1_units = rin.tb1map_units or ""
            fit.inputs.b1_source = uris[0]
        else:
            fit.inputs.b1_source = f"double-angle map (desc-dam_TB1map) of {', '.join(uris)}"
            workflow.connect(inputnode, "b1_map", fit, "b1_map")
    ent = rin.entities
    outputs = (
        ("t2", ent, "T2map", {"Units": "s", "Description": "single-component EPG T2"}, "single_metadata"),
        ("pd", ent, "PDmap", {"Units": "arbitrary", "Description": "proton density back-extrapolated to t=0"}, "single_metadata"),
        ("water_t2", {**ent, "desc": "water"}, "T2map", {"Units": "s", "Description": DESCRIPTIONS["water"]}, "water_fat_metadata"),
        ("ff", {**ent, "desc": "mese"}, "FFmap", {"Units": "percent", "Description": DESCRIPTIONS["mese"]}, "water_fat_metadata"),
        ("b1", {**ent, "desc": "epg"}, "TB1map",
         {"Units": "arbitrary", "Description": "transmit field as a fraction of the nominal flip angles (1 = nominal)"},
         "water_fat_metadata"),
    )
    sinks = []
    for field, entities, suffix, meta, fit_meta in outputs:
        ds = _sink(config, f"ds_{field}", entities, suffix, sources, meta)
        workflow.connect([
            (fit, ds, [(field, "in_file"), ((fit_meta, _merged_metadata, meta), "metadata")]),
            (ds, outputnode, [("out_file", field)]),
        ])
        sinks.append((ds, "out_file"))
    _collect(workflow, sinks, outputnode)
    return workflow


def init_dixon_wf(config: Config, rin: RegionInputs) -> Workflow:
    """Fat fraction, R2* and B0 from a multi-echo gradient echo.

    Outputs
    -------
    outputnode.written
        Derivatives written.
    outputnode.ff, r2star
        The written maps (derivative paths; R2* only with phase images).
    """
    workflow = Workflow(name="dixon_wf")
    te_ms = ", ".join(f"{t * 1000:.2f}" for t in rin.megre_mag.echo_times_s)
    complex_data = rin.megre_phase is not None
    workflow.__desc__ = (
        f"The multi-echo gradient echo ({len(rin.megre_mag.files)} echoes, TE {te_ms} ms, "
        f"{rin.field_strength_t:g} T) was separated into water and fat with "
        + ("a 6-peak fat spectrum (Hamilton et al. 2011; Yu et al. 2008) " if config.dixon_fat_model == "hamilton6"
           else "a single-peak fat spectrum (-3.4 ppm) ")
        + ("by variable projection over an off-resonance grid with a spatially grown field map, also giving "
           "R2* and the B0 field map." if complex_data else
           "from the magnitude images only (fat fraction limited to 0-50 %, water assumed dominant).")
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=["written", "ff", "r2star"]), name="outputnode")
    fit = pe.Node(
        FitMEGRE(magnitude=[str(f) for f in rin.megre_mag.files], echo_times=list(rin.megre_mag.echo_times_s),
                 field_strength=rin.field_strength_t, fat_model=config.dixon_fat_model),
        name="fit_megre",
        n_procs=config.omp_nthreads,
    )
    sources = list(rin.megre_mag.files)
    if complex_data:
        fit.inputs.phase = [str(f) for f in rin.megre_phase.files]
        sources += list(rin.megre_phase.files)
    ent = rin.entities
    outputs = [("ff", {**ent, "desc": "dixon"}, "FFmap", {"Units": "percent", "Description": DESCRIPTIONS["dixon"]})]
    if complex_data:
        outputs += [
            ("r2star", ent, "R2starmap", {"Units": "1/s", "Description": "R2* of the water-fat model"}),
            ("b0", {**ent, "desc": "b0"}, "fieldmap", {"Units": "Hz", "Description": DESCRIPTIONS["b0"]}),
        ]
    sinks = []
    for field, entities, suffix, meta in outputs:
        ds = _sink(config, f"ds_{field}", entities, suffix, sources, meta)
        workflow.connect([(fit, ds, [(field, "in_file"), (("metadata", _merged_metadata, meta), "metadata")])])
        if field in ("ff", "r2star"):
            workflow.connect(ds, "out_file", outputnode, field)
        sinks.append((ds, "out_file"))
    _collect(workflow, sinks, outputnode)
    return workflow


def _single_map_wf(config: Config, name: str, desc: str, compute, field: str, entities: dict, suffix: str,
                   sources: list, metadata: dict) -> Workflow:
    """A workflow of one computing node whose one map is stored; outputs ``written`` and ``map``."""
    workflow = Workflow(name=name)
    workflow.__desc__ = desc
    outputnode = pe.Node(niu.IdentityInterface(fields=["written", "map"]), name="outputnode")
    ds = _sink(config, f"ds_{field}", entities, suffix, sources, metadata)
    workflow.connect([(compute, ds, [(field, "in_file")]), (ds, outputnode, [("out_file", "map")])])
    _collect(workflow, [(ds, "out_file")], outputnode)
    return workflow


def init_waterfat_wf(config: Config, rin: RegionInputs) -> Workflow:
    """Fat fraction (``desc-dixon_FFmap``) from the scanner's Dixon water and fat images.

    Outputs
    -------
    outputnode.written, outputnode.map
    """
    return _single_map_wf(
        config, "waterfat_wf",
        "The fat fraction was computed from the scanner's Dixon water and fat images as 100 F / (W + F).",
        pe.Node(WaterFatFF(water=str(rin.dixon_water), fat=str(rin.dixon_fat)), name="waterfat_ff"),
        "ff", {**rin.entities, "desc": "dixon"}, "FFmap", [rin.dixon_water, rin.dixon_fat],
        {"Units": "percent", "Description": "fat fraction 100 |F| / (|W| + |F|) from scanner water and fat images"},
    )


def init_twopoint_wf(config: Config, rin: RegionInputs) -> Workflow:
    """T2 from a 2-echo spin echo (``desc-twopoint_T2map``, seconds, and ``desc-twopoint_S0map``)."""
    workflow = Workflow(name="twopoint_wf")
    te1, te2 = rin.mese.echo_times_s
    files = [str(f) for f in rin.mese.files]
    separate = len(set(files)) > 1
    workflow.__desc__ = (
        f"T2 was computed from the two spin echoes (TE {te1 * 1000:.1f} and {te2 * 1000:.1f} ms) as "
        "(TE2 - TE1) / ln(S1 / S2)"
        + (". The echoes were separate series, so the second was registered rigidly onto the first (SimpleITK, "
           "Mattes mutual information; in-plane only for thick slices) and the registration was kept only when it "
           "lowered the edge artefacts of ln(S1 / S2); the estimated translation and rotation, and whether the "
           "registration was applied, are in the Registration field of the sidecars." if separate else ".")
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=["written"]), name="outputnode")
    compute = pe.Node(TwoPointT2(in_files=files, volumes=[m.get("VolumeIndex") for m in rin.mese.metadata],
                                 echo_times=list(rin.mese.echo_times_s)), name="twopoint_t2")
    meta = {"EchoTime": [te1, te2], "Description": DESCRIPTIONS["twopoint"]}
    ds_t2 = _sink(config, "ds_t2", {**rin.entities, "desc": "twopoint"}, "T2map", files, {**meta, "Units": "s"})
    ds_s0 = _sink(config, "ds_s0", {**rin.entities, "desc": "twopoint"}, "S0map", files, {**meta, "Units": "arbitrary"})
    workflow.connect([
        (compute, ds_t2, [("t2", "in_file"), (("metadata", _merged_metadata, {**meta, "Units": "s"}), "metadata")]),
        (compute, ds_s0, [("s0", "in_file"),
                          (("metadata", _merged_metadata, {**meta, "Units": "arbitrary"}), "metadata")]),
    ])
    _collect(workflow, [(ds_t2, "out_file"), (ds_s0, "out_file")], outputnode)
    return workflow


def init_b1dam_wf(config: Config, rin: RegionInputs) -> Workflow:
    """Relative B1 by the double-angle method (``fmap`` TB1DAM pair) as ``desc-dam_TB1map``."""
    a1, a2 = (m["FlipAngle"] for m in rin.b1_dam.metadata)
    return _single_map_wf(
        config, "b1dam_wf", f"B1 was mapped by the double-angle method ({a1:g} and {a2:g} deg).",
        pe.Node(DoubleAngleB1(s_alpha=str(rin.b1_dam.files[0]), s_2alpha=str(rin.b1_dam.files[1]), nominal_deg=a1),
                name="double_angle_b1"),
        "b1", {**rin.entities, "desc": "dam"}, "TB1map", rin.b1_dam.files,
        {"Units": "arbitrary", "Description": "transmit field as a fraction of nominal (1 = nominal), double-angle method",
         "FlipAngle": [a1, a2]},
    )


def init_mtr_wf(config: Config, rin: RegionInputs) -> Workflow:
    """Magnetisation transfer ratio (``MTRmap``) from MT-off and MT-on images.

    Outputs
    -------
    outputnode.written, outputnode.map
    """
    return _single_map_wf(
        config, "mtr_wf", "The magnetisation transfer ratio was computed as MTR = 100 (M_off - M_on) / M_off.",
        pe.Node(ComputeMTR(mt_off=str(rin.mt_off), mt_on=str(rin.mt_on)), name="compute_mtr"),
        "mtr", rin.entities, "MTRmap", [rin.mt_off, rin.mt_on],
        {"Units": "percent", "Description": "magnetisation transfer ratio 100 (M_off - M_on) / M_off"},
    )


def init_segmentation_wf(config: Config, rin: RegionInputs, networks: list[str], *, dixon_pair: bool = False) -> Workflow:
    """Muscle labels per network, muscle region, IMAT and the per-muscle biomarker tables.

    With ``dixon_pair`` (:func:`_dixon_pair`), ``inputnode.dixon_stack`` holds the
    bias-corrected water and fat images, and both are segmented.

    Inputs
    ------
    inputnode.reference
        Bias-corrected anatomical reference.
    inputnode.ff
        Fat-fraction map for the IMAT threshold (optional).
    inputnode.mese_<map>
        MESE maps summarised per muscle (optional).

    Outputs
    -------
    outputnode.written
        Derivatives written.
    """
    workflow = Workflow(name="segmentation_wf")
    workflow.__desc__ = (
        f"Individual muscles were segmented on the anatomical reference with {', '.join(networks)} "
        "after splitting and mirroring the legs (Rohm et al. 2021; Agosti et al. 2021), averaging the probabilities "
        f"of {_ensemble_text(dixon_pair, config.seg_scales)}; each muscle's confidence was the Dice expected from these probabilities. "
        "The muscle region "
        "(muscles and the fat between them, without bone or subcutaneous fat) was the union of the muscle "
        f"labels closed in-plane, and intramuscular adipose tissue (IMAT) was {IMAT_DESCRIPTIONS[config.imat_method]} "
        "(Amer et al. 2022). Per-muscle biomarkers were the statistics of each map inside each label "
        "(Hostin et al. 2023)."
    )
    map_fields = [f"mese_{m}" for m in MESE_MAPS] + ["ff_dixon", "r2star", "mtr"]
    inputnode = pe.Node(niu.IdentityInterface(fields=["reference", "dixon_stack", "ff", *map_fields]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["written"]), name="outputnode")
    ent = rin.entities
    sources = [rin.anatomical_reference]
    written = []
    merge_dseg = pe.Node(niu.Merge(len(networks)), name="merge_dseg", run_without_submitting=True)
    merge_quality = pe.Node(niu.Merge(len(networks)), name="merge_quality", run_without_submitting=True)
    merge_members = pe.Node(niu.Merge(len(networks)), name="merge_members", run_without_submitting=True)
    for k, network in enumerate(networks):
        seg = pe.Node(
            SegmentMuscles(region=rin.region, networks=[network], model_dir=config.model_dir, scales=list(config.seg_scales),
                           num_threads=config.omp_nthreads, probabilities=config.write_probseg),
            name=f"seg_{network}",
            n_procs=config.omp_nthreads,
        )
        if dixon_pair:
            workflow.connect(inputnode, "dixon_stack", seg, "dixon_stack")
        workflow.connect(seg, ("quality", _first), merge_quality, f"in{k + 1}")
        workflow.connect(seg, ("member_dsegs", _first), merge_members, f"in{k + 1}")
        ds = _sink(config, f"ds_dseg_{network}", {**ent, "desc": network}, "dseg", sources,
                   {"Description": f"individual muscles segmented by {network}", "LabelTable": f"desc-{network}_dseg.tsv"},
                   dtype="int16")
        workflow.connect([
            (inputnode, seg, [("reference", "in_file")]),
            (seg, ds, [(("dsegs", _first), "in_file"), (("model_cards", _model_metadata, ds.inputs.metadata), "metadata")]),
            (ds, merge_dseg, [("out_file", f"in{k + 1}")]),
        ])
        written.append((ds, "out_file"))
        if config.write_probseg:
            ds_prob = _sink(config, f"ds_probseg_{network}", {**ent, "desc": network}, "probseg", sources,
                            {"Description": f"per-label probabilities of {network}; volume k is label LabelIndices[k]"})
            workflow.connect([(seg, ds_prob, [(("probsegs", _first), "in_file"),
                                              (("probseg_labels", _labels_metadata), "metadata")])])
            written.append((ds_prob, "out_file"))

    region = pe.Node(MuscleRegionIMAT(imat_method=config.imat_method, region=rin.region, model_dir=config.model_dir,
                                      num_threads=config.omp_nthreads), name="muscle_region", n_procs=config.omp_nthreads)
    ds_region = _sink(config, "ds_muscleregion", {**ent, "desc": "muscleregion"}, "mask", sources,
                      {"Description": DESCRIPTIONS["muscleregion"], "Network": networks[0]}, dtype="uint8")
    workflow.connect([
        (inputnode, region, [("reference", "reference")]),
        (merge_dseg, region, [(("out", _first), "dseg")]),
        (region, ds_region, [("muscle_region", "in_file"),
                             (("region_metadata", _merged_metadata, ds_region.inputs.metadata), "metadata")]),
    ])
    written.append((ds_region, "out_file"))
    biomarkers = pe.Node(
        MuscleBiomarkers(
            networks=networks, region=rin.region, erode_mm=config.erode_mm, out_dir=str(config.output_dir),
            entities=ent, source_files=[str(f) for f in rin.all_files()], bids_dir=str(config.bids_dir),
        ),
        name="biomarkers",
        overwrite=_unless_written(*(bids.derivative_path(config.output_dir, {k: v for k, v in ent.items() if v}, suffix, ext)
                                    for suffix in ("biomarkers", "slices") for ext in (".tsv", ".json"))),
    )
    workflow.connect([
        (merge_dseg, biomarkers, [("out", "dsegs")]),
        (merge_quality, biomarkers, [("out", "seg_quality")]),
        (merge_members, biomarkers, [("out", "member_dsegs")]),
        (ds_region, biomarkers, [("out_file", "muscle_region")]),
    ])
    dixon_source = _dixon_source(rin)
    if dixon_source is not None:
        workflow.connect(inputnode, "ff_dixon", biomarkers, "ff_dixon")
        if dixon_source == "megre" and rin.megre_phase is not None:
            workflow.connect(inputnode, "r2star", biomarkers, "r2star")
    if rin.mt_on is not None:
        workflow.connect(inputnode, "mtr", biomarkers, "mtr")
    ff_sources = _ff_sources(rin)
    has_mese_maps = rin.mese is not None and len(rin.mese.files) >= 3
    if ff_sources:
        ds_imat = _sink(config, "ds_imat", {**ent, "desc": "imat"}, "mask", sources + ff_sources,
                        {"Description": DESCRIPTIONS["imat"]}, dtype="uint8")
        workflow.connect([
            (inputnode, region, [("ff", "ff_map")]),
            (region, ds_imat, [("imat_mask", "in_file"), (("imat_metadata", _merged_metadata, ds_imat.inputs.metadata),
                                                          "metadata")]),
            (ds_imat, biomarkers, [("out_file", "imat_mask")]),
        ])
        written.append((ds_imat, "out_file"))
        if has_mese_maps:
            workflow.connect(inputnode, "mese_water_t2", region, "water_t2")
            workflow.connect(inputnode, "mese_t2", region, "t2")
            workflow.connect(inputnode, "mese_pd", region, "pd")
            if config.imat_method != "threshold":
                ds_imat_prob = _sink(config, "ds_imat_probseg", {**ent, "desc": "imat"}, "probseg", sources + ff_sources,
                                     {"Description": "probability that a muscle-region voxel is IMAT (soft k-means "
                                                     "assignment; 0 outside the region)", "Units": "arbitrary"})
                workflow.connect([(region, ds_imat_prob, [("imat_probability", "in_file"),
                                                          (("imat_metadata", _merged_metadata, ds_imat_prob.inputs.metadata),
                                                           "metadata")])])
                written.append((ds_imat_prob, "out_file"))
    if has_mese_maps:
        workflow.connect([(inputnode, biomarkers, [("mese_t2", "t2"), ("mese_pd", "pd"), ("mese_water_t2", "water_t2"),
                                                   ("mese_ff", "ff_mese"), ("mese_b1", "b1")])])
    written += [(biomarkers, "out_table"), (biomarkers, "out_slices")]
    _collect(workflow, written, outputnode)
    return workflow


def _ff_sources(rin: RegionInputs) -> list:
    """Raw files of the fat-fraction map used for IMAT: MESE (3+ echoes), else Dixon."""
    if rin.mese is not None and len(rin.mese.files) >= 3:
        return list(rin.mese.files)
    dixon_source = _dixon_source(rin)
    if dixon_source == "megre":
        return list(rin.megre_mag.files)
    if dixon_source == "waterfat":
        return [rin.dixon_water, rin.dixon_fat]
    return []


def _dixon_pair(rin: RegionInputs) -> bool:
    """The reference is a Dixon water image with a fat image on its grid: both are segmented (seg.ensemble)."""
    if rin.anatomical_reference is None or rin.anatomical_reference != rin.dixon_water or rin.dixon_fat is None:
        return False
    water, fat = nb.load(rin.dixon_water), nb.load(rin.dixon_fat)
    return water.shape[:3] == fat.shape[:3] and np.allclose(water.affine, fat.affine, atol=1e-3)


def _ensemble_text(dixon_pair: bool, scales) -> str:
    """The passes of the segmentation ensemble, in words (seg.ensemble.ensemble_members)."""
    if dixon_pair:
        return "the water, fat and water+fat images"
    members = ensemble_members(["reference"], scales)
    return f"{len(members)} model voxel sizes ({', '.join(f'{s:g}' for _, s in members)} x the model's)"


def _model_metadata(cards: list, base: dict) -> dict:
    return {**base, "Model": cards[0]}


def _labels_metadata(probseg_labels: list) -> dict:
    return {
        "Description": "per-label probabilities; volume k is label LabelIndices[k] of the label table",
        "LabelIndices": probseg_labels[0],
    }


def _first(items):
    return items[0] if isinstance(items, list) else items


def _merged_metadata(fit_metadata: dict, base: dict) -> dict:
    return {**base, **fit_metadata}
