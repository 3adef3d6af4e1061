"""Benchmark: `diagnose --json` on a 1M-step metrics.jsonl, as a whole process, against a bare pyarrow read.

Run: python tests/perf/bench_jsonl.py [--steps 1000000] [--repeat 3] [--keep DIR]
(--keep DIR writes the run dir there and leaves it; a later run with the same --keep DIR and --steps reuses it
instead of writing it again, so profiling sessions can share one generated run.)

It writes a reference-trainer run dir (config.json, run.json and a ~90 MB metrics.jsonl: step, split, loss, lr,
grad_norm, with bare NaN tokens from a diverged stretch and an eval line every 1000 steps) in a temporary folder, then
times, each as its own process, median of --repeat runs:
  (a) python -c "import pyarrow.json; pyarrow.json.read_json(PATH)"   (on a copy without NaN tokens if pyarrow
      refuses them: a bare read cannot parse the file the run wrote)
  (b) python -m analyzer diagnose --json RUN_DIR                     (read, build the Run, all detectors, JSON out)
and prints both, their peak RSS, the ratio b/a (the goal is b <= a), and where (b)'s time goes (imports, read_run,
detectors, JSON), measured in one more process. It also times
  (c) the same parse in a background thread while the main thread does `import pandas`, and nothing else:
      the least any process that reads the file with pyarrow and diagnoses it with pandas must do. When (c) is
      slower than (a), no pandas-based diagnose can meet the goal on this machine, whatever its detectors cost.
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
EVAL_EVERY = 1000
NAN_FROM, NAN_TO = 600_000, 600_050  # a short diverged stretch: bare NaN tokens, as Python's json writes them


def write_run(folder: Path, steps: int) -> Path:
    """A run dir in the reference trainer's format, generated column-wise (seconds, not minutes)."""
    rng = np.random.default_rng(0)
    step = np.arange(steps)
    loss = 2.0 + 8.0 * np.exp(-step / (steps / 10)) + 0.05 * rng.standard_normal(steps)
    lr = 3e-4 * np.minimum(1.0, (step + 1) / 2000)
    grad = np.abs(0.8 + 0.2 * rng.standard_normal(steps))
    loss_text = np.char.mod("%.6f", loss).astype(object)
    grad_text = np.char.mod("%.6f", grad).astype(object)
    diverged = slice(NAN_FROM, min(NAN_TO, steps))
    loss_text[diverged] = "NaN"
    grad_text[diverged] = "Infinity"
    lr_text = np.char.mod("%.6g", lr).astype(object)
    lines = ('{"step": ' + step.astype(str).astype(object) + ', "split": "train", "loss": ' + loss_text
             + ', "lr": ' + lr_text + ', "grad_norm": ' + grad_text + "}\n")
    evals = step[EVAL_EVERY - 1::EVAL_EVERY]
    eval_lines = ('{"step": ' + evals.astype(str).astype(object) + ', "split": "eval", "loss": '
                  + np.char.mod("%.5f", loss[evals] + 0.1).astype(object) + "}\n")
    lines[evals] = lines[evals] + eval_lines
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.jsonl", "w") as fh:
        fh.write("".join(lines.tolist()))
    (folder / "config.json").write_text(json.dumps({"lr": 3e-4, "batch_size": 16, "max_steps": steps,
                                                    "warmup_steps": 2000, "seed": 1337}))
    (folder / "run.json").write_text(json.dumps({"status": "diverged", "seed": 1337}))
    return folder


def _already_written(folder: Path, steps: int) -> bool:
    """A run dir this benchmark wrote before with the same number of steps (config.json records max_steps)."""
    try:
        config = json.loads((folder / "config.json").read_text())
        return config.get("max_steps") == steps and (folder / "metrics.jsonl").stat().st_size > 0
    except (OSError, ValueError):
        return False


def compile_package() -> str:
    """Byte-compile the analyzer package, as `pip install` does for an installed one: where bytecode is never written
    (PYTHONDONTWRITEBYTECODE=1, as on the build machines) an editable checkout would otherwise compile its ~10k
    lines of source in every timed process, ~0.2 s that no installed copy spends (pyarrow's and pandas' own modules
    were compiled when pip installed them)."""
    import analyzer

    package = Path(analyzer.__file__).parent
    done = subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], capture_output=True)
    return (f"bytecode: {package} compiled as an installed copy is" if done.returncode == 0
            else f"bytecode: could not compile {package}; its source compiles in every timed process")


def run_process(cmd: list[str], cwd: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB, exit code) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode not in (0, 1):  # 1: findings at or above --fail-on, a normal outcome
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024, proc.returncode


def timed(commands: list[list[str]], repeat: int, cwd: Path) -> list[tuple[float, float, float]]:
    """(median wall s, fastest wall s, peak RSS MB) per command. The commands take turns, so a machine whose
    load changes during the benchmark slows both alike and the ratio stays fair."""
    runs: list[list[tuple[float, float, int]]] = [[] for _ in commands]
    for _ in range(repeat):
        for i, cmd in enumerate(commands):
            runs[i].append(run_process(cmd, cwd))
    return [(statistics.median(r[0] for r in rs), min(r[0] for r in rs), max(r[1] for r in rs)) for rs in runs]


