"""Measured detection quality: precision, recall and onset-step error per detector over every labelled run.

Labelled runs: the sample runs (labels from sample_runs/README.md and the seed write-ups), the framework
fixtures (tests/fixtures/frameworks/README.md), the framework pathology runs (tests/fixtures/pathologies/truth.json),
the real public logs (../shared/real_runs/README.md; labels
assigned below), and generated variations: synthetic curves with one known injected incident (or none) at several
seeds, noise levels and logging intervals (tests/detectors/synth.py).

Counting, per detector: a true positive is an expected detector that produced a finding (any severity); a false
negative, one that produced none; a false positive, a warning or critical finding from a detector that is neither
expected nor allowed on that run (info findings of unlabelled detectors are not counted: they are "worth knowing",
not alarms). Onset error is |first_step - labelled onset| of true positives whose onset is known.

    .venv/bin/python tests/perf/eval_detection.py            # the table
    .venv/bin/python tests/perf/eval_detection.py -v         # plus every miss and false alarm
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from analyzer.detectors import DETECTORS  # noqa: E402
from analyzer.diagnose import diagnose_run  # noqa: E402
from analyzer.errors import InputError  # noqa: E402
from analyzer.findings import Severity  # noqa: E402
from analyzer.ingest import read_run  # noqa: E402
from tests.detectors import stability_synth, synth  # noqa: E402

REAL_RUNS = ROOT.parent / "shared" / "real_runs"
SAMPLE_RUNS = ROOT / "sample_runs"
FIXTURES = ROOT / "tests" / "fixtures" / "frameworks"
PATHOLOGIES = ROOT / "tests" / "fixtures" / "pathologies"


@dataclass(frozen=True)
class Label:
    """What should come out of one run: expected detectors (name -> onset step or None) and allowed ones."""

    expected: dict[str, int | None] = field(default_factory=dict)
    allowed: frozenset[str] = frozenset()


def label(expected=None, allowed=()):
    return Label(dict(expected or {}), frozenset(allowed))


# --- real public logs: labels read from ../shared/real_runs/README.md -------------------------------------------
REAL_LABELS: dict[str, Label] = {
    # lm loss 2.199 (31214) -> 5.098 (31219) -> 2.216 (31250), grad norm 0.242 -> 960; TFLOPs 149 -> 141 (info)
    "bloom176b_spike": label({"loss-spike": 31219, "grad-explosion": 31219}, {"throughput-drop"}),
    # overlapping experiments; jumps 6.44->11.42, 3.68->7.27 (8741), 3.11->7.71; grad norm up to 3.27e6
    "bloom104b_wide_divergence": label({"loss-spike": 8741}, {"loss-divergence", "grad-explosion", "nonfinite-onset",
                                                              "loss-scale-collapse", "throughput-drop"}),
    # six OVERFLOW lines 17061-17068 (scale 1048576 -> 32768); lm loss 2.667 (17061) -> 4.374 (17062)
    "bloom104b_overflow": label({"loss-scale-collapse": 17061, "loss-spike": 17062},
                                {"grad-explosion", "nonfinite-onset", "loss-divergence", "throughput-drop"}),
    # lm loss 2.768 (29040) -> 7.344 (29050) -> 8.716 (29060); loss scale 65536 -> 4096
    "bloom13b_spike": label({"loss-spike": 29050}, {"loss-scale-collapse", "grad-explosion", "loss-divergence",
                                                    "nonfinite-onset"}),
    # gradient overflow after update 2 (scale 4 -> 1), loss 16.45 -> 25.22 at update 3 (too early to judge a spike)
    "fairseq_fsdp_overflow": label({"loss-scale-collapse": 2}, {"loss-spike", "grad-explosion", "nonfinite-onset"}),
    # 17 OVERFLOW lines before step 20 (2^32 -> 32768)
    "deepspeed_bert_overflow": label({"loss-scale-collapse": None}, {"nonfinite-onset", "small-effective-batch"}),
    # eval_loss within 1e-6 of ln 4 from step 450 on, train loss 1.383-1.417
    "hf_lrqa_chance_plateau": label({"loss-plateau": 450}, {"lr-too-high"}),
    # eval_loss 0.3210 (1000) -> 0.4200 (5000) while train loss -> 0.0002; eval_wer best at 3000 (0.743), not since
    "hf_whisper_overfit": label({"overfitting": 1000}),
    # single-entry grad spikes that heal: info at most
    "hf_star_benign_gradspikes": label(),
    # epoch-mean train loss 3.670 -> 3.719 and val 3.563 -> 3.604 at the end: a real stall
    "pl_slm_resume": label({}, {"loss-plateau"}),
    # train loss 7.49-7.81 from step 49 to 10999
    "pl_slm_plateau": label({"loss-plateau": 49}, {"lr-too-low"}),
    "nanogpt_no_warmup": label(),
    "nanogpt_baseline": label(),
    "hf_mistral_healthy": label(),
    "hf_grpo_zero_loss_by_design": label(),
    "hf_tinyllama_healthy": label(),
    "pl_resnet_onecycle_healthy": label(),
    "opt175b_chronicles": label(),
}

# --- sample runs: sample_runs/README.md and the seed write-ups ----------------------------------------------------
SAMPLE_LABELS: dict[str, Label] = {
    # seed 000: labels = input_ids.clone() (mask_ratio 1.0), lr 1e-5; the inflated loss and grad norm follow
    "mlm-labels-all-tokens": label({"mlm-label-ratio": 0, "lr-too-low": None},
                                   {"initial-loss-mismatch", "loss-plateau", "grad-explosion", "grad-vanishing"}),
    "mlm-labels-all-tokens-fixed": label(),
    # seed 001: lr 1e-4 too low, eval loss 5.3432 -> 5.3327 over steps 200-300
    "mlm-lr-too-low": label({"lr-too-low": None, "loss-plateau": None}, {"grad-vanishing"}),
    "mlm-lr-too-low-fixed": label(),
    # seed 002: kd_loss = 9 x kd_raw, lm_loss NaN clamped from step 220, ppl capped
    "kd-temperature-blowup": label({"distill-temperature-blowup": 0, "nonfinite-onset": 220,
                                    "perplexity-misreport": None},
                                   {"grad-explosion", "loss-oscillation", "loss-plateau", "loss-scale-collapse",
                                    "loss-spike"}),
    "kd-temperature-blowup-fixed": label(),
    # seed 003: loss 1.15 -> 3.18 at steps 150-151 (2 corrupted documents in a batch of 8), steps/s 70 -> 43 after it
    "gpt2-spike-plateau": label({"loss-spike": 150, "throughput-drop": 150, "grad-explosion": 150}, {"loss-plateau"}),
    # the fix dilutes the same 2 corrupted documents in a batch of 32: a blip (1.28x), no spike
    "gpt2-spike-plateau-fixed": label(),
    # seed 004: first loss 10.90 vs ln V 8.987 (unscaled summed factorized tables); then a stall ~0.8 nats under
    # ln V caused by the lr (the README: lr 4e-3 learns, 8e-3 stalls)
    "factorized-embedding-stall": label({"initial-loss-mismatch": 0, "init-variance": None, "loss-plateau": None},
                                        {"lr-too-high", "grad-vanishing", "grad-explosion"}),
    "factorized-embedding-stall-fixed": label(),
}

# --- framework fixtures: tests/fixtures/frameworks/README.md --------------------------------------------------
FIXTURE_LABELS: dict[str, Label] = {
    "hf_trainer_healthy": label(),
    # the weights turn NaN at optimizer step 34: checkpoint-40 and -60 are non-finite, checkpoint-20 is clean
    "hf_trainer_nan": label({"nonfinite-onset": 35, "checkpoint-nonfinite": 40}, {"grad-explosion", "loss-divergence"}),
    "hf_trainer_nan_unfiltered": label({"nonfinite-onset": 35, "checkpoint-nonfinite": 40},
                                       {"grad-explosion", "loss-divergence"}),
    "lightning_csv": label(),
    # MSE of a tiny regression with batch 8 and SGD lr 0.05: train loss 11.65, 2.79, 4.92, 6.06, 7.62, 2.84, ...
    # in 12 points; too short to tell noise from oscillation, and it does swing
    "lightning_tb": label({}, {"loss-oscillation"}),
    "tensorboard_scalars": label({"nonfinite-onset": 137}, {"grad-explosion"}),
    "tensorboard_truncated": label(),
    "mlflow_filestore": label({"nonfinite-onset": 57}, {"grad-explosion"}),
    "mlflow_sqlite": label({"nonfinite-onset": 57}, {"grad-explosion"}),
    "wandb_offline": label({"nonfinite-onset": 42}),
    "wandb_offline_legacy": label({"nonfinite-onset": 42}),
    "generic_csv": label(),
    "ultralytics_results": label(),
    "ultralytics_results_v8_0": label(),
    "generic_jsonl": label(),
}

# --- framework pathologies: real HF Trainer / Lightning / Keras runs, tests/fixtures/pathologies/truth.json -------
PATHOLOGY_LABELS: dict[str, Label] = {
    "hf_healthy": label(),
    # lr 1.0: the loss is >10% above its first value from the second logged point (step 10) on
    "hf_lr_too_high": label({"lr-too-high": 5}),
    # lr 1e-6: the loss moves 4.721 -> 4.712 in 300 steps; judged from the end of warmup (the lr peaks at step 35)
    "hf_lr_too_low": label({"lr-too-low": 35, "loss-plateau": 35}),
    "lightning_healthy": label(),
    # SGD lr 0.3: the loss climbs from step 4, overflows to Inf at step 50; the step-288 checkpoint is non-finite
    "lightning_nan": label({"nonfinite-onset": 50, "checkpoint-nonfinite": 288},
                           {"loss-divergence", "loss-spike", "grad-explosion"}),
    "keras_healthy": label(),
    "keras_lr_too_high": label({"lr-too-high": 0}),
}


# --- generated variations --------------------------------------------------------------------------------------
SEEDS = (0, 1, 2)
NOISES = (0.01, 0.03, 0.08)
LOGGING = ((1, False), (10, True), (50, False))  # (interval, HF-style window average)
STEPS = 3000
AT = 1500


def synthetic_cases():
    """(name, Run, Label) for healthy curves and one injected incident each, over seeds x noise x logging."""
    all_metrics = ("loss", "lr", "grad_norm", "steps_per_s", "update_ratio")
    for seed in SEEDS:
        for noise in NOISES:
            for interval, averaged in LOGGING:
                tag = f"s{seed}-n{noise}-i{interval}{'avg' if averaged else ''}"
                fmt = "hf-trainer" if averaged else "test"
                warmup, schedule = (300, "cosine") if seed % 2 else (0, "constant")
                base = synth.healthy(seed, steps=STEPS, noise=noise, warmup=warmup, schedule=schedule)

                def run(curve, metrics=all_metrics, **hp):
                    return synth.log(curve, interval, averaged, metrics=metrics, hparams=hp, fmt=fmt)

                yield f"healthy/{tag}", run(base), label()
                # a spike several noise units tall, one that comes back and one that stays
                factor = {0.01: 1.5, 0.03: 2.0, 0.08: 3.0}[noise]
                yield (f"spike/{tag}", run(synth.with_spike(base, AT, factor=factor, recover=max(30, 3 * interval))),
                       label({"loss-spike": AT}, {"grad-explosion"}))
                yield (f"jump/{tag}", run(synth.with_persistent_jump(base, AT, factor=factor)),
                       label({"loss-spike": AT}, {"loss-divergence", "loss-plateau"}))
                # after the climb the loss stays flat and high: a plateau there is a true description
                yield (f"divergence/{tag}", run(synth.with_divergence(base, AT, growth=2.0, over=300)),
                       label({"loss-divergence": AT}, {"loss-spike", "loss-plateau"}))
                flat = synth.healthy(seed, steps=STEPS, noise=noise, warmup=0, schedule="constant")
                yield (f"plateau/{tag}", run(synth.with_plateau(flat, 1000)),
                       label({"loss-plateau": 1000}, {"lr-too-low"}))
                yield (f"oscillation/{tag}", run(synth.with_oscillation(
                    base, AT, amplitude=0.3, period=max(200, 6 * interval), seed=seed)),
                       label({"loss-oscillation": AT}, {"loss-plateau", "loss-spike", "loss-divergence",
                                                       "lr-too-high"}))
                yield (f"throughput/{tag}", run(synth.with_throughput_drop(base, AT, factor=0.6)),
                       label({"throughput-drop": AT}))
                yield (f"initial/{tag}", run(synth.healthy(seed, steps=STEPS, noise=noise, start=14.0)),
                       label({"initial-loss-mismatch": 0}))
                slow = _lr_too_low(seed, noise)
                yield f"lr-low/{tag}", run(slow), label({"lr-too-low": None}, {"loss-plateau"})
                yield (f"lr-high/{tag}", run(_lr_too_high(seed, noise)),
                       label({"lr-too-high": None}, {"loss-plateau", "loss-oscillation"}))
                yield (f"small-batch/{tag}", run(_noisy(seed), batch_size=2, gradient_accumulation_steps=1,
                                                 block_size=128),
                       label({"small-effective-batch": None}, {"loss-spike", "loss-oscillation"}))
    # the stability family's incidents and healthy twins (NaN, fp16 overflow, gradients, KD) over the same grid
    for name, run, expected, allowed in stability_synth.synthetic_cases():
        yield name, run, label(expected, allowed)


def _lr_too_low(seed, noise):
    """A loss that falls a little, then crawls, with update ratios ~3e-5 (lr far too small)."""
    curve = synth.healthy(seed, steps=STEPS, noise=noise, warmup=0, schedule="constant", rate=0.0001)
    ratio = 3e-5 * np.exp(np.random.default_rng(seed).normal(0, 0.1, STEPS))
    return synth.Curve(curve.loss, curve.lr, curve.grad_norm, curve.steps_per_s, ratio, curve.hparams)


def _lr_too_high(seed, noise):
    """A loss that never leaves chance level ln(vocab) while each step moves the weights by ~3%."""
    rng = np.random.default_rng(seed)
    curve = synth.healthy(seed, steps=STEPS, noise=noise, warmup=0, schedule="constant")
    loss = math.log(22026) * np.exp(rng.normal(0, noise, STEPS))
    ratio = 3e-2 * np.exp(rng.normal(0, 0.1, STEPS))
    return synth.Curve(loss, curve.lr, curve.grad_norm, curve.steps_per_s, ratio, curve.hparams)


def _noisy(seed):
    """A healthy curve with a small batch's 12% per-step noise."""
    return synth.healthy(seed, steps=STEPS, noise=0.12, warmup=0, schedule="constant")


