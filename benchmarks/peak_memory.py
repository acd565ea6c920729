"""Peak memory of a command and all its processes (docs/validation.md, Reliability).

Usage::

    python benchmarks/peak_memory.py [--interval 0.2] -- COMMAND [ARG ...]

Runs ``COMMAND`` in its own process group and samples, every ``--interval``
seconds, the proportional set size (``Pss`` of ``/proc/<pid>/smaps_rollup``:
pages shared by forked workers counted once) of every process of the group,
summed: the memory the run needs at once, MultiProc workers included. Prints
the peak of that sum and when it happened (seconds after the start), the
largest single process (``ru_maxrss`` of the children, as ``/usr/bin/time
-v`` reports it), the wall time and the command's exit status, and exits with
that status. Linux only.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def group_pss_bytes(pgid: int) -> int:
    """Summed proportional set size of the processes of process group ``pgid``."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            rollup = (entry / "smaps_rollup").read_text()
        except (OSError, ProcessLookupError):
            continue  # the process ended meanwhile
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    opts = parser.parse_args(argv)
    command = opts.command[1:] if opts.command[:1] == ["--"] else opts.command
    if not command:
        parser.error("no command given")
    t0 = time.time()
    proc = subprocess.Popen(command, start_new_session=True)
    peak, peak_at = 0, 0.0
    while proc.poll() is None:
        now = group_pss_bytes(proc.pid)
        if now > peak:
            peak, peak_at = now, time.time() - t0
        time.sleep(opts.interval)
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(f"peak memory of all processes: {peak / 2**30:.2f} GiB (PSS, at {peak_at:.0f} s); "
          f"largest process: {largest / 2**30:.2f} GiB (RSS); "
          f"wall {time.time() - t0:.0f} s; exit {proc.returncode}", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
