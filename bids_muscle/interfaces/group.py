"""Group level: read participant tables from the derivatives, write group tables."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from nipype.interfaces.base import BaseInterfaceInputSpec, Directory, SimpleInterface, TraitedSpec, traits

from bids_muscle import bids
from bids_muscle.stats import group as gstats

TABLE_PATTERN = re.compile(r"sub-(?P<participant>[a-zA-Z0-9]+)(?:_ses-(?P<session>[a-zA-Z0-9]+))?_acq-(?P<region>[a-zA-Z0-9]+)_biomarkers\.tsv$")


#: Every table :func:`aggregate` may write under ``group/`` (stale ones of an earlier run are removed).
AGGREGATE_TABLES = ("excluded", "biomarkers", "biomarkers_wide", "site_summary", "site_effects",
                    "network_differences", "bland_altman", "longitudinal")


def find_participant_tables(out_dir: Path, participants: tuple[str, ...] = ()) -> list[tuple[Path, dict]]:
    """Every ``*_biomarkers.tsv`` of the derivatives with its participant, session and region
    (only those of ``participants`` when given)."""
    found = []
    for path in sorted(Path(out_dir).glob("sub-*/**/anat/*_biomarkers.tsv")):
        match = TABLE_PATTERN.match(path.name)
        if match and (not participants or match["participant"] in participants):
            found.append((path, {k: v for k, v in match.groupdict().items() if v}))
    return found


def write_group_tables(group_dir: Path, tables: dict[str, pd.DataFrame], owned: tuple[str, ...]) -> dict[str, Path]:
    """Write ``tables`` as ``group_dir/<name>.tsv`` and remove the ``owned`` tables of an
    earlier run that this run did not produce, so no stale table sits beside fresh ones."""
    written = {name: bids.write_text_atomic(group_dir / f"{name}.tsv", bids.tsv_text(table))
               for name, table in tables.items()}
    for name in set(owned) - set(written):
        (group_dir / f"{name}.tsv").unlink(missing_ok=True)
    return written


def read_sites(participants_tsv: Path, column: str) -> dict[str, str]:
    """participant label -> site from ``participants.tsv`` (empty when absent)."""
    if not participants_tsv.is_file():
        return {}
    table = pd.read_csv(participants_tsv, sep="\t", dtype=str)
    if column not in table.columns:
        return {}
    return dict(zip(table["participant_id"].str.removeprefix("sub-"), table[column].fillna(gstats.MISSING)))


def aggregate(out_dir: Path, participants_tsv: Path, site_column: str = "site",
              participants: tuple[str, ...] = ()) -> tuple[dict[str, Path], list[str]]:
    """Write the group tables under ``out_dir/group``.

    Only the tables that hold rows are written: network comparisons only
    where two networks ran on the same region, a site test only where every
    site has enough participants (:func:`bids_muscle.stats.group.site_effects`),
    changes between sessions only where a participant has a region in two
    sessions (:func:`bids_muscle.stats.group.longitudinal_changes`; flagged
    muscles stay in, marked in ``flagged``).

    Returns
    -------
    The written tables by name, and notes for the report on what was not computed and why.
    """
    group_dir = Path(out_dir) / "group"
    group_dir.mkdir(parents=True, exist_ok=True)
    sites = read_sites(participants_tsv, site_column)
    if participants:
        sites = {p: s for p, s in sites.items() if p in participants}
    tables, metadata, excluded = [], [], []
    for path, ids in find_participant_tables(out_dir, participants):
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
    for label in sorted((set(sites) | set(participants)) - processed):
        excluded.append({"participant": label, "session": gstats.MISSING, "file": gstats.MISSING,
                         "reason": "no biomarker table in the derivatives"})
    out = {"excluded": pd.DataFrame(excluded, columns=["participant", "session", "file", "reason"])}
    if not tables:
        write_group_tables(group_dir, out, AGGREGATE_TABLES)
        raise ValueError(f"{out_dir}: no readable participant biomarker tables; run the participant level first")
    notes = []
    tidy = gstats.stack_tables(tables, metadata)
    metrics = gstats.metric_columns(tidy)
    out["biomarkers"] = tidy
    out["biomarkers_wide"] = gstats.wide_table(tidy, metrics)
    summary_metrics = gstats.agreement_metrics(tidy)
    trusted = tidy
    if "seg_flag" in tidy.columns:  # muscles whose labels are unlikely to be right stay out of the statistics
        trusted = tidy[tidy["seg_flag"].fillna(0) != 1]
        if len(trusted) < len(tidy):
            notes.append(f"{len(tidy) - len(trusted)} flagged muscle rows (seg_flag = 1) left out of the site "
                         "statistics; they stay in the biomarker tables")
    out["site_summary"] = gstats.site_summary(trusted, summary_metrics)
    reason = gstats.site_test_coverage(trusted)
    effects = gstats.site_effects(trusted, summary_metrics) if reason is None else pd.DataFrame()
    if not effects.empty:
        out["site_effects"] = effects
    else:
        notes.append(reason or f"no site test: no muscle has {gstats.MIN_PER_SITE} participants at every site")
    diffs = gstats.network_differences(tidy, summary_metrics)
    if not diffs.empty:
        out["network_differences"] = diffs
        out["bland_altman"] = gstats.pairwise_bland_altman(diffs)
    elif tidy["network"].nunique() > 1:
        ran = tidy.groupby("region", observed=True)["network"].unique()
        notes.append("networks not compared: no region ran two networks ("
                     + "; ".join(f"{r}: {', '.join(sorted(n))}" for r, n in ran.items()) + ")")
    changes = gstats.longitudinal_changes(tidy, summary_metrics) if summary_metrics else pd.DataFrame()
    if not changes.empty:
        out["longitudinal"] = changes
    else:
        sessions = tidy.loc[tidy["session"] != gstats.MISSING].groupby("participant")["session"].nunique()
        notes.append("no longitudinal change: " + ("no participant has the same region and muscles in two sessions"
                                                   if (sessions > 1).any() else "no participant has two sessions"))
    return write_group_tables(group_dir, out, AGGREGATE_TABLES), notes


class _AggregateInputSpec(BaseInterfaceInputSpec):
    out_dir = Directory(exists=True, mandatory=True)
    participants_tsv = traits.Str(desc="participants.tsv of the raw dataset (site column); may be missing")
    site_column = traits.Str("site", usedefault=True)
    participants = traits.List(traits.Str, desc="participant labels to aggregate (all when empty)")


class _AggregateOutputSpec(TraitedSpec):
    tables = traits.Dict(desc="group table name -> path")
    notes = traits.List(traits.Str, desc="what was not computed, and why (for the report)")


class AggregateBiomarkers(SimpleInterface):
    """Stack every participant table into group tables, per-site summaries and network agreement."""

    input_spec = _AggregateInputSpec
    output_spec = _AggregateOutputSpec

    def _run_interface(self, runtime):
        written, notes = aggregate(Path(self.inputs.out_dir), Path(self.inputs.participants_tsv), self.inputs.site_column,
                                   tuple(self.inputs.participants))
        self._results["tables"] = {k: str(v) for k, v in written.items()}
        self._results["notes"] = notes
        return runtime
