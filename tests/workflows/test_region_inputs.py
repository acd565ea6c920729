"""Decisions the participant workflow takes from a region's inputs alone (no run)."""

from __future__ import annotations

from bids_muscle.bids import RegionInputs, Series
from bids_muscle.workflows.base import megre_refusal


def test_a_gre_that_cannot_separate_water_from_fat_is_refused_with_its_file_named(tmp_path):
    files = [tmp_path / f"sub-01_acq-calf_echo-{k}_part-mag_MEGRE.nii.gz" for k in (1, 2)]
    gre = Series(files=files, metadata=[{}, {}], echo_times_s=[3.9e-3, 6.3e-3])
    rin = RegionInputs(subject="01", session=None, region="calf", megre_mag=gre, field_strength_t=3.0)
    assert megre_refusal(rin).startswith("calf: sub-01_acq-calf_echo-1_part-mag_MEGRE.nii.gz: echo times 3.90, 6.30 ms "
                                         "cannot separate water from fat at 3 T")
    rin.field_strength_t = 1.5
    assert megre_refusal(rin) is None
