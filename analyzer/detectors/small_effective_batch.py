"""Small effective batch: batch_size x grad_accum x world_size too small for stable gradients.

What it detects:
    An optimizer step that averages the gradient over few sequences (or tokens, when block_size is known): seed 001
    (24 x 3 = 72 sequences), seed 003 (batch 8 of 256 tokens), seed 004 (micro-batch 1 x accum 16), seed 000
    (micro-batch 4 x accum 24). It also measures how noisy the loss actually is from step to step.
Why it matters:
    Gradient noise shrinks with the square root of the batch: a small batch gives noisy steps, which limits the
    usable lr, slows convergence and makes spikes more likely. A micro-batch of 1-4 with heavy accumulation also
    wastes the accelerator (many small kernels) for the same effective batch.
How it decides:
    The effective batch comes from the hparams: batch_size x grad_accum x world_size (or global_batch_size). It is
    small when it has fewer than `min_tokens` tokens (block_size known) or, without block_size, fewer than
    `min_sequences` sequences. The loss noise is the robust std of successive log-loss differences (a relative
    per-point noise); on a window-averaged log (HF Trainer) it is scaled up by sqrt(logging interval) to a per-step
    noise; a loss whose last quarter's median is `RISING` (1.5) times its first quarter's or more is climbing, and
    its movement is that instability, not batch noise (no noise is judged then). Severity: info for a small batch;
    warning when the measured per-step noise is at least `noisy` (relative) and the run records grad_accum
    (otherwise the true batch may be larger). A micro-batch at most `tiny_micro_batch` with grad_accum of 4 or more
    gives an info finding even when the effective batch is large enough.
What it recommends:
    A larger effective batch, by a factor from the measured noise ((noise / `target_noise`)^2, since noise falls as
    1/sqrt(batch)), none for a climbing loss; for a loss quiet between spikes (a few bad sequences weigh 1/batch of
    a step, seed 003) or with no loss logged, x4 (seeds 001 and 003: x3.6 and x4); nothing when the loss is quiet
    and never spikes (no evidence that the batch is too small) or the factor rounds back to the batch the run has.
    Rounded to a power of two: `batch_size` raised to the next power of two (x4 for micro-batches under 16, up to
    32) and `grad_accum` making up the rest. When only the micro-batch is small, the same effective batch with
    fewer, larger micro-batches (seed 004: 1 x 16 -> 4 x 4).
Parameters:
    min_tokens (default 65536): fewest tokens per optimizer step that count as a stable batch.
    min_sequences (default 64): fewest sequences per step when block_size is unknown.
    noisy (default 0.05): per-step relative loss noise from which the batch is called out as a warning.
    target_noise (default 0.02): per-step relative loss noise the recommended batch aims at.
    tiny_micro_batch (default 2): a micro-batch this small with heavy accumulation is worth changing.
"""

from __future__ import annotations

import math

import numpy as np

from analyzer.detectors import stats
from analyzer.detectors.base import Detector, evidence_at
from analyzer.detectors.loss_spike import DETECTOR as SPIKE, find_spikes
from analyzer.findings import Confidence, Recommendation, Severity, Skipped

MIN_TOKENS = 65536  # BERT/GPT-2 pretraining used ~131k-524k tokens per step; fine-tunes rarely go below ~16k
MIN_SEQUENCES = 64
NOISY = 0.05
TARGET_NOISE = 0.02
TINY_MICRO_BATCH = 2
DEFAULT_FACTOR = 4  # seeds 001 (72 -> 256) and 003 (8 -> 32)
MAX_FACTOR = 16
SMALL_MICRO = 16  # micro-batches below this are raised x4 first
MAX_MICRO = 32  # the largest micro-batch we suggest without knowing the memory
HEAVY_ACCUM = 4
RISING = 1.5  # a loss whose last quarter sits 50% above its first is diverging: healthy runs end below their start
QUARTERS = 4
MIN_QUARTER_POINTS = 3


