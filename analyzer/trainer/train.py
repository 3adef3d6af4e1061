"""The training loop: one readable function that writes a run directory exactly as DESIGN.md describes."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import deque
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from analyzer.trainer.config import TrainConfig, config_to_dict
from analyzer.trainer.data import EVAL_STREAM, batch_rng, corrupt, make_language, mlm_inputs
from analyzer.trainer.model import BigramTeacher, Transformer

WRITER = "postmortem reference trainer"  # run.json's "writer": how reproduce-run knows a run dir is ours
OUTPUTS = ("config.json", "metrics.jsonl", "train.log", "run.json", "checkpoints")
NAN_WARNING = "[Warning] {name} produced non-finite value ({value}); clamping to zero."  # seed 002's line


# ----------------------------------------------------------------------------- schedules


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then constant, linear or cosine decay to min_lr at max_steps."""
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * cfg.max_steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - warmup) / max(1, cfg.max_steps - warmup))
    if cfg.lr_schedule == "linear":
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1.0 - progress)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def temperature_at(cfg: TrainConfig, step: int) -> float:
    """KD temperature annealed linearly from temperature to min_temperature."""
    horizon = cfg.temperature_anneal_steps or cfg.max_steps
    progress = min(1.0, step / max(1, horizon))
    return cfg.temperature + (cfg.min_temperature - cfg.temperature) * progress


# ----------------------------------------------------------------------------- losses


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Cross-entropy over labelled positions (-100 = unlabelled)."""
    if cfg.lm_loss_softmax == "stable":  # what F.cross_entropy (and autocast, which runs it in fp32) does
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
    # "naive": a hand-written softmax in the logits' own dtype without subtracting the max. In float16, exp()
    # overflows to inf once a logit passes ln(65504) = 11.09, and inf / inf is NaN: seed 002's NaN path.
    z = logits.half() if cfg.precision == "fp16" else logits
    e = z.exp()
    p = e / e.sum(dim=-1, keepdim=True)
    picked = p.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1).float()
    return -picked.log()[targets != -100].mean()


def compute_loss(cfg: TrainConfig, model, teacher, x: np.ndarray, rng: np.random.Generator, temperature: float,
                 warn) -> dict[str, Any]:
    """The loss to optimise and the parts we log, for one micro-batch."""
    out: dict[str, Any] = {}
    if cfg.model == "mlm":
        inputs, labels = mlm_inputs(x, rng, cfg.vocab_size, cfg.mlm_probability, cfg.mean_span_length,
                                    cfg.label_all_tokens)
        logits = model(inputs)
        labelled = labels != -100
        out["mask_ratio"] = labelled.float().mean().item()
        if cfg.mlm_loss_reduction == "mean":
            loss = lm_loss(logits, labels, cfg)
        else:  # a fixed normaliser: the loss (and its gradient) grows with the number of labelled tokens
            expected = labels.shape[0] * int(cfg.mlm_probability * labels.shape[1])
            loss = lm_loss(logits, labels, cfg) * labelled.sum() / expected
        out["lm_raw"] = loss
        out["loss"] = _clamp(loss, "loss", cfg, warn)
        return out
    idx, targets = torch.from_numpy(x[:, :-1]), torch.from_numpy(x[:, 1:])
    logits = model(idx)
    lm = lm_loss(logits, targets, cfg)
    if cfg.model == "gpt":
        out["lm_raw"] = lm
        out["loss"] = _clamp(lm, "loss", cfg, warn)
        return out
    # knowledge distillation: alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * LM loss
    with torch.no_grad():
        t_logits = teacher(idx)
    log_p_student = F.log_softmax(logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(t_logits / temperature, dim=-1)
    kd_raw = F.kl_div(log_p_student.flatten(0, 1), log_p_teacher.flatten(0, 1), log_target=True,
                      reduction="batchmean")
    kd_loss = kd_raw * temperature**2
    out["lm_raw"] = lm
    lm = _clamp(lm, "lm_loss", cfg, warn)
    out.update(kd_raw=kd_raw.detach(), kd_loss=kd_loss.detach(), lm_loss=lm.detach())
    out["loss"] = cfg.alpha * kd_loss + (1.0 - cfg.alpha) * lm
    return out


def _clamp(loss: torch.Tensor, name: str, cfg: TrainConfig, warn) -> torch.Tensor:
    """nan_policy "clamp": a non-finite loss becomes a constant 0 (no gradient), with seed 002's warning line."""
    if cfg.nan_policy != "clamp" or torch.isfinite(loss):
        return loss
    warn(NAN_WARNING.format(name=name, value=f"{loss.item()}"))
    return torch.zeros((), dtype=loss.dtype)


