"""Benchmark: the plain-text log reader on 1M-line Megatron, nanoGPT, detectron2 and srun+torchrun logs.

Run: python tests/perf/bench_textlog.py [--lines 1000000] [--repeat 3] [--keep DIR] [--min-mbps 50]
(--keep DIR keeps the generated logs there and reuses them on the next run.)

It writes the logs in a temporary folder (Megatron-DeepSpeed iteration lines of ~390 bytes with an fp16 OVERFLOW
line and a validation line now and then; nanoGPT `iter N: loss X, time Yms, mfu Z%` lines with a
`step N: train loss X, val loss Y` line every 250 iterations; detectron2's CommonMetricPrinter lines of ~290 bytes;
nanoGPT lines of 8 interleaved processes tagged `<task>: [default<local>]:`), then reads each with
`textlog.read_file` in a fresh process, --repeat times, and prints the median time, MB/s and the peak RSS of the
reading process (and its RSS after imports, before reading). Exit status 1 when a log reads slower than --min-mbps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OVERFLOW_EVERY = 5000
EVAL_EVERY = 250


def _text(values: np.ndarray, fmt: str) -> np.ndarray:
    return np.char.mod(fmt, values).astype(object)


def write_megatron(path: Path, lines: int) -> None:
    rng = np.random.default_rng(0)
    it = np.arange(1, lines + 1)
    loss = 2.0 + 8.0 * np.exp(-it / (lines / 10)) + 0.05 * rng.standard_normal(lines)
    grad = np.abs(0.3 + 0.1 * rng.standard_normal(lines))
    elapsed = 31000 + 500 * rng.standard_normal(lines)
    rows = (" iteration " + _text(it, "%8d") + "/  1000000 | consumed samples: " + _text(it * 2048, "%12d")
            + " | consumed tokens: " + _text(it * 2048 * 2048, "%15d") + " | elapsed time per iteration (ms): "
            + _text(elapsed, "%.1f") + " | learning rate: " + _text(6e-5 * np.minimum(1, it / 2000), "%.3E")
            + " | global batch size:  2048 | lm loss: " + _text(loss, "%.6E") + " | loss scale: 4096.0 | grad norm: "
            + _text(grad, "%.3f") + " | num zeros: 0.0 | number of skipped iterations:   0 | number of nan "
            "iterations:   0 | samples per second: " + _text(2048000 / elapsed, "%.3f") + " | TFLOPs: "
            + _text(150 + rng.standard_normal(lines), "%.2f") + " |\n")
    marks = np.arange(OVERFLOW_EVERY - 1, lines, OVERFLOW_EVERY)
    rows[marks] = ("[2022-01-19 13:09:13,305] [INFO] [stage_1_and_2.py:1644:step] [deepscale] OVERFLOW! Rank 0 "
                   "Skipping step. Attempted loss scale: 8192.0, reducing to 4096.0\n" + rows[marks]
                   + " validation loss at iteration " + _text(it[marks], "%d") + " | lm loss value: "
                   + _text(loss[marks] + 0.1, "%.6E") + " | lm loss PPL: " + _text(np.exp(loss[marks] + 0.1), "%.6E")
                   + " |\n")
    path.write_text("".join(rows.tolist()))


def write_nanogpt(path: Path, lines: int) -> None:
    rng = np.random.default_rng(1)
    it = np.arange(lines)
    loss = 1.0 + 3.5 * np.exp(-it / (lines / 8)) + 0.02 * rng.standard_normal(lines)
    rows = ("iter " + _text(it, "%d") + ": loss " + _text(loss, "%.4f") + ", time "
            + _text(30 + 3 * rng.standard_normal(lines), "%.2f") + "ms, mfu "
            + _text(np.where(it < 5, -100.0, 35 + rng.standard_normal(lines)), "%.2f") + "%\n")
    evals = it[::EVAL_EVERY]
    rows[evals] = ("step " + _text(evals, "%d") + ": train loss " + _text(loss[evals], "%.4f") + ", val loss "
                   + _text(loss[evals] + 0.05, "%.4f") + "\n" + rows[evals])
    path.write_text("".join(rows.tolist()))


def write_detectron2(path: Path, lines: int) -> None:
    """detectron2's CommonMetricPrinter lines in its log.txt (detectron2/utils/events.py, utils/logger.py)."""
    rng = np.random.default_rng(2)
    it = np.arange(lines) * 20 + 19
    loss = 0.4 + np.exp(-np.arange(lines) / (lines / 5)) + 0.02 * rng.standard_normal(lines)
    rows = ("[11/22 07:50:07] d2.utils.events INFO:  eta: 1 day, 2:03:04  iter: " + _text(it, "%d") + "  total_loss: "
            + _text(loss, "%.4g") + "  loss_cls: " + _text(loss * 0.4, "%.4g") + "  loss_box_reg: "
            + _text(loss * 0.4, "%.4g") + "  loss_rpn_cls: " + _text(loss * 0.1, "%.4g") + "  loss_rpn_loc: "
            + _text(loss * 0.1, "%.4g") + "    time: " + _text(0.35 + 0.01 * rng.random(lines), "%.4f")
            + "  last_time: " + _text(0.35 + 0.02 * rng.random(lines), "%.4f") + "  data_time: "
            + _text(0.02 + 0.01 * rng.random(lines), "%.4f") + "  last_data_time: "
            + _text(0.02 + 0.01 * rng.random(lines), "%.4f") + "   lr: 0.00025  max_mem: 2596M\n")
    path.write_text("".join(rows.tolist()))


