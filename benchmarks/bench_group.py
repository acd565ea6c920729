"""Group aggregation and agreement statistics on synthetic participant tables.

2,000 participants at 5 sites, one thigh each: 16 muscles (8 per side) x 4
networks (``manual`` and three networks) per participant table, with the
columns of :func:`bids_muscle.stats.biomarkers.muscle_table` for three maps
and IMAT. The tables are stacked and summarised with
:mod:`bids_muscle.stats.group` (site summaries, differences of every network
to the manual reference, Bland-Altman per pair and per pair and muscle,
G20-/G20+ tests, Kruskal-Wallis site effects, wide table).

Target: <= 30 s for everything after the tables exist.

Run: ``.venv/bin/python benchmarks/bench_group.py [n_participants]``
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd

from bids_muscle.seg.labels import load_label_table
from bids_muscle.stats import group
from bids_muscle.stats.biomarkers import MAP_STATISTICS

NETWORKS = ("manual", "unet2d", "unet3d", "hrnet")
MAPS = {"ff_dixon_percent": (12.0, 8.0), "water_t2_ms": (32.0, 3.0), "mtr_percent": (45.0, 4.0)}
N_SITES = 5


def synthetic_tables(n_participants: int, seed: int = 0) -> tuple[list[pd.DataFrame], list[dict]]:
    rng = np.random.default_rng(seed)
    table = load_label_table("thigh")
    labels = [lab for lab in table if lab.side == "right"][:8] + [lab for lab in table if lab.side == "left"][:8]
    n_m, n_n = len(labels), len(NETWORKS)
    rows = n_m * n_n
    base = {
        "label": np.tile([lab.index for lab in labels], n_n),
        "name": np.tile([lab.name for lab in labels], n_n),
        "abbreviation": np.tile([lab.abbreviation for lab in labels], n_n),
        "muscle": np.tile([lab.muscle for lab in labels], n_n),
        "side": np.tile([lab.side for lab in labels], n_n),
        "network": np.repeat(NETWORKS, n_m),
    }
    site_shift = rng.normal(0.0, 1.0, N_SITES)
    tables, meta = [], []
    for p in range(n_participants):
        site = p % N_SITES
        true_volume = rng.lognormal(np.log(150.0), 0.4, n_m)
        cols = dict(base)
        vol = np.tile(true_volume, n_n) * (1 + rng.normal(0, 0.03, rows))
        cols["voxel_count"] = np.round(vol / 0.012).astype(np.int64)
        cols["volume_ml"] = vol
        for name, (mu, sd) in MAPS.items():
            truth = np.clip(rng.normal(mu + site_shift[site], sd, n_m), 0, None)
            mean = np.tile(truth, n_n) + rng.normal(0, 0.02 * mu, rows)
            spread = np.abs(rng.normal(0.1 * mu, 0.02 * mu, rows))
            stats = {"mean": mean, "median": mean + rng.normal(0, 0.01 * mu, rows), "sd": spread,
                     "p25": mean - 0.67 * spread, "p75": mean + 0.67 * spread,
                     "n": cols["voxel_count"]}
            for stat in MAP_STATISTICS:
                cols[f"{name}_{stat}"] = stats[stat]
        territory = vol * 1.1
        fraction = np.clip(rng.beta(2, 20, rows), 0, 1)
        cols["territory_volume_ml"] = territory
        cols["imat_volume_ml"] = territory * fraction
        cols["imat_fraction"] = fraction
        tables.append(pd.DataFrame(cols))
        meta.append({"participant": f"{p:04d}", "site": f"site{site}", "region": "thigh"})
    return tables, meta


def main(n_participants: int = 2000) -> None:
    t0 = time.perf_counter()
    tables, meta = synthetic_tables(n_participants)
    t_make = time.perf_counter() - t0
    print(f"made {len(tables)} tables x {len(tables[0])} rows in {t_make:.2f} s (not counted)")

    timings = {}
    start = time.perf_counter()

    def step(name, func, *args, **kwargs):
        t = time.perf_counter()
        out = func(*args, **kwargs)
        timings[name] = (time.perf_counter() - t, len(out))
        return out

    tidy = step("stack_tables", group.stack_tables, tables, meta)
    step("long_table", group.long_table, tidy)
    step("wide_table", group.wide_table, tidy)
    step("site_summary", group.site_summary, tidy)
    diffs = step("network_differences", group.network_differences, tidy, reference="manual")
    step("bland_altman pair x region", group.pairwise_bland_altman, diffs)
    step("bland_altman pair x muscle", group.pairwise_bland_altman, diffs,
         by=("network_a", "network_b", "region", "muscle"))
    step("all-pairs differences", group.network_differences, tidy)
    step("g20 pair x region", group.pairwise_g20, diffs, "ff_dixon_percent_mean")
    step("site_effects", group.site_effects, tidy)
    total = time.perf_counter() - start

    for name, (sec, n_rows) in timings.items():
        print(f"{name:30s} {sec:7.2f} s  {n_rows:9d} rows")
    print(f"total {total:.2f} s for {n_participants} participants "
          f"({len(tidy)} muscle x network rows); target <= 30 s: {'met' if total <= 30 else 'MISSED'}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
