"""Inference time and peak memory of every segmentation network.

Runs :func:`bids_muscle.seg.infer.segment` end to end (reorientation, leg
split, resampling, prediction, merge, largest components) on a synthetic
thigh-sized volume of 512 x 512 x 20 voxels (0.78 x 0.78 x 5 mm, both
thighs) with randomly initialised networks at their default sizes and 13
thigh muscles: speed only, the labels are meaningless. Each network runs in
its own process so its peak memory (maximum resident set size) is its own.

Target: <= 15 s per network on 2 CPU cores.

Usage::

    .venv/bin/python benchmarks/bench_seg.py [--threads 2] [--repeats 2] [--voxel-mm 1.0]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn

NETWORKS = ("unet2d", "unet3d", "transunet", "hrnet")
SHAPE = (512, 512, 20)
VOXEL_MM = (400.0 / 512, 400.0 / 512, 5.0)


def thigh_volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two elliptic thighs (fat ring, muscle, femur) with noise, RAS+ grid
    centred on the isocentre."""
    rng = np.random.default_rng(seed)
    affine = np.diag(list(VOXEL_MM) + [1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(SHAPE) - 1) / 2.0)
    i, j = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    x = affine[0, 0] * i + affine[0, 3]
    y = affine[1, 1] * j + affine[1, 3]
    plane = np.zeros(SHAPE[:2], np.float32)
    for centre in (-85.0, 85.0):
        r = np.hypot((x - centre) / 80.0, (y + 5.0) / 72.0)
        plane[r <= 1.0] = 1000.0
        plane[r <= 0.8] = 350.0
        plane[np.hypot(x - centre - 5.0, y + 8.0) < 14.0] = 40.0
    volume = np.repeat(plane[..., None], SHAPE[2], axis=2)
    volume += rng.normal(0.0, 20.0, SHAPE).astype(np.float32)
    return np.abs(volume), affine


class TimedNetwork(nn.Module):
    """Wrapper accumulating the wall time spent in the network itself."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.seconds = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.network(x)
        self.seconds += time.perf_counter() - start
        return out


def run_one(name: str, threads: int, repeats: int, voxel_mm: float) -> dict:
    from bids_muscle.seg.infer import segment
    from bids_muscle.seg.nets import build_network, count_parameters
    from bids_muscle.seg.zoo import ModelCard

    torch.manual_seed(0)
    labels = list(range(1, 14))
    network = build_network(name, in_channels=1, n_classes=len(labels) + 1).eval()
    card = ModelCard(
        name=f"bench_{name}",
        architecture=name,
        arguments={},
        region="thigh",
        labels=labels,
        voxel_size_mm=[voxel_mm, voxel_mm, None],
        patch_size=[192, 192, 32] if name == "unet3d" else None,
    )
    image, affine = thigh_volume()
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    timed = TimedNetwork(network)
    segment(image[:, :, :4], affine, timed, card, num_threads=threads)
    totals, network_s = [], []
    for _ in range(repeats):
        timed.seconds = 0.0
        start = time.perf_counter()
        result = segment(image, affine, timed, card, num_threads=threads)
        totals.append(time.perf_counter() - start)
        network_s.append(timed.seconds)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {
        "network": name,
        "parameters": count_parameters(network),
        "legs": result["legs"],
        "segment_s_median": float(np.median(totals)),
        "segment_s_all": [round(t, 2) for t in totals],
        "network_s_median": float(np.median(network_s)),
        "peak_rss_mb": round(peak_mb, 1),
        "rss_before_mb": round(baseline_mb, 1),
        "threads": threads,
        "model_voxel_mm": voxel_mm,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--voxel-mm", type=float, default=1.0, help="model in-plane voxel size")
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--child", choices=NETWORKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args.child, args.threads, args.repeats, args.voxel_mm)))
        return 0
    print(f"volume {SHAPE} at {tuple(round(v, 2) for v in VOXEL_MM)} mm, model grid {args.voxel_mm} mm, "
          f"{args.threads} threads, median of {args.repeats} runs after one warm-up")
    print(f"{'network':10s} {'params':>9s} {'segment s':>10s} {'network s':>10s} {'peak MB':>8s}  target <= 15 s")
    for name in args.networks:
        command = [sys.executable, __file__, "--child", name, "--threads", str(args.threads),
                   "--repeats", str(args.repeats), "--voxel-mm", str(args.voxel_mm)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        row = json.loads(output.strip().splitlines()[-1])
        verdict = "ok" if row["segment_s_median"] <= 15.0 else "SLOW"
        print(f"{name:10s} {row['parameters']:9d} {row['segment_s_median']:10.2f} {row['network_s_median']:10.2f} "
              f"{row['peak_rss_mb']:8.0f}  {verdict}  (runs {row['segment_s_all']}, legs {row['legs']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
