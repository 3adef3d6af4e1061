"""TrainConfig: every hyperparameter of the reference trainer, one comment per default, and scenario loading."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

SCENARIO_DIR = Path(__file__).parent / "scenarios"


@dataclass(frozen=True)
class TrainConfig:
    # run identity
    scenario: str = "default"  # the scenario file this config came from (written into config.json)
    comment: str = ""  # why a scenario's values differ from its seed's, when they do
    seed: int = 1337  # seeds torch (init, dropout) and every data batch
    data_seed: int = 1234  # seeds the generated language itself, so two runs can share a language
    num_threads: int = 1  # torch CPU threads; fixed because results are bit-identical only for a fixed count
    # model
    model: str = "gpt"  # "gpt" (decoder-only LM) | "mlm" (encoder masked LM) | "kd" (GPT student + frozen teacher)
    vocab_size: int = 256  # tokens in the generated language (the MLM adds one [MASK] id on top)
    block_size: int = 64  # sequence length
    n_layer: int = 2  # transformer blocks
    n_head: int = 2  # attention heads
    n_embd: int = 32  # width; kept tiny so a run takes seconds on 2 CPU cores
    dropout: float = 0.0  # off: the runs are short and dropout noise hides what the scenario shows
    layer_norm_eps: float = 1e-5  # LayerNorm epsilon (seed 000 lowered it to 1e-6)
    init_std: float = 0.02  # normal init std of linear and embedding weights (GPT-2's value)
    tie_embeddings: bool = False  # output head reuses the input embedding matrix (as GPT-2 and BERT do)
    n_factorized_embeddings: int = 0  # >1: the input embedding is the sum of K tables over the K digits of the id
    scale_factorized_init: bool = False  # init each of the K tables with init_std / sqrt(K) so their sum has init_std
    # masked LM
    mlm_probability: float = 0.15  # share of tokens selected for prediction (floor(p * block_size) per sequence)
    mean_span_length: float = 3.0  # span masking: span lengths are geometric with this mean
    label_all_tokens: bool = False  # labels = input_ids.clone(): every token labelled (the mistake in seed 000)
    mlm_loss_reduction: str = "mean"  # "mean" over labelled tokens | "fixed": sum / (batch * floor(p * block))
    # knowledge distillation
    temperature: float = 2.0  # KD softmax temperature at step 0; the KD loss is multiplied by temperature^2
    min_temperature: float = 2.0  # temperature annealed linearly down to this
    temperature_anneal_steps: int = 0  # steps over which temperature anneals; 0 = max_steps
    alpha: float = 0.7  # weight of the KD loss; (1 - alpha) weighs the LM loss
    teacher_floor: float = 1e-4  # the frozen teacher's logits are log(P_true + floor): its confidence
    lm_loss_softmax: str = "stable"  # "stable" (max-subtracted log-softmax) | "naive" (exp/sum in the logits dtype)
    # data
    branching: int = 4  # successors per token in the Markov chain: the language's difficulty
    dirichlet_alpha: float = 0.5  # concentration of each token's successor probabilities
    language_factors: int = 0  # >1: a factorized code, vocab_size = base^K, each digit its own Markov chain
    fault_steps: tuple[int, ...] = ()  # [start, end): steps whose batches carry corrupted sequences
    fault_sequences: int = 0  # corrupted sequences per micro-batch of a faulty step, whatever its size; 0 = all
    fault_kind: str = "uniform"  # corrupted sequences: "uniform" random tokens | "repeat" one token over and over
    # optimizer and schedule
    optimizer: str = "adamw"  # "adamw" | "sgd"
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 0.0  # floor of the linear / cosine decay
    lr_schedule: str = "cosine"  # "constant" | "linear" | "cosine", each after warmup
    warmup_steps: int = 0  # linear warmup steps
    warmup_ratio: float = 0.0  # warmup as a proportion of max_steps; used when warmup_steps is 0
    weight_decay: float = 0.0  # decoupled (AdamW) or L2 (SGD) decay of 2-D weights
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    momentum: float = 0.9  # SGD momentum
    max_grad_norm: float = 1.0  # clip the global gradient norm at this value; 0 = no clipping
    batch_size: int = 16  # micro-batch per process
    grad_accum: int = 1  # micro-batches accumulated per optimizer step
    world_size: int = 1  # processes (set from --nproc); effective batch = batch_size * grad_accum * world_size
    # precision and failure handling
    precision: str = "fp32"  # "fp32" | "bf16" (CPU autocast) | "fp16" (emulated: linear outputs cast to float16)
    init_loss_scale: float = 65536.0  # fp16 dynamic loss scale at step 0 (torch.cuda.amp's default)
    loss_scale_window: int = 2000  # fp16: double the scale after this many steps without overflow
    nan_policy: str = "stop"  # non-finite loss: "stop" the run | "skip" the step | "clamp" lm_loss to 0 and warn
    ppl_cap: float = 0.0  # perplexity is printed and logged as exp(min(loss, cap)); 0 = no cap
    detect_anomaly_on_spike: bool = False  # turn on autograd anomaly detection after a loss spike (and leave it on)
    spike_factor: float = 1.5  # a spike: loss above this many times the mean of the last 20 steps
    # run length and logging
    max_steps: int = 200  # optimizer steps
    log_interval: int = 1  # log train metrics every N steps
    eval_interval: int = 50  # evaluate every N steps (and at the last step)
    eval_iters: int = 4  # batches per evaluation
    eval_batch_size: int = 0  # sequences per evaluation batch; 0 = batch_size (set it to compare batch sizes)
    checkpoint_interval: int = 0  # save a checkpoint every N steps; 0 = only at the end
    save_initial_checkpoint: bool = False  # also save the weights before the first step, so the init can be checked

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size


FIELD_TYPES: dict[str, type] = {f.name: type(f.default) for f in fields(TrainConfig)}
TIMING_KEYS = ("steps_per_s", "tokens_per_s")  # wall-clock metrics: never identical between two runs

CHOICES = {
    "model": ("gpt", "mlm", "kd"),
    "optimizer": ("adamw", "sgd"),
    "lr_schedule": ("constant", "linear", "cosine"),
    "precision": ("fp32", "bf16", "fp16"),
    "nan_policy": ("stop", "skip", "clamp"),
    "mlm_loss_reduction": ("mean", "fixed"),
    "lm_loss_softmax": ("stable", "naive"),
    "fault_kind": ("uniform", "repeat"),
}


class ConfigError(ValueError):
    """An unknown key or a value of the wrong type in a scenario, config.json or --set."""


def coerce(name: str, value: Any) -> Any:
    """Convert a JSON value or a --set string to the type of TrainConfig.<name>; unknown names are an error."""
    if name not in FIELD_TYPES:
        raise ConfigError(f"unknown config key {name!r}")
    kind = FIELD_TYPES[name]
    try:
        if isinstance(value, str) and kind is not str:
            value = _parse_string(value, kind)
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError
        elif kind is int:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            value = int(float(value))
        elif kind is float:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        elif kind is tuple:
            value = tuple(float(v) if name == "betas" else int(v) for v in value)
        elif kind is str and not isinstance(value, str):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"bad value {value!r} for {name} (expected {kind.__name__})") from None
    if name in CHOICES and value not in CHOICES[name]:
        raise ConfigError(f"bad value {value!r} for {name} (one of {', '.join(CHOICES[name])})")
    return value


def _parse_string(text: str, kind: type) -> Any:
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError
    if kind is tuple:
        text = text.strip()
        return json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
    return text


def validate(config: TrainConfig) -> TrainConfig:
    """Checks that span several fields."""
    k = config.language_factors
    if k > 1 and round(config.vocab_size ** (1.0 / k)) ** k != config.vocab_size:
        raise ConfigError(f"vocab_size {config.vocab_size} is not a power of {k} (language_factors={k})")
    return config


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a TrainConfig from a dict; keys starting with "_" are comments, any other unknown key is an error."""
    return validate(TrainConfig(**{k: coerce(k, v) for k, v in values.items() if not k.startswith("_")}))


def with_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    return validate(dataclasses.replace(config, **{k: coerce(k, v) for k, v in overrides.items()}))


def parse_set_args(items: list[str]) -> dict[str, str]:
    """["lr=1e-4", "precision=fp16"] -> {"lr": "1e-4", ...}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad --set {item!r} (expected key=value)")
        out[key.strip()] = value.strip()
    return out


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def scenario_names() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.json"))


def load_scenario(name: str) -> TrainConfig:
    """A scenario is a small JSON file of overrides in scenarios/, like nanoGPT's config/*.py files."""
    path = SCENARIO_DIR / f"{name}.json"
    if not path.is_file():
        raise ConfigError(f"unknown scenario {name!r} (known: {', '.join(scenario_names())})")
    values = json.loads(path.read_text())
    try:
        return config_from_dict({"scenario": name, **values})
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
