"""Group workflow: reads the participant derivatives only, never the raw images."""

from __future__ import annotations

from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from bids_muscle.config import Config
from bids_muscle.interfaces.agreement import SegmentationAgreement
from bids_muscle.interfaces.group import AggregateBiomarkers
from bids_muscle.interfaces.reports import GroupReport


def init_group_wf(config: Config) -> Workflow:
    """Aggregate participant biomarker tables into ``<out>/group/``.

    Outputs
    -------
    ``group/biomarkers.tsv`` (one row per participant, session, site, region,
    side, muscle and network), ``biomarkers_wide.tsv``, ``site_summary.tsv``,
    ``site_effects.tsv`` (several sites with enough participants each),
    ``network_differences.tsv`` and ``bland_altman.tsv`` (several networks on
    the same region), ``longitudinal.tsv`` (a participant with two sessions),
    ``excluded.tsv``, the
    mask-based ``agreement.tsv``, ``agreement_summary.tsv``,
    ``agreement_bland_altman.tsv`` and ``agreement_g20.tsv`` (several
    networks, or a reference segmentation) and ``report.html``.
    """
    workflow = Workflow(name="group_wf")
    workflow.__desc__ = (
        "Participant biomarker tables were aggregated per site, region, muscle and network; segmentations were "
        "compared muscle by muscle (Dice, 95th-percentile Hausdorff distance, average symmetric surface distance, "
        "absence and outlier rates, biomarker differences with Bland-Altman limits and G20-/G20+ tests; "
        "Hostin et al. 2023)."
    )
    aggregate = pe.Node(
        AggregateBiomarkers(
            out_dir=str(config.output_dir),
            participants_tsv=str(config.bids_dir / "participants.tsv"),
            site_column=config.site_column,
            participants=list(config.participant_label),
        ),
        name="aggregate",
        overwrite=True,  # the group nodes write outside the work dir and only read tables: always rerun
    )
    agreement = pe.Node(
        SegmentationAgreement(
            out_dir=str(config.output_dir),
            participants_tsv=str(config.bids_dir / "participants.tsv"),
            site_column=config.site_column,
            reference_dir=str(config.reference_seg) if config.reference_seg else None,
            participants=list(config.participant_label),
        ),
        name="agreement",
        overwrite=True,
    )
    report = pe.Node(GroupReport(out_dir=str(config.output_dir), command=config.command, methods=[workflow.__desc__]),
                     name="report", overwrite=True)
    workflow.connect([
        (aggregate, report, [("tables", "tables"), ("notes", "notes")]),
        (agreement, report, [("tables", "agreement_tables")]),
    ])
    return workflow
