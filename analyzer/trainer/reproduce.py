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


# A loss the run counted as 0.0 because it was NaN (nan_policy "clamp"): its real value is non-finite. Shown as
# "NaN" in the table and judged worse than any real number: a clamped run's total loss looks lower, not better.
CLAMPED = math.inf


LAST_LM = "last finite lm_loss"


def _clamped(event: dict) -> bool:
    """A train event whose loss (or, in distillation, lm_loss) the trainer clamped: NaN replaced by exactly 0.0."""
    return event.get("lm_loss") == 0.0 or event.get("loss") == 0.0


def _final(train: list[dict], key: str) -> float:
    """The last train event's value of `key`: CLAMPED where that step clamped a NaN, NaN where nothing is logged."""
    last = next((e for e in reversed(train) if key in e), None)
    if last is None:
        return math.nan
    value = last[key]
    return CLAMPED if _clamped(last) or not (isinstance(value, (int, float)) and math.isfinite(value)) else value


def summarize(run_dir: Path, stop: int | None, config: TrainConfig, about: Iterable[str] = ()) -> dict[str, float]:
    """Key numbers of a run for the before/after table, then the numbers the fixed findings were about. A step that
    clamped a NaN has no real loss: its final losses read CLAMPED and min loss skips it. The trainer's evaluation
    clamps silently, so an eval right after a clamped train step is taken as clamped too."""
    train, evals = train_events(run_dir, stop)
    losses = [e["loss"] for e in train if "loss" in e]
    finite = _finite(losses)
    real = _finite(e.get("loss") for e in train if not _clamped(e))
    log = (run_dir / "train.log").read_text() if (run_dir / "train.log").exists() else ""
    if stop is not None:  # count log lines of the compared steps only: cut the log at the first line of step `stop`
        cut = log.find(f"\nstep {stop} |")
        log = log if cut < 0 else log[:cut]
    final_eval = math.nan
    if evals:
        last_eval = evals[-1]
        before = [e for e in train if e.get("step", 0) <= last_eval.get("step", 0)]
        final_eval = (CLAMPED if before and _clamped(before[-1]) or not math.isfinite(last_eval["eval_loss"])
                      else last_eval["eval_loss"])
    out = {"final loss": _final(train, "loss"), "min loss": min(real, default=math.nan),
           "final eval loss": final_eval,
           "max grad norm": max(_finite(e.get("grad_norm") for e in train), default=math.nan),
           "NaN/Inf (logged or clamped)": float(len(losses) - len(finite) + log.count("non-finite value")),
           "fp16 overflows": float(log.count("[fp16] overflow"))}
    if any("lm_loss" in e for e in train):  # distillation: the total carries T^2 * KL at the run's own T; lm_loss not
        out["final lm_loss"] = _final(train, "lm_loss")
        # where the final one is NaN, the last real one says how far the LM got before it (shown only then)
        out[LAST_LM] = next(iter(_finite(e.get("lm_loss") for e in reversed(train) if not _clamped(e))), math.nan)
    for name in about:
        if name in FINDING_METRICS:
            label, compute = FINDING_METRICS[name]
            out.setdefault(label, compute(train, config))
    return out


def chosen_fixes(diagnosis: Any) -> tuple[list[Any], list[Any]]:
    """The findings whose recommendations we apply and those recommendations: the critical findings a root cause
    led to and the root causes themselves, else the most severe finding's that makes any (findings come ordered
    root causes first, then by severity; the first recommendation for a setting wins). A root cause's fix can leave
    a critical consequence in place, so the consequence's fixes are applied too. A root cause that is only a
    warning and led to a critical finding with fixes of its own is left out (see set_aside): the re-run checks
    the fix for what broke the run, and the warning's change is a separate experiment (kd-temperature-blowup: the
    NaN is an fp16 softmax overflow at any temperature; T 3 -> 2 on top raised the max grad norm 4.59 -> 12.6).
    A warning consequence's fix is left out: it tends to correct the root cause's mechanism a second time through
    another setting (factorized-embedding-stall: scaled init and a smaller init_std, 4x the gradient norm)."""
    findings = _chosen(diagnosis)
    return findings, [r for f in findings for r in f.recommendations]


def set_aside(diagnosis: Any) -> list[Any]:
    """Root causes with recommendations that chosen_fixes leaves out: warnings that led to a critical finding."""
    chosen = {id(f) for f in _chosen(diagnosis)}
    roots = set(diagnosis.root_causes)
    return [f for f in diagnosis.findings if f.recommendations and f.name in roots and id(f) not in chosen]


def _chosen(diagnosis: Any) -> list[Any]:
    roots = set(diagnosis.root_causes)
    with_recs = [f for f in diagnosis.findings if f.recommendations]
    critical_effects = [f for f in with_recs if f.name not in roots and f.severity.value == "critical"
                        and roots.intersection(getattr(f, "caused_by", ()))]
    led_to_critical = {cause for f in critical_effects for cause in getattr(f, "caused_by", ())}
    chosen = [f for f in with_recs if (f.name in roots and (f.severity.value == "critical"
                                                             or f.name not in led_to_critical))
              or any(f is c for c in critical_effects)]
    return chosen or with_recs[:1]


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
    for f in set_aside(diagnosis):
        echo(f"not applied: {', '.join(f'{r.hparam} {r.current!r} -> {r.suggested!r}' for r in f.recommendations)} "
             f"({f.name}, {f.severity.value}): it led to a critical finding whose own fixes are applied; "
             "test it separately with --set")
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
    if CLAMPED not in (before.get("final lm_loss"), after.get("final lm_loss")):
        before.pop(LAST_LM, None)
        after.pop(LAST_LM, None)
    redefined = sorted(LOSS_DEFINITIONS.intersection(fixes))
    for line in before_after_table(before, after, loss_comparable=not redefined):
        echo(line)
    if CLAMPED in before.values() or CLAMPED in after.values():
        echo("note: NaN in a loss row: that step's loss was non-finite (logged as NaN, or clamped to 0.0, which makes "
             "a total loss look lower); it counts as worse than any number")
    if redefined:
        echo(f"note: the fix changes what the loss measures ({', '.join(redefined)}), so loss rows are not judged"
             + ("; lm_loss compares across temperatures" if "final lm_loss" in before else ""))
    fixed_diagnosis = diagnose_path(out_dir)
    for line in findings_before_after(diagnosis, fixed_diagnosis, stop):
        echo(line)
    echo(verdict(before, after, not redefined, _serious(fixed_diagnosis, None).keys()))
    return 0


