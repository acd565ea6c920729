"""Participant workflow: one per participant and session, one branch per region."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from bids_muscle import __version__
from bids_muscle.bids import DESCRIPTIONS, RegionInputs
from bids_muscle.config import Config
from bids_muscle.interfaces.bias import N4BiasCorrection
from bids_muscle.interfaces.derivatives import DerivativesSink
from bids_muscle.interfaces.qmaps import FitMESE
from bids_muscle.interfaces.reports import ParticipantReport


def _node_name(*parts: str | None) -> str:
    return "_".join(p for p in parts if p).replace("-", "_")


def init_participant_wf(config: Config, subject: str, session: str | None, regions: list[RegionInputs]) -> Workflow:
    """Build the workflow of one participant (and session).

    Parameters
    ----------
    config
        Run configuration.
    subject, session
        Labels without ``sub-``/``ses-``.
    regions
        Inputs of each region found for this participant.

    Outputs
    -------
    Derivatives under ``config.output_dir`` and the report ``sub-<label>.html``.
    """
    name = _node_name("sub", subject, "ses" if session else None, session, "wf")
    workflow = Workflow(name=name)
    workflow.__desc__ = (
        "Images were processed with *bids_muscle* {version}, a BIDS App for quantitative MRI of the "
        "thigh and calf muscles built on Nipype (Gorgolewski et al. 2011) and NiWorkflows. "
    )
    region_wfs = []
    for rin in regions:
        region_wfs.append(init_region_wf(config, rin))
    workflow.add_nodes(region_wfs)

    report = pe.Node(
        ParticipantReport(out_dir=str(config.output_dir), subject=subject, command=config.command),
        name="report",
    )
    if session:
        report.inputs.session = session
    report.inputs.methods = [
        paragraph.format(version=__version__) for paragraph in workflow.visit_desc().split("\n") if paragraph.strip()
    ]
    merge = pe.Node(niu.Merge(len(region_wfs)), name="written")
    for k, rwf in enumerate(region_wfs):
        workflow.connect(rwf, "outputnode.written", merge, f"in{k + 1}")
    workflow.connect(merge, "out", report, "written")
    return workflow


def _sink(config: Config, name: str, entities: dict, suffix: str, sources: list, metadata: dict, dtype: str = "float32"):
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
    )


def init_region_wf(config: Config, rin: RegionInputs) -> Workflow:
    """Everything done on one region (thigh or calf) of one participant.

    Outputs
    -------
    outputnode.written
        List of derivative files written (used to order the report after them).
    """
    workflow = Workflow(name=f"{rin.region}_wf")
    workflow.__desc__ = (
        f"For the {rin.region}, the anatomical reference was corrected for intensity non-uniformity "
        "with N4 (Tustison et al. 2010, SimpleITK)."
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=["written"]), name="outputnode")
    entities = rin.entities
    written = []  # (node, output field) of everything stored

    ref = rin.anatomical_reference
    n4_ref = pe.Node(N4BiasCorrection(in_files=[str(ref)], sloppy=config.sloppy, prefix="anat"), name="n4_anat")
    ref_suffix = ref.name.split("_")[-1].split(".")[0]
    ds_ref = _sink(config, "ds_anat_n4", {**entities, "desc": "n4"}, ref_suffix, [ref],
                   {"Description": "anatomical reference, N4 bias-field corrected"})
    workflow.connect(n4_ref, "reference", ds_ref, "in_file")
    written.append((ds_ref, "out_file"))

    if rin.mese is not None:
        mese_wf = init_mese_wf(config, rin)
        written.append((mese_wf, "outputnode.written"))

    collect = pe.Node(niu.Merge(len(written), ravel_inputs=True), name="collect_written", run_without_submitting=True)
    for k, (node, field) in enumerate(written):
        workflow.connect(node, field, collect, f"in{k + 1}")
    workflow.connect(collect, "out", outputnode, "written")
    return workflow


def _merge_sinks(workflow: Workflow, sinks: list) -> None:
    """Collect the ``out_file`` of every sink of ``workflow`` into ``outputnode.written``."""
    outputnode = pe.Node(niu.IdentityInterface(fields=["written"]), name="outputnode")
    merge = pe.Node(niu.Merge(len(sinks)), name="merge_written", run_without_submitting=True)
    for k, node in enumerate(sinks):
        workflow.connect(node, "out_file", merge, f"in{k + 1}")
    workflow.connect(merge, "out", outputnode, "written")


def init_mese_wf(config: Config, rin: RegionInputs) -> Workflow:
    """T2, PD, water T2, fat fraction and B1 maps from a multi-echo spin echo.

    N4 is estimated on the first echo and the same field divides every echo,
    so the echo decay is untouched. The single-component EMC fit gives
    ``T2map`` and ``PDmap``; the two-component water/fat fit gives
    ``desc-water_T2map``, ``desc-mese_FFmap`` and ``desc-epg_TB1map``.

    Outputs
    -------
    outputnode.written
        Derivatives written.
    """
    workflow = Workflow(name="mese_wf")
    te_ms = ", ".join(f"{t * 1000:.1f}" for t in rin.mese.echo_times_s)
    workflow.__desc__ = (
        f"The multi-echo spin echo ({len(rin.mese.files)} echoes, TE {te_ms} ms, refocusing "
        f"{rin.refocusing_flip_angle_deg:.0f} deg) was corrected with the N4 field of its first echo and "
        "fitted voxel-wise by extended phase graph (EPG) dictionary matching: a single-component "
        "echo-modulation-curve fit (Ben-Eliezer et al. 2015; Amer et al. 2022) gave T2 and proton density, "
        "and a two-component water/fat model with fixed fat T2 and T1 (Marty et al. 2016) gave water T2, "
        "fat fraction and B1."
    )
    files = [str(f) for f in rin.mese.files]
    volumes = [m.get("VolumeIndex") for m in rin.mese.metadata]
    n4 = pe.Node(N4BiasCorrection(in_files=files, volumes=volumes, sloppy=config.sloppy, prefix="mese"), name="n4_mese")
    fit = pe.Node(
        FitMESE(
            echo_times=list(rin.mese.echo_times_s),
            refocus_deg=rin.refocusing_flip_angle_deg or 180.0,
            repetition_time=rin.mese.metadata[0].get("RepetitionTime"),
            sloppy=config.sloppy,
        ),
        name="fit_mese",
        n_procs=config.omp_nthreads,
    )
    workflow.connect([(n4, fit, [("out_file", "in_file"), ("mask", "mask")])])
    ent = rin.entities
    outputs = (
        ("t2", {**ent}, "T2map", {"Units": "s", "Description": "single-component EPG T2"}, "single_metadata"),
        ("pd", {**ent}, "PDmap", {"Units": "arbitrary", "Description": "proton density back-extrapolated to t=0"}, "single_metadata"),
        ("water_t2", {**ent, "desc": "water"}, "T2map", {"Units": "s", "Description": DESCRIPTIONS["water"]}, "water_fat_metadata"),
        ("ff", {**ent, "desc": "mese"}, "FFmap", {"Units": "percent", "Description": DESCRIPTIONS["mese"]}, "water_fat_metadata"),
        ("b1", {**ent, "desc": "epg"}, "TB1map", {"Units": "arbitrary", "Description": "transmit field as a fraction of the nominal flip angles (1 = nominal)"}, "water_fat_metadata"),
    )
    sinks = []
    for field, entities, suffix, meta, fit_meta in outputs:
        ds = _sink(config, f"ds_{field}", entities, suffix, files, meta)
        workflow.connect([(fit, ds, [(field, "in_file"), ((fit_meta, _merged_metadata, meta), "metadata")])])
        sinks.append(ds)
    _merge_sinks(workflow, sinks)
    return workflow


def _merged_metadata(fit_metadata: dict, base: dict) -> dict:
    return {**base, **fit_metadata}