def write_srun_torchrun(path: Path, lines: int) -> None:
    """nanoGPT lines of 2 nodes x 4 torchrun workers, interleaved, tagged `<task>: [default<local>]:`."""
    rng = np.random.default_rng(3)
    row = np.arange(lines)
    process = row % 8
    it = row // 8
    loss = 1.0 + 3.5 * np.exp(-it / (lines / 64)) + 0.02 * rng.standard_normal(lines)
    rows = (_text(process // 4, "%d") + ": [default" + _text(process % 4, "%d") + "]:iter " + _text(it, "%d")
            + ": loss " + _text(loss, "%.4f") + ", time " + _text(30 + 3 * rng.standard_normal(lines), "%.2f")
            + "ms\n")
    path.write_text("".join(rows.tolist()))


CHILD = """
import json, sys, time
from pathlib import Path
from analyzer.ingest import textlog

def peak_rss_mb():  # VmHWM: this process's own peak (ru_maxrss would count the parent's, inherited at fork)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")

before = peak_rss_mb()
start, cpu = time.perf_counter(), time.process_time()
result = textlog.read_file(Path(sys.argv[1]))
seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "rss_after_imports_mb": before,
                  "peak_rss_mb": peak_rss_mb(), "points": 0 if result.frame is None else len(result.frame),
                  "events": len(result.events)}))
"""


def measure(path: Path, repeat: int) -> dict:
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", CHILD, str(path)], cwd=ROOT, capture_output=True, text=True,
                             check=True)
        runs.append(json.loads(out.stdout))
    best = dict(runs[0])
    best["seconds"] = statistics.median(r["seconds"] for r in runs)
    best["cpu_seconds"] = statistics.median(r["cpu_seconds"] for r in runs)
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    best["mb"] = path.stat().st_size / 1e6
    best["mbps"] = best["mb"] / best["seconds"]
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="write the logs here and keep them")
    parser.add_argument("--min-mbps", type=float, default=50.0)
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_textlog_"))
    folder.mkdir(parents=True, exist_ok=True)
    failed = False
    try:
        for name, writer in (("megatron.log", write_megatron), ("nanogpt.log", write_nanogpt),
                             ("detectron2.log", write_detectron2), ("srun_torchrun.log", write_srun_torchrun)):
            path = folder / f"{args.lines}-{name}"
            start = time.perf_counter()
            if not path.exists():  # a --keep folder from an earlier run is reused
                writer(path, args.lines)
            written = time.perf_counter() - start
            r = measure(path, args.repeat)
            slow = r["mbps"] < args.min_mbps
            failed |= slow
            print(f"{name}: {args.lines:,} lines, {r['mb']:.1f} MB (written in {written:.1f} s) -> read in "
                  f"{r['seconds']:.2f} s = {r['mbps']:.0f} MB/s{'  BELOW TARGET' if slow else ''} "
                  f"(CPU time {r['cpu_seconds']:.2f} s = {r['mb'] / r['cpu_seconds']:.0f} MB/s); "
                  f"{r['points']:,} points, {r['events']:,} events; peak RSS {r['peak_rss_mb']:.0f} MB "
                  f"({r['rss_after_imports_mb']:.0f} MB after imports)")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"python {sys.version.split()[0]}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
          "(wall-clock MB/s suffers when other processes compete for the CPUs; CPU time much less)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