def check(run, params):
    batch = stats.effective_batch(run)
    if batch is None:
        return Skipped(DETECTOR.name, "the run's config gives no batch size")
    small = (batch.tokens < params["min_tokens"]) if batch.tokens else (batch.sequences < params["min_sequences"])
    tiny_micro = (batch.batch_size is not None and batch.batch_size <= params["tiny_micro_batch"]
                  and batch.grad_accum >= HEAVY_ACCUM)
    if not small and not tiny_micro:
        return []
    noise, metric, loss = _noise(run)
    metrics = {"effective_batch": batch.sequences, "tokens_per_step": batch.tokens, "batch_size": batch.batch_size,
               "grad_accum": batch.grad_accum, "world_size": batch.world_size}
    if noise is not None:
        metrics["loss_noise"] = noise
    rose = _rise(loss)
    if noise is not None and rose is not None:
        # a loss that climbed over the run moves from point to point because it is unstable, not because of the
        # batch's sampling noise: that movement is no evidence for a larger batch (lightning_nan: 10.4 -> 65.8
        # before it overflowed, "63% per point")
        metrics["loss_rise"] = rose
        noise = None
    noisy = noise is not None and noise >= params["noisy"]
    # a warning needs the whole product: with grad_accum unrecorded the true batch may be many times larger
    severity = Severity.WARNING if small and noisy and batch.grad_accum_known else Severity.INFO
    if small:
        limit = (f"{params['min_tokens']} tokens" if batch.tokens else f"{params['min_sequences']} sequences")
        message = f"the effective batch is {batch.describe()} per optimizer step, under {limit}"
        spikes = _spikes(loss) if noise is not None and noise <= params["target_noise"] else []
        if rose is not None:
            factor = 1.0
            basis = ""
            message += (f"; the loss rose {stats.fmt_ratio(rose)} over the run, so its point-to-point movement is an "
                        "instability, not the batch's noise: no evidence for a larger batch")
        elif noise is None:
            factor = DEFAULT_FACTOR  # no loss to measure: the seeds' change, said to rest on them
            basis = "no loss is logged to measure its noise; x4 is the usual first step"
        elif noise > params["target_noise"]:
            factor = (noise / params["target_noise"]) ** 2
            basis = (f"measured per-step loss noise {_pct(noise)} falls as 1/sqrt(batch): x{factor:.1f} reaches "
                     f"~{params['target_noise']:.0%}")
            message += f"; the loss moves {_pct(noise)} from point to point"
        elif spikes:
            # quiet between spikes, but a few bad sequences weigh 1/batch of a step (seed 003: 2 of 8)
            factor = DEFAULT_FACTOR
            first = int(loss.index[spikes[0].start])
            times = "once" if len(spikes) == 1 else f"{len(spikes)} times"
            basis = (f"the loss is quiet ({_pct(noise)} from point to point) but spiked {times} (first at step "
                     f"{first}): a few bad sequences weigh 1/{batch.sequences} of a step; x4 makes each weigh "
                     f"1/{4 * batch.sequences}")
            message += f"; the loss moves {_pct(noise)} from point to point but spiked at step {first}"
        else:
            factor = 1.0  # the gradient noise already is what a larger batch would aim at: no evidence for one
            basis = ""
            message += (f"; the loss moves only {_pct(noise)} from point to point, within the "
                        f"{params['target_noise']:.0%} a larger batch would aim at: no change needed")
        if factor > MAX_FACTOR:
            basis += f"; capped at x{MAX_FACTOR}, the most one change should make"
        factor = float(np.clip(factor, 1, MAX_FACTOR))
        target = max(2 ** round(math.log2(batch.sequences * factor)), batch.sequences) if factor > 1 \
            else batch.sequences
        if factor > 1 and target == batch.sequences:  # the nearest power of two is the batch it has
            message += f", close to the {params['target_noise']:.0%} a larger batch would aim at: no change needed"
        message += "."
        if target == batch.sequences and tiny_micro:  # the size is fine; how it is split is not (seed 004)
            message = message[:-1].replace(": no change needed", ": no larger batch needed") + \
                f"; micro-batch {batch.batch_size} runs many tiny forward/backward passes per optimizer step."
            basis = "the same effective batch with fewer, larger micro-batches"
    else:
        factor, target = 1.0, batch.sequences
        basis = "the same effective batch with fewer, larger micro-batches"
        message = (f"micro-batch {batch.batch_size} with {batch.grad_accum} accumulation steps ({batch.describe()}) "
                   "runs many tiny forward/backward passes for each optimizer step.")
    recs = []
    if target != batch.sequences or tiny_micro:
        metrics["suggested_effective_batch"] = target
        recs = _split(batch, target, basis)
    evidence = ()
    if loss is not None and len(loss) >= 3:
        evidence = evidence_at(run, metric, [int(s) for s in loss.index[:3]])
    confidence = Confidence.HIGH if noise is not None else Confidence.MEDIUM
    return [DETECTOR.finding(message, int(loss.index[0]) if loss is not None and len(loss) else run.first_step,
                             int(loss.index[-1]) if loss is not None and len(loss) else run.last_step,
                             severity=severity, confidence=confidence, metrics=metrics, recommendations=recs,
                             evidence=evidence)]


