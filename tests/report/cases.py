"""Inline runs and diagnoses for report tests, independent of detectors: numbers from the seed write-ups."""

from __future__ import annotations

import numpy as np

from analyzer.chain import link
from analyzer.diagnose import coverage_blind_spots, summarize
from analyzer.findings import (
    BlindSpotOut, Confidence, Diagnosis, Evidence, Finding, Recommendation, Severity, Skipped,
)
from analyzer.run import Checkpoint, CheckpointStats, Event, Run, TensorStats
from tests.conftest import make_run

NAN_STEP = 436  # seed 002: lm_loss NaN, clamped to zero


def seed002_run(n_steps: int = 700, temperature: float = 3.0, metric_prefix: str = "") -> Run:
    """A distillation run shaped like seed 002: T=3 (T^2 = 9), KD loss ~38, oscillating total loss, grad norm
    blowing up from ~120, lm_loss NaN at 436 clamped to zero, checkpoints at 200/400/600 (600 non-finite)."""
    rng = np.random.default_rng(2)
    steps = np.arange(n_steps)
    kd_raw = 4.2 + 0.25 * rng.standard_normal(n_steps)
    kd_loss = kd_raw * temperature ** 2
    lm_loss = 3.0 + 0.2 * rng.standard_normal(n_steps)
    lm_loss[NAN_STEP] = 0.0  # clamped, as the log says
    swing = 4.0 * np.sign(np.sin(steps / 100.0 * np.pi))
    loss = 24.0 + swing + 0.8 * rng.standard_normal(n_steps)
    grad_norm = 8.0 + 1.5 * rng.standard_normal(n_steps)
    grad_norm[120:] *= np.linspace(1, 40, n_steps - 120)
    grad_norm[NAN_STEP] = np.nan
    lr = np.minimum(steps / 50.0, 1.0) * 1e-4
    ckpt = lambda step, bad: Checkpoint(  # noqa: E731
        f"checkpoints/step_{step:06d}.pt", step, "torch",
        CheckpointStats(tensors=(TensorStats("lm_head.weight", (256, 32), "float32", 8192, bad, 11.3, 0.02, 0.9),)))
    return make_run(
        {f"{metric_prefix}loss": loss, "lm_loss": lm_loss, "kd_loss": kd_loss, "kd_raw": kd_raw,
         "grad_norm": grad_norm, "lr": lr, "eval_loss": (np.arange(0, n_steps, 100), 24.0 - steps[::100] / 400)},
        hparams={"temperature": temperature, "min_temperature": 2.0, "lr": 1e-4, "max_grad_norm": 1.0,
                 "batch_size": 16, "precision": "fp16"},
        events=[Event("nan_clamp", NAN_STEP, "[Warning] lm_loss produced non-finite value (nan); clamping to zero.",
                      "train.log", 1310)],
        checkpoints=[ckpt(200, 0), ckpt(400, 0), ckpt(600, 12)],
    )


def seed002_findings() -> tuple[Finding, ...]:
    def rec(h, cur, sug, why):
        return Recommendation(h, cur, sug, why)

    return (
        Finding("D001", "distill-temperature-blowup", Severity.CRITICAL, Confidence.HIGH,
                "KD loss is 9.0x its raw KL because temperature 3.0 is squared into the loss", 0, 699,
                {"temperature": 3.0, "t_squared": 9.0, "kd_raw_median": 4.2, "kd_loss_median": 37.8,
                 "lm_reference": 10.8},
                (rec("temperature", 3.0, 2.0, "T^2 drops from 9.0 to 4.0; KD loss ~38 -> ~17"),
                 rec("min_temperature", 2.0, 1.5, "anneal to T^2 = 2.25 rather than 4.0")),
                (Evidence("train.log", 12, "Step 0:   KD Raw: 38.0254, Temperature¬≤: 9.0"),
                 Evidence("train.log", 112, "Step 100: KD Raw: 28.6117, Temperature¬≤: 9.0"))),
        Finding("G001", "grad-explosion", Severity.CRITICAL, Confidence.HIGH,
                "gradient norm reached 412 (38x its median 10.8) before going NaN at step 436", 120, NAN_STEP,
                {"peak": 412.0, "median": 10.8, "clip_threshold": 1.0},
                evidence=(Evidence("metrics.jsonl", 1520, '{"step": 431, "grad_norm": 412.3}'),)),
        Finding("N001", "nonfinite-onset", Severity.CRITICAL, Confidence.HIGH,
                "lm_loss became NaN at step 436 and was clamped to zero, hiding it from the total loss",
                NAN_STEP, NAN_STEP, {"first_nonfinite_step": NAN_STEP, "metric": "lm_loss"},
                evidence=(Evidence("train.log", 1310,
                                   "[Warning] lm_loss produced non-finite value (nan); clamping to zero."),)),
        Finding("L003", "loss-oscillation", Severity.WARNING, Confidence.MEDIUM,
                "the loss swings between 20.0 and 28.3 (+42%) instead of trending down", 100, 600,
                {"low": 19.97, "high": 28.34, "swing_pct": 42.0}),
        Finding("N003", "perplexity-misreport", Severity.WARNING, Confidence.HIGH,
                "eval perplexity printed as 485165195 is capped: exp(eval loss 21.3) is 1.8e9", 500, 600,
                {"logged_ppl": 485165195.0, "exp_eval_loss": 1.8e9, "cap_loss": 20.0},
                evidence=(Evidence("train.log", 1702, "Eval PPL: 485165195.41"),)),
    )


def diagnose_inline(run: Run, findings: tuple[Finding, ...], skipped: tuple[Skipped, ...] = ()) -> Diagnosis:
    """A Diagnosis as diagnose_run builds it (chain and blind spots included) from hand-made findings."""
    ordered, roots = link(findings)
    return Diagnosis(
        run=summarize(run), findings=ordered, root_causes=roots,
        blind_spots=tuple(BlindSpotOut(b.message, b.affects) for b in (*run.blind_spots, *coverage_blind_spots(run))),
        skipped=skipped,
    )


SEED002_SKIPPED = (
    Skipped("throughput-drop", "the run logs no steps_per_s or tokens_per_s"),
    Skipped("loss-scale-collapse", "the run logs no loss_scale"),
    Skipped("mlm-label-ratio", "the run logs no mask_ratio"),
)


def seed002() -> tuple[Run, Diagnosis]:
    run = seed002_run()
    return run, diagnose_inline(run, seed002_findings(), SEED002_SKIPPED)


def healthy() -> tuple[Run, Diagnosis]:
    """A clean run: the loss falls from ln(256) towards 1.2, nothing found, three detectors lacking data."""
    steps = np.arange(0, 3000, 10)
    loss = 1.2 + (np.log(256) - 1.2) * np.exp(-steps / 600)
    run = make_run({"loss": (steps, loss), "lr": (steps, np.full(len(steps), 3e-4))},
                   hparams={"lr": 3e-4, "batch_size": 32, "vocab_size": 256})
    skipped = (Skipped("grad-explosion", "the run logs no grad_norm"),
               Skipped("grad-vanishing", "the run logs no grad_norm"),
               Skipped("throughput-drop", "the run logs no steps_per_s or tokens_per_s"))
    return run, diagnose_inline(run, (), skipped)


CASES = {"inline_seed002": seed002, "inline_healthy": healthy}