def verdict(before: dict[str, float], after: dict[str, float], loss_comparable: bool = True,
            remaining: Iterable[str] = ()) -> str:
    """One line: which judged numbers improved and which got worse; a fix is called clean only when none got
    worse and no NaN is left, and complete only when no warning or critical finding is left (`remaining`)."""
    judged = {key: judge(key, before[key], after.get(key, math.nan), loss_comparable) for key in before}
    change = {key: f"{key} {_cell(before[key])} -> {_cell(after.get(key, math.nan))}" for key in before}
    better = [change[k] for k, v in judged.items() if v == "better"]
    worse = [change[k] for k, v in judged.items() if v == "worse"]
    nan_left = after.get("NaN/Inf (logged or clamped)", 0.0)
    problems = []
    if nan_left and math.isfinite(nan_left):
        problems.append(f"the run still goes non-finite ({nan_left:.0f} NaN/Inf)")
    if worse:
        problems.append("some numbers got worse")
    remaining = sorted(remaining)
    if problems:
        head = "verdict: not a clean fix, " + " and ".join(problems)
    elif better and remaining:
        head = f"verdict: partly fixed, nothing got worse but {', '.join(remaining)} is still found"
    elif better:
        head = "verdict: fixed, nothing got worse"
    else:
        head = "verdict: no judged number changed"
    return (f"{head}; better: {'; '.join(better) or 'nothing'}; worse: {'; '.join(worse) or 'nothing'}")


SERIOUS = ("critical", "warning")
# Judged on wall-clock speed, which the machine's load sets as much as the config: two runs minutes apart on a
# shared machine differ by 20-40% with the same settings, so a before/after of it says nothing about the fix.
WALL_CLOCK = ("throughput-drop",)


def _serious(diagnosis: Any, within: int | None) -> dict[str, str]:
    """Detector -> its worst severity, for the warning and critical findings that began before `within` (all when
    None), wall-clock ones left out."""
    out: dict[str, str] = {}
    for f in diagnosis.findings:
        severity = f.severity.value
        if f.name in WALL_CLOCK:
            continue
        if severity in SERIOUS and (within is None or f.first_step is None or f.first_step < within):
            if f.name not in out or SERIOUS.index(severity) < SERIOUS.index(out[f.name]):
                out[f.name] = severity
    return out


def findings_before_after(before: Any, after: Any, stop: int | None) -> list[str]:
    """The warning and critical findings of the original run and of the fixed one, detector by detector, and which
    the fix cleared: what `--apply-fixes` is for. With --max-steps, only findings that began within the re-run steps
    count for the original. Wall-clock findings (WALL_CLOCK) are left out."""
    was, now = _serious(before, stop), _serious(after, None)
    if not was and not now:
        return ["findings: none at warning or above, before or after"]
    names = list(was) + [n for n in now if n not in was]
    header = "findings (warning and above)"
    width = max(len(n) for n in (header, *names))
    lines = [f"{header:<{width}}  {'before':>12}  {'after':>12}"]
    lines += [f"{n:<{width}}  {was.get(n, '-'):>12}  {now.get(n, '-'):>12}" for n in names]
    cleared = [n for n in was if n not in now]
    verdict = (f"findings gone after the fix: {len(cleared)} of {len(was)}"
               + (f" ({', '.join(cleared)})" if cleared else ""))
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
          "NaN/Inf (logged or clamped)": -1, "fp16 overflows": -1, "final lm_loss": -1, LAST_LM: -1,
          "loss drop, last half": +1, "max loss": -1, "min loss_scale": +1}
LOSS_ROWS = {"final loss", "min loss", "final eval loss", "max loss", "loss drop, last half", "first loss"}
# Settings that change what the logged loss measures: before and after are then different quantities.
LOSS_DEFINITIONS = {"temperature", "min_temperature", "alpha", "label_all_tokens", "mlm_loss_reduction",
                    "mlm_probability"}
SAME = 0.02  # relative change under which a row reads "same": seeds and schedules move numbers by this much


def judge(key: str, before: float, after: float, loss_comparable: bool = True) -> str:
    """'better', 'worse', 'same', or '' (a setting, a speed, a loss that means something else after the fix, or a
    number missing on one side). A CLAMPED loss (a NaN logged as 0.0) is worse than any real one."""
    direction = BETTER.get(key)
    if direction is None or (key in LOSS_ROWS and not loss_comparable) or math.isnan(before) or math.isnan(after):
        return ""
    if CLAMPED in (before, after):
        return "" if before == after else ("worse" if after == CLAMPED else "better")
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
    """A number of the table; '-' where the run has none (no non-finite step, no fp16 loss scale under bf16),
    'NaN' where its loss was non-finite (logged as NaN, or as 0.0 by a clamp)."""
    if value == CLAMPED:
        return "NaN"
    return "-" if math.isnan(value) else f"{value:.5g}"