def bare_read_command(metrics: Path, folder: Path) -> tuple[list[str], str]:
    code = "import sys, pyarrow.json; pyarrow.json.read_json(sys.argv[1])"
    probe = subprocess.run([sys.executable, "-c", code, str(metrics)], capture_output=True, text=True)
    if probe.returncode == 0:
        return [sys.executable, "-c", code, str(metrics)], "the same file"
    clean = folder.parent / "metrics_without_nan_tokens.jsonl"
    data = metrics.read_bytes().replace(b"-Infinity", b"-1e308").replace(b"Infinity", b"1e308").replace(
        b"NaN", b"0.0")
    clean.write_bytes(data)
    reason = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "refused"
    return [sys.executable, "-c", code, str(clean)], f"a copy without NaN tokens (pyarrow refuses them: {reason})"


FLOOR = """
import sys, threading
import pyarrow.json
parse = threading.Thread(target=pyarrow.json.read_json, args=(sys.argv[1],))
parse.start()
import pandas
parse.join()
"""


def floor_command(bare: list[str]) -> list[str]:
    """(c): (a)'s parse, in a thread, while pandas imports (on (a)'s input, so that it parses)."""
    return [sys.executable, "-c", FLOOR, bare[-1]]


def diagnose_command(folder: Path) -> tuple[list[str], str]:
    cli = [sys.executable, "-m", "analyzer", "diagnose", "--json", str(folder)]
    probe = subprocess.run([sys.executable, "-m", "analyzer", "diagnose", "--help"], cwd=ROOT, capture_output=True)
    if probe.returncode == 0:
        return cli, "python -m analyzer diagnose --json RUN_DIR"
    code = ("import sys; from analyzer.ingest import read_run; from analyzer.diagnose import diagnose_run; "
            "diagnose_run(read_run(sys.argv[1]))")
    return [sys.executable, "-c", code, str(folder)], "read_run + diagnose_run (the CLI is not available)"


PHASES = """
import sys, time
t0 = time.perf_counter()
try:  # as the CLI does: the metrics file parses in the background while the detectors import
    from analyzer import prefetch
    prefetch.start(sys.argv[1])
except ImportError:
    pass
from analyzer import __version__
from analyzer.diagnose import diagnose_run
from analyzer.findings import to_json
from analyzer.ingest import read_run
t1 = time.perf_counter()
run = read_run(sys.argv[1])
run.series("loss")  # the per-metric index every detector uses
t2 = time.perf_counter()
diagnosis = diagnose_run(run)
t3 = time.perf_counter()
to_json(diagnosis, __version__)
t4 = time.perf_counter()
print(f"imports {t1 - t0:.2f} s, read_run {t2 - t1:.2f} s (the two overlap: the file parses in the background "
      f"during the imports), detectors and chain {t3 - t2:.2f} s, JSON {t4 - t3:.2f} s")
"""


def breakdown(folder: Path) -> str:
    """Where (b)'s time goes, phase by phase, in one more process."""
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", PHASES, str(folder)], cwd=ROOT, capture_output=True,
                         text=True)
    return out.stdout.strip() or out.stderr.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="write the run dir here and keep it")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="postmortem-bench-"))
    folder = args.keep or tmp / "run"
    if not _already_written(folder, args.steps):
        write_run(folder, args.steps)
    metrics = folder / "metrics.jsonl"
    size = metrics.stat().st_size / 1e6
    compiled = compile_package()
    try:
        bare, bare_input = bare_read_command(metrics, tmp / "run")
        full, full_label = diagnose_command(folder)
        run_process(full, ROOT)  # warm the page cache and .pyc files for both
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        (bare_s, bare_min, bare_mb), (full_s, full_min, full_mb), (floor_s, floor_min, _) = timed(
            [bare, full, floor_command(bare)], args.repeat, ROOT)
        phases = breakdown(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"metrics.jsonl: {args.steps:,} steps, {size:.1f} MB; median (fastest) of {args.repeat} runs taking turns, "
          f"{os.cpu_count()} CPUs, load average {load:.2f} before")
    print(compiled)
    print(f"(a) bare pyarrow.json.read_json on {bare_input}")
    print(f"    {bare_s:.2f} s ({bare_min:.2f} s), peak RSS {bare_mb:.0f} MB")
    print(f"(b) {full_label}")
    print(f"    {full_s:.2f} s ({full_min:.2f} s), peak RSS {full_mb:.0f} MB  ({phases})")
    print("(c) the floor of a pandas-based diagnose: the same parse in a thread while pandas imports, nothing else")
    print(f"    {floor_s:.2f} s ({floor_min:.2f} s), {floor_s / bare_s:.2f} x (a)")
    verdict = "ok" if full_s <= bare_s else "SLOWER than the goal (b <= a)"
    print(f"ratio b/a = {full_s / bare_s:.2f}  {verdict}")
    if floor_s > bare_s:
        print("(c) > (a): with pandas imported, the goal is out of reach on this machine, whatever the detectors cost")


if __name__ == "__main__":
    main()
