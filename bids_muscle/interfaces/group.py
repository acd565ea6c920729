"""Group level: read participant tables from the derivatives, write group tables."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from nipype.interfaces.base import BaseInterfaceInputSpec, Directory, SimpleInterface, TraitedSpec, traits

from bids_muscle import bids
from bids_muscle.stats import group as gstats

TABLE_PATTERN = re.compile(r"sub-(?P<participant>[a-zA-Z0-9]+)(?:_ses-(?P<session>[a-zA-Z0-9]+))?_acq-(?P<region>[a-zA-Z0-9]+)_biomarkers\.tsv$")


def find_participant_tables(out_dir: Path) -> list[tuple[Path, dict]]:
    """Every ``*_biomarkers.tsv`` of the derivatives with its participant, session and region."""
    found = []
    for path in sorted(Path(out_dir).glob("sub-*/**/anat/*_biomarkers.tsv")):
        match = TABLE_PATTERN.match(path.name)
        if match:
            found.append((path, {k: v for k, v in match.groupdict().items() if v}))
    return found


def read_sites(participants_tsv: Path, column: str) -> dict[str, str]:
    """participant label -> site from ``participants.tsv`` (empty when absent)."""
    if not participants_tsv.is_file():
        return {}
    table = pd.read_csv(participants_tsv, sep="\t", dtype=str)
    if column not in table.columns:
        return {}
    return dict(zip(table["participant_id"].str.removeprefix("sub-"), table[column].fillna(gstats.MISSING)))


def aggregate(out_dir: Path, participants_tsv: Path, site_column: str = "site") -> dict[str, Path]:
    """Write the group tables under ``out_dir/group``; returns their paths by name."""
    group_dir = Path(out_dir) / "group"
    group_dir.mkdir(parents=True, exist_ok=True)
    sites = read_sites(participants_tsv, site_column)
    tables, metadata, excluded = [], [], []
    for path, ids in find_participant_tables(out_dir):
        try:
            table = pd.read_csv(path, sep="\t", na_values=["n/a"])
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            excluded.append({"participant": ids["participant"], "session": ids.get("session", gstats.MISSING),
                             "file": str(path), "reason": f"unreadable table: {err}"})
            continue
        if table.empty or "label" not in table.columns:
            excluded.append({"participant": ids["participant"], "session": ids.get("session", gstats.MISSING),
                             "file": str(path), "reason": "table has no muscle rows"})
            continue
        tables.append(table)
        metadata.append({**ids, "site": sites.get(ids["participant"], gstats.MISSING)})
    processed = {m["participant"] for m in metadata} | {e["participant"] for e in excluded}
    for label in sorted(set(sites) - processed):
        excluded.append({"participant": label, "session": gstats.MISSING, "file": gstats.MISSING,
                         "reason": "no biomarker table in the derivatives"})
    written = {}
    written["excluded"] = bids.write_text_atomic(
        group_dir / "excluded.tsv", bids.tsv_text(pd.DataFrame(excluded, columns=["participant", "session", "file", "reason"]))
    )
    if not tables:
        raise ValueError(f"{out_dir}: no readable participant biomarker tables; run the participant level first")
    tidy = gstats.stack_tables(tables, metadata)
    metrics = gstats.metric_columns(tidy)
    written["biomarkers"] = bids.write_text_atomic(group_dir / "biomarkers.tsv", bids.tsv_text(tidy))
    written["biomarkers_wide"] = bids.write_text_atomic(group_dir / "biomarkers_wide.tsv", bids.tsv_text(gstats.wide_table(tidy, metrics)))
    summary_metrics = gstats.agreement_metrics(tidy)
    written["site_summary"] = bids.write_text_atomic(group_dir / "site_summary.tsv", bids.tsv_text(gstats.site_summary(tidy, summary_metrics)))
    if tidy["site"].nunique() > 1:
        written["site_effects"] = bids.write_text_atomic(group_dir / "site_effects.tsv", bids.tsv_text(gstats.site_effects(tidy, summary_metrics)))
    if tidy["network"].nunique() > 1:
        diffs = gstats.network_differences(tidy, summary_metrics)
        written["network_differences"] = bids.write_text_atomic(group_dir / "network_differences.tsv", bids.tsv_text(diffs))
        written["bland_altman"] = bids.write_text_atomic(group_dir / "bland_altman.tsv", bids.tsv_text(gstats.pairwise_bland_altman(diffs)))
    return written


class _AggregateInputSpec(BaseInterfaceInputSpec):
    out_dir = Directory(exists=True, mandatory=True)
    participants_tsv = traits.Str(desc="participants.tsv of the raw dataset (site column); may be missing")
    site_column = traits.Str("site", usedefault=True)


class _AggregateOutputSpec(TraitedSpec):
    tables = traits.Dict(desc="group table name -> path")


class AggregateBiomarkers(SimpleInterface):
    """Stack every participant table into group tables, per-site summaries and network agreement."""

    input_spec = _AggregateInputSpec
    output_spec = _AggregateOutputSpec

    def _run_interface(self, runtime):
        written = aggregate(Path(self.inputs.out_dir), Path(self.inputs.participants_tsv), self.inputs.site_column)
        self._results["tables"] = {k: str(v) for k, v in written.items()}
        return runtime