def _pct(share: float) -> str:
    """A relative noise as a percentage that never reads 0.0% for a small but measured one."""
    return f"{share:.1%}" if share >= 0.001 else f"{share * 100:.2g}%"


def _spikes(loss):
    """The loss's spikes as loss-spike finds them (its default parameters)."""
    if loss is None or len(loss) < SPIKE.params["min_points"]:
        return []
    return find_spikes(loss, SPIKE.params)


def _rise(loss) -> float | None:
    """How many times its first quarter's median the loss's last quarter's median is, when at least RISING."""
    if loss is None:
        return None
    values = loss.to_numpy(dtype="float64")
    values = values[np.isfinite(values)]
    quarter = len(values) // QUARTERS
    if quarter < MIN_QUARTER_POINTS:
        return None
    first, last = float(np.median(values[:quarter])), float(np.median(values[-quarter:]))
    if first <= 0 or last < RISING * first:
        return None
    return last / first


def _noise(run):
    """(per-step relative loss noise or None, metric, loss series)."""
    found = stats.train_loss(run)
    if found is None:
        return None, None, None
    metric, loss = found
    noise = stats.loss_noise_cv(loss)
    if not math.isfinite(noise):
        return None, metric, loss
    if stats.window_averaged(run):
        noise *= math.sqrt(max(stats.log_interval(loss), 1.0))
    return noise, metric, loss


def _split(batch: stats.EffectiveBatch, target: int, basis: str) -> list[Recommendation]:
    """batch_size / grad_accum values that reach `target` sequences per optimizer step."""
    world = batch.world_size
    if batch.batch_size is None:
        return [Recommendation("global_batch_size", batch.sequences, target, basis)]
    micro = 2 ** math.ceil(math.log2(batch.batch_size))
    if micro < SMALL_MICRO:
        micro = min(micro * 4, MAX_MICRO)
    micro = max(1, min(micro, target // world))
    accum = max(1, round(target / (micro * world)))
    reached = micro * accum * world
    recs = []
    why = f"{batch.describe()} -> {micro} x {accum}" + (f" x {world}" if world > 1 else "") + \
          f" = {stats.plural(reached, 'sequence')}; {basis}"
    if micro != batch.batch_size:
        recs.append(Recommendation("batch_size", batch.batch_size, micro, why))
    if accum != batch.grad_accum or not batch.grad_accum_known:
        recs.append(Recommendation("grad_accum", batch.grad_accum if batch.grad_accum_known else None, accum,
                                   why + ("" if batch.grad_accum_known else
                                          " (the current grad_accum is not recorded in the run)")))
    return recs


DETECTOR = Detector(
    code="O003", name="small-effective-batch", severity=Severity.INFO,
    summary="batch_size x grad_accum x world_size too small for stable gradients",
    doc=__doc__,
    params={"min_tokens": MIN_TOKENS, "min_sequences": MIN_SEQUENCES, "noisy": NOISY, "target_noise": TARGET_NOISE,
            "tiny_micro_batch": TINY_MICRO_BATCH},
    check=check,
)