def perplexity(loss: float, cap: float) -> float:
    return math.exp(min(loss, cap)) if cap > 0 else (math.exp(loss) if loss < 700 else math.inf)


# ----------------------------------------------------------------------------- output


class RunWriter:
    """Rank 0 writes config.json, train.log, run.json and checkpoints; every rank writes its own metrics file."""

    def __init__(self, out_dir: Path, rank: int, quiet: bool):
        self.out_dir, self.rank, self.quiet = out_dir, rank, quiet
        name = "metrics.jsonl" if rank == 0 else f"metrics.rank{rank}.jsonl"
        self.metrics = open(out_dir / name, "w")
        self.log_file = open(out_dir / "train.log", "w") if rank == 0 else None

    def log(self, line: str) -> None:
        if self.log_file is not None:
            self.log_file.write(line + "\n")
            self.log_file.flush()
            if not self.quiet:
                print(line, flush=True)  # the trainer's own log echo, like nanoGPT's

    def event(self, record: dict[str, Any]) -> None:
        if self.rank > 0:
            record = {"rank": self.rank, **record}
        self.metrics.write(json.dumps(record) + "\n")  # NaN/Infinity as bare tokens, as Python's json writes them

    def close(self) -> None:
        self.metrics.close()
        if self.log_file is not None:
            self.log_file.close()


