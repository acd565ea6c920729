"""Participant workflow: one per participant and session, one branch per region."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from bids_muscle.bids import RegionInputs
from bids_muscle.config import Config
from bids_muscle.interfaces.bias import N4BiasCorrection
from bids_muscle.interfaces.derivatives import DerivativesSink
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
    merge = pe.Node(niu.Merge(len(region_wfs)), name="written")
    for k, rwf in enumerate(region_wfs):
        workflow.connect(rwf, "outputnode.written", merge, f"in{k + 1}")
    workflow.connect(merge, "out", report, "written")
    return workflow


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
    ref = rin.anatomical_reference
    n4_ref = pe.Node(N4BiasCorrection(in_files=[str(ref)], sloppy=config.sloppy, prefix="anat"), name="n4_anat")
    ref_suffix = ref.name.split("_")[-1].split(".")[0]
    sink_ref = pe.Node(
        DerivativesSink(
            out_dir=str(config.output_dir),
            bids_dir=str(config.bids_dir),
            entities={**entities, "desc": "n4"},
            suffix=ref_suffix,
            source_files=[str(ref)],
            metadata={"Description": "anatomical reference, N4 bias-field corrected", "SkullStripped": False},
        ),
        name="ds_anat_n4",
    )
    collect = pe.Node(niu.Merge(1), name="collect_written")
    workflow.connect([
        (n4_ref, sink_ref, [("reference", "in_file")]),
        (sink_ref, collect, [("out_file", "in1")]),
        (collect, outputnode, [("out", "written")]),
    ])
    return workflow
