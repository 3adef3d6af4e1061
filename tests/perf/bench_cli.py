"""Benchmark: start-up time of the console scripts (the goal: `diagnose --help` under 0.3 s).

Run: python tests/perf/bench_cli.py   (prints the median of 7 runs of each command, whole process)
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

GOAL_S = 0.3
COMMANDS = {
    "diagnose --help": [sys.executable, "-m", "analyzer", "diagnose", "--help"],
    "postmortem detectors": [sys.executable, "-m", "analyzer", "detectors"],
    "bare python": [sys.executable, "-c", "pass"],
}


def timed(cmd: list[str], repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def heavy_modules_imported_by_help() -> list[str]:
    code = ("import sys; from analyzer.cli import postmortem\n"
            "print(' '.join(m for m in ('torch','matplotlib','pandas','numpy','pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return out.split()


if __name__ == "__main__":
    for label, cmd in COMMANDS.items():
        seconds = timed(cmd)
        if label == "diagnose --help":
            verdict = "  ok" if seconds < GOAL_S else f"  OVER {GOAL_S}s"
        else:  # the goal is --help's; listing the detectors imports them, and pandas with them
            verdict = "  (no goal)" if label != "bare python" else ""
        print(f"{label:<24} {seconds * 1000:7.1f} ms{verdict}")
    heavy = heavy_modules_imported_by_help()
    print("heavy modules imported by the CLI module:", ", ".join(heavy) or "none")