# --- scoring ---------------------------------------------------------------------------------------------------

@dataclass
class Tally:
    tp: int = 0
    fn: int = 0
    fp: int = 0
    expected: int = 0
    errors: list = field(default_factory=list)
    misses: list = field(default_factory=list)
    alarms: list = field(default_factory=list)


def score(name, diagnosis, lab: Label, tallies):
    fired = defaultdict(list)
    for f in diagnosis.findings:
        fired[f.name].append(f)
    for det, onset in lab.expected.items():
        t = tallies[det]
        t.expected += 1
        if fired.get(det):
            t.tp += 1
            if onset is not None:
                first = min(f.first_step for f in fired[det] if f.first_step is not None)
                t.errors.append(abs(first - onset))
        else:
            t.fn += 1
            t.misses.append(name)
    for det, found in fired.items():
        if det in lab.expected or det in lab.allowed:
            continue
        alarms = [f for f in found if f.severity.rank >= Severity.WARNING.rank]
        if alarms:
            tallies[det].fp += 1
            tallies[det].alarms.append(f"{name}: {alarms[0].severity.value} {alarms[0].message[:140]}")


# The sample runs' steps_per_s / tokens_per_s are wall-clock on whatever machine generated them (often busy):
# a slowdown there is real in the data but says nothing about the scenario, except where the scenario makes one.
WALL_CLOCK = frozenset({"throughput-drop"})


