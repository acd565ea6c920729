"""Report interfaces: assemble HTML from what the run wrote."""

from __future__ import annotations

from nipype.interfaces.base import BaseInterfaceInputSpec, Directory, File, SimpleInterface, TraitedSpec, traits

from bids_muscle.reports.group import build_group_report
from bids_muscle.reports.participant import build_participant_report


class _ReportInputSpec(BaseInterfaceInputSpec):
    out_dir = Directory(mandatory=True)
    subject = traits.Str(mandatory=True)
    session = traits.Str()
    command = traits.Str("")
    region_methods = traits.Dict(traits.Str, traits.List(traits.Str), desc="region -> its workflow descriptions")
    warnings = traits.List(traits.Str, desc="warnings found while collecting inputs")
    model_dir = traits.Str(desc="--model-dir of the run (model cards looked up there first)")
    written = traits.List(desc="derivatives written before the report (ordering only)")


class _ReportOutputSpec(TraitedSpec):
    out_report = File(exists=True)


class ParticipantReport(SimpleInterface):
    """Write ``sub-<label>.html`` (figures of every map and mask of the participant) and its CITATION files."""

    input_spec = _ReportInputSpec
    output_spec = _ReportOutputSpec

    def _run_interface(self, runtime):
        self._results["out_report"] = str(
            build_participant_report(
                self.inputs.out_dir,
                self.inputs.subject,
                self.inputs.session or None,
                self.inputs.command,
                dict(self.inputs.region_methods or {}),
                list(self.inputs.warnings or []),
                self.inputs.model_dir or None,
            )
        )
        return runtime


class _GroupReportInputSpec(BaseInterfaceInputSpec):
    out_dir = Directory(mandatory=True)
    tables = traits.Dict(mandatory=True, desc="group table name -> path")
    agreement_tables = traits.Dict(desc="segmentation agreement table name -> path")
    notes = traits.List(traits.Str, desc="what the group level did not compute, and why")
    methods = traits.List(traits.Str, desc="workflow descriptions of the group level")
    command = traits.Str("")


class GroupReport(SimpleInterface):
    """Write ``group/report.html`` from the group tables."""

    input_spec = _GroupReportInputSpec
    output_spec = _ReportOutputSpec

    def _run_interface(self, runtime):
        self._results["out_report"] = str(build_group_report(
            self.inputs.out_dir, {**self.inputs.tables, **(self.inputs.agreement_tables or {})}, self.inputs.command,
            list(self.inputs.notes or []), list(self.inputs.methods or [])))
        return runtime
