"""Cold start of the light commands: `list`, `info`, `--help`, each in a fresh Python process.

Each command runs --runs times (commands interleaved, after one untimed run each to warm the file cache);
reported per command: median and p90 wall time, median CPU time (user + sys) and peak RSS of the process
(`os.wait4`), beside an empty interpreter (`python -c pass`) for scale. Target: median wall <= 0.25 s.

    python benchmarks/bench_startup.py [--runs 15] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

TARGET_S = 0.25
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "list": [sys.executable, "-m", "mobilenet_zoo", "list"],
    "info 0.25_128": [sys.executable, "-m", "mobilenet_zoo", "info", "0.25_128"],
    "--help": [sys.executable, "-m", "mobilenet_zoo", "--help"],
}


@dataclass(frozen=True)
class ProcessStats:
    """What one child process cost: wall seconds, CPU seconds (user + sys), peak resident memory in bytes."""

    wall_s: float
    cpu_s: float
    peak_rss_bytes: int


def run_measured(command: list[str], env: dict[str, str] | None = None) -> ProcessStats:
    """Run `command` to completion (output discarded) and measure it; fails loudly on a nonzero exit."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    stderr = process.stderr.read() if process.stderr else b""
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} failed ({process.returncode}):\n{stderr.decode(errors='replace')[-2000:]}"
        )
    return ProcessStats(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024)  # ru_maxrss: KiB on Linux


def summary(stats: list[ProcessStats]) -> dict[str, float]:
    """Medians (and p90 wall) of repeated runs."""
    walls = sorted(s.wall_s for s in stats)
    return {
        "median_wall_s": statistics.median(walls),
        "p90_wall_s": walls[min(len(walls) - 1, round(0.9 * (len(walls) - 1)))],
        "median_cpu_s": statistics.median(s.cpu_s for s in stats),
        "median_peak_rss_mib": statistics.median(s.peak_rss_bytes for s in stats) / 2**20,
        "runs": len(stats),
    }


def interleaved(commands: dict[str, list[str]], runs: int) -> dict[str, list[ProcessStats]]:
    """Every command once (untimed), then `runs` rounds of every command in turn."""
    for command in commands.values():
        run_measured(command)
    results: dict[str, list[ProcessStats]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            results[name].append(run_measured(command))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per command (median reported)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = {name: summary(stats) for name, stats in interleaved(COMMANDS, args.runs).items()}
    if args.json:
        print(json.dumps({"target_s": TARGET_S, "commands": report}, indent=2))
        return
    print(f"{'command':<16} {'wall s':>8} {'p90 s':>8} {'cpu s':>8} {'RSS MiB':>8}  target <= {TARGET_S} s")
    for name, row in report.items():
        verdict = "" if name.startswith("python") else ("ok" if row["median_wall_s"] <= TARGET_S else "OVER")
        print(
            f"{name:<16} {row['median_wall_s']:>8.3f} {row['p90_wall_s']:>8.3f} {row['median_cpu_s']:>8.3f} "
            f"{row['median_peak_rss_mib']:>8.1f}  {verdict}"
        )
    print(f"medians of {args.runs} cold processes each ({sys.executable}), commands interleaved")


if __name__ == "__main__":
    main()