def labelled_dirs():
    for base, labels, group in ((SAMPLE_RUNS, SAMPLE_LABELS, "sample"), (FIXTURES, FIXTURE_LABELS, "fixture"),
                                (PATHOLOGIES, PATHOLOGY_LABELS, "pathology"), (REAL_RUNS, REAL_LABELS, "real")):
        for case, lab in labels.items():
            path = base / case
            if group == "sample":
                lab = Label(lab.expected, lab.allowed | WALL_CLOCK)
            if path.is_dir():
                yield f"{group}/{case}", path, lab


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="list every miss and false alarm")
    parser.add_argument("--no-synthetic", action="store_true", help="only the sample, fixture and real runs")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    recorded: dict[str, Tally] = defaultdict(Tally)  # sample runs, fixtures and real logs
    generated: dict[str, Tally] = defaultdict(Tally)  # synthetic variations
    counts = defaultdict(int)
    unreadable = []
    for name, path, lab in labelled_dirs():
        try:
            run = read_run(path)
        except InputError as exc:
            unreadable.append(f"{name}: {exc}")
            continue
        score(name, diagnose_run(run), lab, recorded)
        counts[name.split("/")[0]] += 1
    if not args.no_synthetic:
        for name, run, lab in synthetic_cases():
            score(f"synthetic/{name}", diagnose_run(run), lab, generated)
            counts["synthetic"] += 1
    elapsed = time.perf_counter() - start

    print(f"runs: {dict(counts)}; {elapsed:.0f} s")
    combined = defaultdict(Tally)
    for source in (recorded, generated):
        for det, t in source.items():
            c = combined[det]
            c.tp, c.fn, c.fp, c.expected = c.tp + t.tp, c.fn + t.fn, c.fp + t.fp, c.expected + t.expected
            c.errors += t.errors
            c.misses += t.misses
            c.alarms += t.alarms
    tables = [("recorded runs (sample runs, framework fixtures, real logs)", recorded)]
    if not args.no_synthetic:
        tables.append(("all runs (recorded + synthetic variations)", combined))
    for title, tallies in tables:
        print(f"\n{title}")
        print(f"{'detector':28s} {'expected':>8s} {'TP':>4s} {'FN':>4s} {'FP':>4s} {'precision':>9s} {'recall':>7s} "
              f"{'onset err median/max (steps)':>30s}")
        for det in sorted({d.name for d in DETECTORS.values()} | set(tallies)):
            t = tallies.get(det, Tally())
            precision = t.tp / (t.tp + t.fp) if t.tp + t.fp else float("nan")
            recall = t.tp / t.expected if t.expected else float("nan")
            onset = (f"{np.median(t.errors):.0f} / {max(t.errors):.0f}" if t.errors else "-")
            print(f"{det:28s} {t.expected:8d} {t.tp:4d} {t.fn:4d} {t.fp:4d} {_pct(precision):>9s} {_pct(recall):>7s} "
                  f"{onset:>30s}")
    if args.verbose:
        for det in sorted(combined):
            t = combined[det]
            for miss in t.misses:
                print(f"MISS  {det}: {miss}")
            for alarm in t.alarms:
                print(f"FALSE {det}: {alarm}")
        for line in unreadable:
            print(f"UNREADABLE {line}")
    return 0


def _pct(value):
    return "-" if not math.isfinite(value) else f"{value:.0%}"


if __name__ == "__main__":
    sys.exit(main())
