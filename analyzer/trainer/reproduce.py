"""reproduce-run: re-run a run dir the trainer wrote and say whether its metrics match, or apply recommended fixes."""

from __future__ import annotations

import json
import math
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
    out_dir = Path(out_dir) if out_dir else Path("postmortem") / "reproduce" / run_dir.name
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


def summarize(run_dir: Path, stop: int | None) -> dict[str, float]:
    """Key numbers of a run for the before/after table."""
    events = load_metrics(run_dir / "metrics.jsonl", stop)
    train = [e for e in events if e.get("split") == "train"]
    losses = [e["loss"] for e in train if "loss" in e]
    finite = [v for v in losses if math.isfinite(v)]
    norms = [e["grad_norm"] for e in train if "grad_norm" in e and math.isfinite(e["grad_norm"])]
    evals = [e["eval_loss"] for e in events if "eval_loss" in e]
    log = (run_dir / "train.log").read_text() if (run_dir / "train.log").exists() else ""
    return {"final loss": finite[-1] if finite else math.nan, "min loss": min(finite, default=math.nan),
            "final eval loss": evals[-1] if evals else math.nan, "max grad norm": max(norms, default=math.nan),
            "NaN/Inf losses": float(len(losses) - len(finite) + log.count("non-finite value")),
            "fp16 overflows": float(log.count("[fp16] overflow"))}


def _apply_fixes(run_dir: Path, config: TrainConfig, out_dir: Path, max_steps: int | None, nproc: int,
                 echo: Callable[[str], None]) -> int:
    from analyzer.diagnose import diagnose_path
    from analyzer.trainer.train import train

    recommendations = [r for f in diagnose_path(run_dir).findings for r in f.recommendations]
    fixes = fixes_to_overrides(recommendations, config)
    skipped = sorted({r.hparam for r in recommendations} - set(fixes) - {k for k, v in HPARAM_ALIASES.items()
                                                                          if v in fixes})
    if not fixes:
        echo("no recommendation maps onto a trainer hyperparameter; nothing to re-run")
        return 0
    for name, value in fixes.items():
        echo(f"fix: {name} {getattr(config, name)!r} -> {value!r}")
    for name in skipped:
        echo(f"skipped: {name} is not a trainer hyperparameter")
    fixed = with_overrides(config, fixes)
    train(fixed, out_dir, nproc=nproc, stop_step=max_steps, quiet=True, command=f"reproduce-run --apply-fixes {run_dir}")
    stop = min(max_steps, config.max_steps) if max_steps else None
    before, after = summarize(run_dir, stop), summarize(out_dir, stop)
    echo(f"{'metric':<18} {'before':>12} {'after':>12}")
    for key in before:
        echo(f"{key:<18} {before[key]:>12.4g} {after[key]:>12.4g}")
    return 0
