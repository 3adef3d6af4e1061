"""reproduce-run: re-run a run dir the trainer wrote and say whether its metrics match, or apply recommended fixes."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Iterable

from analyzer.errors import InputError
from analyzer.trainer.config import TIMING_KEYS, ConfigError, TrainConfig, coerce, config_from_dict, with_overrides
from analyzer.trainer.train import WRITER

# names other frameworks (and the seed write-ups) use for a TrainConfig field
HPARAM_ALIASES = {
    "learning_rate": "lr",
    "warmup_steps_proportion": "warmup_ratio",
    "warmup_proportion": "warmup_ratio",
    "gradient_accumulation_steps": "grad_accum",
    "per_device_train_batch_size": "batch_size",
    "grad_clip": "max_grad_norm",
    "lr_scheduler_type": "lr_schedule",
}


def read_run_config(run_dir: Path) -> TrainConfig:
    """The TrainConfig of a run dir this trainer wrote; anything else is an InputError."""
    run_json, config_json = run_dir / "run.json", run_dir / "config.json"
    if not run_dir.is_dir():
        raise InputError("not a directory", path=run_dir)
    try:
        run = json.loads(run_json.read_text())
    except (OSError, ValueError):
        raise InputError("not a run dir written by the reference trainer (no readable run.json)", path=run_dir)
    if not isinstance(run, dict) or run.get("writer") != WRITER:
        raise InputError("run.json was not written by the reference trainer", path=run_json)
    try:
        return config_from_dict(json.loads(config_json.read_text()))
    except (OSError, ValueError) as exc:
        raise InputError(f"unreadable config: {exc}", path=config_json)


def load_metrics(path: Path, stop_step: int | None = None) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in events if stop_step is None or e.get("step", 0) < stop_step]


def compare_metrics(original: list[dict], new: list[dict]) -> str | None:
    """None when identical (ignoring the wall-clock keys steps_per_s, tokens_per_s), else the first difference."""
    for a, b in zip(original, new):
        for key in sorted(set(a) | set(b), key=lambda k: (k != "step", k)):
            if key in TIMING_KEYS:
                continue
            x, y = a.get(key), b.get(key)
            same = x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
            if not same:
                return f"step {a.get('step')} ({a.get('split')}): {key} was {x!r}, now {y!r}"
    if len(original) != len(new):
        return f"original has {len(original)} logged events, the re-run {len(new)}"
    return None


def fixes_to_overrides(recommendations: Iterable[Any], config: TrainConfig) -> dict[str, Any]:
    """Map detector recommendations {hparam, current, suggested} onto TrainConfig fields, typed; others are skipped."""
    names = {f.name for f in fields(TrainConfig)}
    out: dict[str, Any] = {}
    for rec in recommendations:
        name = HPARAM_ALIASES.get(rec.hparam, rec.hparam)
        if name not in names or rec.suggested is None:
            continue
        try:
            out[name] = coerce(name, rec.suggested)
        except ConfigError:
            continue
    return out


def reproduce_run(run_dir: Path, out_dir: Path | None, max_steps: int | None, nproc: int | None,
                  overrides: dict[str, str], apply_fixes: bool, echo: Callable[[str], None]) -> int:
    """0 = reproduced identically (or fixes applied), 1 = metrics differ; bad input raises InputError (exit 2)."""
    from analyzer.trainer.train import train

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    try:
        config = with_overrides(config, overrides)
    except ConfigError as exc:
        raise InputError(f"--set: {exc}")
    if max_steps is not None and max_steps < 1:
        raise InputError(f"--max-steps must be at least 1, got {max_steps}")
    nproc = nproc or config.world_size
    out_dir = Path(out_dir) if out_dir else Path("postmortem") / "reproduce" / (
        run_dir.name + ("-fixed" if apply_fixes else ""))
    if out_dir.resolve() == run_dir.resolve():
        raise InputError("--out must differ from the run dir being reproduced", path=out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "run.json").exists():
        raise InputError("--out exists and is not a run dir of the trainer; refusing to write into it", path=out_dir)

    if apply_fixes:
        return _apply_fixes(run_dir, config, out_dir, max_steps, nproc, echo)

    echo(f"re-running {run_dir} ({config.scenario}, seed {config.seed}, world size {nproc}"
         + (f", first {max_steps} steps" if max_steps else "") + f") into {out_dir}")
    train(config, out_dir, nproc=nproc, stop_step=max_steps, quiet=True,
          command=f"reproduce-run {run_dir}")
    stop = min(max_steps, config.max_steps) if max_steps else None
    diff = compare_metrics(load_metrics(run_dir / "metrics.jsonl", stop), load_metrics(out_dir / "metrics.jsonl", stop))
    if diff is None:
        echo(f"identical: metrics.jsonl matches the original (ignoring wall-clock {', '.join(TIMING_KEYS)})")
        return 0
    echo(f"differs: first difference at {diff}")
    return 1


def train_events(run_dir: Path, stop: int | None) -> tuple[list[dict], list[dict]]:
    events = load_metrics(run_dir / "metrics.jsonl", stop)
    return [e for e in events if e.get("split") == "train"], [e for e in events if "eval_loss" in e]


def _finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _kd_ratio(train: list[dict]) -> float:
    return _median([e["kd_loss"] / e["kd_raw"] for e in train
                    if e.get("kd_raw") and math.isfinite(e["kd_raw"]) and math.isfinite(e.get("kd_loss", math.nan))])


def _second_half_drop(train: list[dict]) -> float:
    """Mean loss of the third quarter minus that of the last quarter: how much the run still learns late on."""
    losses = _finite(e.get("loss") for e in train)
    quarter = len(losses) // 4
    if quarter == 0:
        return math.nan
    return statistics.fmean(losses[2 * quarter:3 * quarter]) - statistics.fmean(losses[-quarter:])


# the number each finding is about, for the before/after table: label, function of (train events, config)
FINDING_METRICS: dict[str, tuple[str, Callable[[list[dict], TrainConfig], float]]] = {
    "distill-temperature-blowup": ("kd_loss / kd_raw", lambda t, c: _kd_ratio(t)),
    "mlm-label-ratio": ("mask_ratio (median)", lambda t, c: _median(_finite(e.get("mask_ratio") for e in t))),
    "initial-loss-mismatch": ("first loss", lambda t, c: next(iter(_finite(e.get("loss") for e in t)), math.nan)),
    "init-variance": ("first loss", lambda t, c: next(iter(_finite(e.get("loss") for e in t)), math.nan)),
    "lr-too-low": ("loss drop, last half", lambda t, c: _second_half_drop(t)),
    "lr-too-high": ("loss drop, last half", lambda t, c: _second_half_drop(t)),
    "loss-plateau": ("loss drop, last half", lambda t, c: _second_half_drop(t)),
    "loss-spike": ("max loss", lambda t, c: max(_finite(e.get("loss") for e in t), default=math.nan)),
    "loss-scale-collapse": ("min loss_scale", lambda t, c: min(_finite(e.get("loss_scale") for e in t),
                                                             default=math.nan)),
    "throughput-drop": ("tokens_per_s (median)", lambda t, c: _median(_finite(e.get("tokens_per_s") for e in t))),
    "small-effective-batch": ("effective batch", lambda t, c: float(c.effective_batch)),
    "nonfinite-onset": ("first non-finite step", lambda t, c: next(
        (float(e["step"]) for e in t if any(isinstance(v, float) and not math.isfinite(v) for v in e.values())
         or e.get("lm_loss") == 0.0), math.nan)),
}


def summarize(run_dir: Path, stop: int | None, config: TrainConfig, about: Iterable[str] = ()) -> dict[str, float]:
    """Key numbers of a run for the before/after table, then the numbers the fixed findings were about."""
    train, evals = train_events(run_dir, stop)
    losses = [e["loss"] for e in train if "loss" in e]
    finite = _finite(losses)
    log = (run_dir / "train.log").read_text() if (run_dir / "train.log").exists() else ""
    if stop is not None:  # count log lines of the compared steps only: cut the log at the first line of step `stop`
        cut = log.find(f"\nstep {stop} |")
        log = log if cut < 0 else log[:cut]
    out = {"final loss": finite[-1] if finite else math.nan, "min loss": min(finite, default=math.nan),
           "final eval loss": evals[-1]["eval_loss"] if evals else math.nan,
           "max grad norm": max(_finite(e.get("grad_norm") for e in train), default=math.nan),
           "NaN/Inf (logged or clamped)": float(len(losses) - len(finite) + log.count("non-finite value")),
           "fp16 overflows": float(log.count("[fp16] overflow"))}
    lm = _finite(e.get("lm_loss") for e in train if e.get("lm_loss") != 0.0)  # 0.0 exactly: a clamped NaN
    if lm:  # distillation: the total loss carries T^2 * KL at the run's own temperature, the LM loss does not
        out["final lm_loss (unclamped)"] = lm[-1]
    for name in about:
        if name in FINDING_METRICS:
            label, compute = FINDING_METRICS[name]
            out.setdefault(label, compute(train, config))
    return out


def chosen_fixes(diagnosis: Any) -> tuple[list[Any], list[Any]]:
    """The findings whose recommendations we apply and those recommendations: the root causes' and those of the
    critical findings they led to, else the most severe finding's that makes any (findings come ordered root causes
    first, then by severity; the first recommendation for a setting wins). A root cause's fix can leave a critical
    consequence in place: a lower KD temperature shrinks the loss term, but the fp16 overflow it set off still
    needs the NaN finding's precision and clipping fixes (before: 21 NaN, after T 3 -> 2 alone: NaN again by step
    333 of 1000). A warning's fix is left out: it tends to correct the root cause's mechanism a second time through
    another setting (factorized-embedding-stall: scaled init and a smaller init_std, 4x the gradient norm)."""
    roots = set(diagnosis.root_causes)
    with_recs = [f for f in diagnosis.findings if f.recommendations]
    chosen = [f for f in with_recs if f.name in roots or (
        f.severity.value == "critical" and roots.intersection(getattr(f, "caused_by", ())))]
    findings = chosen or with_recs[:1]
    return findings, [r for f in findings for r in f.recommendations]


def _apply_fixes(run_dir: Path, config: TrainConfig, out_dir: Path, max_steps: int | None, nproc: int,
                 echo: Callable[[str], None]) -> int:
    from analyzer.diagnose import diagnose_path
    from analyzer.trainer.train import train

    diagnosis = diagnose_path(run_dir)
    findings, recommendations = chosen_fixes(diagnosis)
    if not recommendations:
        echo("no finding recommends a hyperparameter change; nothing to re-run")
        return 0
    fixes: dict[str, Any] = {}
    for rec in recommendations:  # the first recommendation for a field wins: root causes and severity first
        for name, value in fixes_to_overrides([rec], config).items():
            fixes.setdefault(name, value)
    echo(f"fixing {', '.join(f'{f.name} ({f.code})' for f in findings)}")
    for rec in recommendations:
        if not fixes_to_overrides([rec], config):
            echo(f"skipped: {rec.hparam} -> {rec.suggested!r} is not a setting of the reference trainer")
    if not fixes:
        echo("no recommendation maps onto a trainer hyperparameter; nothing to re-run")
        return 0
    for name, value in fixes.items():
        echo(f"fix: {name} {getattr(config, name)!r} -> {value!r}")
    fixed = with_overrides(config, fixes)
    stop = min(max_steps, config.max_steps) if max_steps else None
    echo(f"training the fixed config into {out_dir}" + (f" (first {stop} steps)" if stop else ""))
    train(fixed, out_dir, nproc=nproc, stop_step=max_steps, quiet=True,
          command=f"reproduce-run --apply-fixes {run_dir}")
    about = [f.name for f in findings]
    before, after = summarize(run_dir, stop, config, about), summarize(out_dir, stop, fixed, about)
    redefined = sorted(LOSS_DEFINITIONS.intersection(fixes))
    for line in before_after_table(before, after, loss_comparable=not redefined):
        echo(line)
    if redefined:
        echo(f"note: the fix changes what the loss measures ({', '.join(redefined)}), so loss rows are not judged"
             + ("; lm_loss compares across temperatures" if "final lm_loss (unclamped)" in before else ""))
    for line in findings_before_after(diagnosis, diagnose_path(out_dir), stop):
        echo(line)
    worse = [key for key in before if judge(key, before[key], after.get(key, math.nan), not redefined) == "worse"]
    if worse:
        echo("worse after the fix: " + "; ".join(
            f"{key} {before[key]:.5g} -> {after.get(key, math.nan):.5g}" for key in worse))
    return 0


SERIOUS = ("critical", "warning")
# Judged on wall-clock speed, which the machine's load sets as much as the config: two runs minutes apart on a
# shared machine differ by 20-40% with the same settings, so a before/after of it says nothing about the fix.
WALL_CLOCK = ("throughput-drop",)


def findings_before_after(before: Any, after: Any, stop: int | None) -> list[str]:
    """The warning and critical findings of the original run and of the fixed one, detector by detector, and which
    the fix cleared: what `--apply-fixes` is for. With --max-steps, only findings that began within the re-run steps
    count for the original. Wall-clock findings (WALL_CLOCK) are left out."""
    def worst(diagnosis: Any, within: int | None) -> dict[str, str]:
        out: dict[str, str] = {}
        for f in diagnosis.findings:
            severity = f.severity.value
            if f.name in WALL_CLOCK:
                continue
            if severity in SERIOUS and (within is None or f.first_step is None or f.first_step < within):
                if f.name not in out or SERIOUS.index(severity) < SERIOUS.index(out[f.name]):
                    out[f.name] = severity
        return out

    was, now = worst(before, stop), worst(after, None)
    if not was and not now:
        return ["findings: none at warning or above, before or after"]
    names = list(was) + [n for n in now if n not in was]
    header = "findings (warning and above)"
    width = max(len(n) for n in (header, *names))
    lines = [f"{header:<{width}}  {'before':>12}  {'after':>12}"]
    lines += [f"{n:<{width}}  {was.get(n, '-'):>12}  {now.get(n, '-'):>12}" for n in names]
    cleared = [n for n in was if n not in now]
    verdict = f"the fix cleared {len(cleared)} of {len(was)}" + (f": {', '.join(cleared)}" if cleared else "")
    stayed = [n for n in was if n in now]
    new = [n for n in now if n not in was]
    if stayed:
        verdict += f"; still there: {', '.join(stayed)}"
    if new:
        verdict += f"; new: {', '.join(new)}"
    return lines + [verdict]


# Which way each row of the table improves: -1 lower is better, +1 higher is better; rows not listed describe a
# setting (effective batch, mask ratio, T^2) or a wall-clock speed, and are shown without a judgement.
BETTER = {"final loss": -1, "min loss": -1, "final eval loss": -1, "max grad norm": -1,
          "NaN/Inf (logged or clamped)": -1, "fp16 overflows": -1, "final lm_loss (unclamped)": -1,
          "loss drop, last half": +1, "max loss": -1, "min loss_scale": +1}
LOSS_ROWS = {"final loss", "min loss", "final eval loss", "max loss", "loss drop, last half", "first loss"}
# Settings that change what the logged loss measures: before and after are then different quantities.
LOSS_DEFINITIONS = {"temperature", "min_temperature", "alpha", "label_all_tokens", "mlm_loss_reduction",
                    "mlm_probability"}
SAME = 0.02  # relative change under which a row reads "same": seeds and schedules move numbers by this much


def judge(key: str, before: float, after: float, loss_comparable: bool = True) -> str:
    """'better', 'worse', 'same', or '' (a setting, a speed, a loss that means something else after the fix, or a
    number missing on one side)."""
    direction = BETTER.get(key)
    if direction is None or (key in LOSS_ROWS and not loss_comparable) or math.isnan(before) or math.isnan(after):
        return ""
    if abs(after - before) <= SAME * max(abs(before), abs(after)):
        return "same"
    return "better" if (after - before) * direction > 0 else "worse"


def before_after_table(before: dict[str, float], after: dict[str, float], loss_comparable: bool = True) -> list[str]:
    width = max(len(k) for k in before)
    lines = [f"{'':<{width}}  {'before':>12}  {'after':>12}"]
    for key in before:
        value = after.get(key, math.nan)
        verdict = judge(key, before[key], value, loss_comparable)
        row = f"{key:<{width}}  {_cell(before[key]):>12}  {_cell(value):>12}"
        lines.append(f"{row}  {verdict}" if verdict else row)
    return lines


def _cell(value: float) -> str:
    """A number of the table; '-' where the run has none (no non-finite step, no fp16 loss scale under bf16)."""
    return "-" if math.isnan(value) else f"{value:.5g}"