def prepare_out_dir(out_dir: Path) -> None:
    """Create the run dir; replace the trainer's own outputs from an earlier run, leave anything else (a README)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for path in out_dir.glob("metrics.rank*.jsonl"):
        path.unlink()


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform()}


def fmt(key: str, value: float) -> str:
    if key == "lr":
        return f"{value:.2e}"
    if key in ("loss_scale", "step"):
        return f"{value:g}"
    if key in ("steps_per_s", "tokens_per_s"):
        return f"{value:.1f}"
    return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 or not math.isfinite(value) else f"{value:.3e}"


# ----------------------------------------------------------------------------- entry points


def train(config: TrainConfig, out_dir: Path, nproc: int = 1, stop_step: int | None = None,
          quiet: bool = False, command: str | None = None) -> Path:
    """Train `config` into `out_dir` on `nproc` processes (gloo + DistributedDataParallel when > 1).

    stop_step ends the run early without changing its schedule, so its first steps match a full run's.
    """
    out_dir = Path(out_dir)
    config = dataclasses.replace(config, world_size=nproc)
    command = command or " ".join([Path(sys.executable).name, *sys.argv])
    prepare_out_dir(out_dir)
    if nproc <= 1:
        _run(config, out_dir, 0, stop_step, quiet, command)
        return out_dir
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{Path(tmp) / 'rendezvous'}"
        mp.spawn(_worker, args=(config, out_dir, init, stop_step, quiet, command), nprocs=nproc, join=True)
    return out_dir


def _worker(rank: int, config: TrainConfig, out_dir: Path, init: str, stop_step, quiet, command) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=config.world_size)
    try:
        _run(config, out_dir, rank, stop_step, quiet, command)
        # every rank is done with its collectives before any tears gloo down: a rank that destroys the group while
        # another still talks to it aborts ("terminate called without an active exception", ~1 run in 10)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _run(cfg: TrainConfig, out_dir: Path, rank: int, stop_step: int | None, quiet: bool, command: str) -> None:
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    writer = RunWriter(out_dir, rank, quiet)
    state = {"status": "crashed", "steps": 0, "error": None}
    try:
        _loop(cfg, out_dir, rank, stop_step, writer, state)
    except BaseException as exc:
        state["error"] = f"{type(exc).__name__}: {exc}"
        writer.log(f"[Error] training crashed: {state['error']}")
        raise
    finally:
        torch.autograd.set_detect_anomaly(False)  # never leak the spike debugger into the next run in this process
        writer.close()
        if rank == 0:
            run = {"writer": WRITER, "status": state["status"], "scenario": cfg.scenario, "seed": cfg.seed,
                   "command": command, "versions": versions(), "world_size": cfg.world_size,
                   "steps_completed": state["steps"], "stop_step": stop_step, "error": state["error"],
                   "started_at": started.isoformat(timespec="seconds"),
                   "wall_time_s": round(time.perf_counter() - t0, 3)}
            (out_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n")


def _loop(cfg: TrainConfig, out_dir: Path, rank: int, stop_step: int | None, writer: RunWriter,
          state: dict[str, Any]) -> None:
    import torch.distributed as dist

    distributed = cfg.world_size > 1
    torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    if rank == 0:
        (out_dir / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2) + "\n")
    log, event = writer.log, writer.event

    lang = make_language(cfg.vocab_size, cfg.language_factors, cfg.branching, cfg.dirichlet_alpha, cfg.data_seed)
    model = Transformer(cfg)
    teacher = None
    if cfg.model == "kd":
        teacher = BigramTeacher(torch.from_numpy(lang.transition_matrix()), cfg.teacher_floor)
    train_model = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    else:
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)

    fp16 = cfg.precision == "fp16"
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if cfg.precision == "bf16" else nullcontext
    loss_scale, good_steps = (cfg.init_loss_scale if fp16 else 1.0), 0
    stop = cfg.max_steps if stop_step is None else min(stop_step, cfg.max_steps)
    n_params = sum(p.numel() for p in params)
    length = cfg.block_size + (0 if cfg.model == "mlm" else 1)
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum * cfg.world_size

    log(f"scenario {cfg.scenario}: {cfg.model} model, {n_params:,} parameters, vocab {cfg.vocab_size} "
        f"(ln V = {math.log(cfg.vocab_size):.4f})")
    if cfg.comment:
        log(f"note: {cfg.comment}")
    kind = (f"{cfg.language_factors} independent Markov chains over base-{lang.base} digits, {cfg.branching} "
            f"successors per digit" if cfg.language_factors > 1 else f"Markov chain, {cfg.branching} successors per token")
    log(f"language: {kind}, entropy rate "
        f"{lang.entropy_rate():.4f} nats/token (the best causal LM loss)")
    log(f"batch {cfg.batch_size} x accum {cfg.grad_accum} x world {cfg.world_size} = effective "
        f"{cfg.effective_batch} sequences of {cfg.block_size} tokens; {cfg.optimizer} lr {cfg.lr:g} "
        f"{cfg.lr_schedule}; precision {cfg.precision}; max_steps {cfg.max_steps}")

    def evaluate(step: int, temperature: float) -> None:
        model.eval()
        losses = []
        with torch.no_grad(), autocast():
            for i in range(cfg.eval_iters):
                rng = batch_rng(cfg.seed, EVAL_STREAM, i, 0)
                x = lang.sample(rng, cfg.eval_batch_size or cfg.batch_size, length)
                out = compute_loss(cfg, model, teacher, x, rng, temperature, lambda _line: None)
                losses.append(out["loss"].item())
        model.train()
        eval_loss = float(np.mean(losses))
        eval_ppl = perplexity(eval_loss, cfg.ppl_cap)
        log(f"[Eval] step {step} loss: {eval_loss:.4f}, ppl: {eval_ppl:.2f}")
        if cfg.ppl_cap > 0 and eval_loss > cfg.ppl_cap:
            log(f"[Warning] Loss {eval_loss:.2f} too high for meaningful perplexity (capped at {cfg.ppl_cap:g})")
        event({"step": step, "split": "eval", "eval_loss": eval_loss, "eval_ppl": eval_ppl})

    def save_checkpoint(step: int) -> None:
        (out_dir / "checkpoints").mkdir(exist_ok=True)
        ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": {"lr_schedule": cfg.lr_schedule, "step": step, "last_lr": lr_at(cfg, max(0, step - 1))},
                "scaler": {"enabled": fp16, "scale": loss_scale, "good_steps": good_steps},
                "step": step, "config": config_to_dict(cfg)}
        torch.save(ckpt, out_dir / "checkpoints" / f"step_{step:06d}.pt")

    if rank == 0 and cfg.save_initial_checkpoint:
        save_checkpoint(0)

    recent: deque[float] = deque(maxlen=20)
    anomaly_on = False
    last_log_time, last_log_step = time.perf_counter(), 0
    step = 0
    for step in range(stop):
        lr = lr_at(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        temperature = temperature_at(cfg, step)
        if rank == 0 and step % cfg.eval_interval == 0:
            evaluate(step, temperature)

        # forward/backward over grad_accum micro-batches; each micro loss is scaled by 1/grad_accum
        parts: dict[str, list[float]] = {}
        nonfinite = False
        for micro in range(cfg.grad_accum):
            rng = batch_rng(cfg.seed, rank, step, micro)
            x = lang.sample(rng, cfg.batch_size, length)
            if cfg.fault_steps and cfg.fault_steps[0] <= step < cfg.fault_steps[1]:
                x = corrupt(x, rng, cfg.vocab_size, cfg.fault_sequences, cfg.fault_kind)
            sync = nullcontext() if not distributed or micro == cfg.grad_accum - 1 else train_model.no_sync()
            with sync:
                with autocast():
                    out = compute_loss(cfg, train_model, teacher, x, rng, temperature, log)
                loss = out["loss"]
                if not torch.isfinite(loss):
                    nonfinite = True
                if loss.requires_grad and torch.isfinite(loss):
                    (loss * loss_scale / cfg.grad_accum).backward()
            for key in ("loss", "lm_loss", "kd_raw", "kd_loss", "mask_ratio"):
                if key in out:
                    parts.setdefault(key, []).append(float(torch.as_tensor(out[key]).detach()))
            parts.setdefault("lm_raw", []).append(float(out["lm_raw"].detach()))
        if distributed:  # every rank must take the same decision about a non-finite loss
            flag = torch.tensor(float(nonfinite))
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            nonfinite = bool(flag.item())
        record: dict[str, Any] = {"step": step, "split": "train"}
        record.update({k: float(np.mean(v)) for k, v in parts.items() if k != "lm_raw"})
        if cfg.model == "kd":
            record["temperature"] = temperature

        if nonfinite and cfg.nan_policy == "stop":
            log(f"[Error] step {step}: non-finite loss ({record['loss']}); stopping (nan_policy=stop)")
            event(record)
            state["status"], state["steps"] = "diverged", step
            return

        grads_finite = all(p.grad is None or torch.isfinite(p.grad).all() for p in params)
        skipped = nonfinite or not grads_finite
        if fp16 and not grads_finite:
            log(f"[fp16] overflow: skipping step, loss scale {loss_scale:g} -> {loss_scale / 2:g}")
            loss_scale, good_steps = loss_scale / 2, 0
        elif skipped:
            log(f"[Warning] step {step}: non-finite {'loss' if nonfinite else 'gradients'}; skipping the step")
        else:
            for p in params:
                if p.grad is not None and loss_scale != 1.0:
                    p.grad.div_(loss_scale)
            max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
            record["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            logging_now = step % cfg.log_interval == 0 or step == stop - 1
            before = [p.detach().clone() for p in params] if logging_now else None
            optimizer.step()
            if before is not None:
                with torch.no_grad():
                    delta = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(params, before)))
                    old = torch.sqrt(sum((b**2).sum() for b in before))
                record["update_ratio"] = float(delta / old)
            if fp16:
                good_steps += 1
                if good_steps % cfg.loss_scale_window == 0:
                    loss_scale *= 2
        optimizer.zero_grad(set_to_none=True)

        record["lr"] = lr
        ppl_source = record.get("lm_loss", record["loss"])
        record["ppl"] = perplexity(ppl_source, cfg.ppl_cap) if math.isfinite(ppl_source) else ppl_source
        if fp16:
            record["loss_scale"] = loss_scale
        state["steps"] = step + 1

        # a spike switches on anomaly detection, as a user chasing it would; it stays on and slows every step
        if cfg.detect_anomaly_on_spike and not anomaly_on and len(recent) == recent.maxlen:
            baseline = float(np.mean(recent))
            if record["loss"] > cfg.spike_factor * baseline:
                anomaly_on = True
                torch.autograd.set_detect_anomaly(True)
                log(f"[Debug] step {step}: loss spike {record['loss']:.4f} > {cfg.spike_factor:g} x recent mean "
                    f"{baseline:.4f}; enabling torch.autograd anomaly detection to trace it")
        if math.isfinite(record["loss"]):
            recent.append(record["loss"])

        if step % cfg.log_interval == 0 or step == stop - 1:
            with torch.no_grad():
                record["param_norm"] = float(torch.sqrt(sum((p.detach() ** 2).sum() for p in params)))
            now = time.perf_counter()
            steps_per_s = (step + 1 - last_log_step) / max(now - last_log_time, 1e-9)
            record["steps_per_s"] = steps_per_s
            record["tokens_per_s"] = steps_per_s * tokens_per_step
            last_log_time, last_log_step = now, step + 1
            event(record)
            keys = [k for k in ("loss", "lm_loss", "kd_raw", "kd_loss", "temperature", "mask_ratio", "lr",
                                "grad_norm", "loss_scale", "update_ratio", "steps_per_s") if k in record]
            log(f"step {step} | " + " | ".join(f"{k} {fmt(k, record[k])}" for k in keys))
        if rank == 0 and cfg.checkpoint_interval and (step + 1) % cfg.checkpoint_interval == 0 \
                and step + 1 < cfg.max_steps:
            save_checkpoint(step + 1)

    if stop == cfg.max_steps:
        if rank == 0:
            evaluate(cfg.max_steps, temperature_at(cfg, cfg.max_steps))
            save_checkpoint(cfg.max_steps)
        state["status"] = "completed"
    else:
        state["status"] = "completed"
        log(f"stopped after {stop} of {cfg.max_steps} steps (stop_step)")
