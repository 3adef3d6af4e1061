"""The Run: everything ingest learned about one training run, in one shape whatever format it came from.

Readers hand over `Ingested` pieces; `build_run` merges them into a `Run`:
- `scalars`, a tidy table (step, metric, value, split, rank, source, line, name, segment), every point kept,
  non-finite values included (they are evidence);
- `hparams` under canonical names, each traced to the file and key it came from;
- `checkpoints`, `events` (warnings, overflows, NaN clamps, restarts), `blind_spots`, `notes`.
Detectors read it through `series()` / `hparam()`; pandas stays on this side of the detector boundary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

# --- canonical names -------------------------------------------------------------------------------------------

CANONICAL_METRICS = (
    "loss", "eval_loss", "lr", "grad_norm", "kd_loss", "kd_raw", "temperature", "lm_loss", "ppl", "eval_ppl",
    "steps_per_s", "tokens_per_s", "loss_scale", "mask_ratio", "epoch", "param_norm", "update_ratio", "wall_time",
)
# The training loop's clock: seconds since the epoch of each logged training step, kept by the readers of formats
# that time every point (TensorBoard, MLflow, W&B, tables with a timestamp column). Not a quantity to judge or plot.
CLOCK_METRIC = "wall_time"

# Aliases seen in the wild, after normalisation (lower case, spaces and dashes as "_", split prefix removed).
METRIC_ALIASES: Mapping[str, str] = {
    "loss": "loss", "train_loss": "loss", "training_loss": "loss", "total_loss": "loss", "lm_loss_total": "loss",
    "objective/loss": "loss",
    "learning_rate": "lr", "lr": "lr", "lr_adamw": "lr", "lr_adam": "lr", "lr_sgd": "lr", "lr_group_0": "lr",
    "grad_norm": "grad_norm", "gradient_norm": "grad_norm", "gnorm": "grad_norm", "grad_norm_before_clip": "grad_norm",
    "total_norm": "grad_norm", "norm": "grad_norm",
    "xent": "loss",  # OpenNMT-py's per-token cross-entropy, its training loss
    "kd_loss": "kd_loss", "distill_loss": "kd_loss", "distillation_loss": "kd_loss",
    "kd_raw": "kd_raw", "kd_raw_loss": "kd_raw", "raw_kd": "kd_raw",  # not "kl": TRL/GRPO log a KL to the reference model under it
    "temperature": "temperature", "temp": "temperature", "kd_temperature": "temperature",
    "lm_loss": "lm_loss", "ce_loss": "lm_loss", "mlm_loss": "lm_loss",
    "ppl": "ppl", "perplexity": "ppl",
    "steps_per_s": "steps_per_s", "steps_per_second": "steps_per_s", "it/s": "steps_per_s", "its": "steps_per_s",
    "tokens_per_s": "tokens_per_s", "tokens_per_second": "tokens_per_s", "tok/sec": "tokens_per_s",
    "tok/s": "tokens_per_s", "tokens/s": "tokens_per_s", "tokens_per_sec": "tokens_per_s",
    "loss_scale": "loss_scale", "scale": "loss_scale", "scaler_scale": "loss_scale",
    "mask_ratio": "mask_ratio", "masking_ratio": "mask_ratio", "label_ratio": "mask_ratio",
    "epoch": "epoch",
    "param_norm": "param_norm", "weight_norm": "param_norm",
    "update_ratio": "update_ratio", "update_to_weight": "update_ratio",
    "wall_time": "wall_time",
}

_EVAL_PREFIXES = ("eval/", "val/", "valid/", "validation/", "eval_", "val_", "valid_", "validation_", "dev_", "dev/")
_TRAIN_PREFIXES = ("train/", "training/", "train_")
_NAMESPACES = ("ray/tune/",)  # Ray Tune's TensorBoard tags: ray/tune/loss is the trial's loss
# The split written after the name: torch.utils.tensorboard's own example tags `Loss/train` and `Loss/val`, and
# `loss_train` / `loss_val` in hand-written loops (LitGPT prints `loss train: X, val: Y`). A `/` suffix is a
# namespace whatever the name; an `_` suffix counts only after a known metric (`num_val` stays itself).
_EVAL_SUFFIXES = ("eval", "val", "valid", "validation", "dev")
_TRAIN_SUFFIXES = ("train", "training")
# Metrics whose eval-split version has its own canonical name.
_EVAL_NAMES = {"loss": "eval_loss", "ppl": "eval_ppl"}


def canonical_metric(name: str) -> tuple[str, str]:
    """Map a logged metric name to (canonical name, split). Unknown names are kept, normalised."""
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    for namespace in _NAMESPACES:
        key = key.removeprefix(namespace)
    split = "train"
    for prefix in _EVAL_PREFIXES:
        if key.startswith(prefix):
            key, split = key[len(prefix):], "eval"
            break
    else:
        for prefix in _TRAIN_PREFIXES:
            if key.startswith(prefix) and key[len(prefix):]:
                key = key[len(prefix):]
                break
        else:
            key, split = _split_suffix(key)
    if key.endswith("_step"):  # Lightning's on_step copy of a metric is the metric itself
        key = key[: -len("_step")]
    elif key.endswith("_epoch") and key != "epoch":  # Lightning's epoch mean is a different series
        return (("eval_" if split == "eval" else "") + key, split)
    base = METRIC_ALIASES.get(key, key)
    if split == "eval":
        return _EVAL_NAMES.get(base, base if base.startswith("eval_") else "eval_" + base), split
    if base in ("eval_loss", "eval_ppl"):
        return base, "eval"
    return base, split


def _split_suffix(key: str) -> tuple[str, str]:
    """The key without a trailing split name, and that split: `loss/val` -> ("loss", "eval"); else (key, "train")."""
    base, sep, suffix = max(key.rpartition("/"), key.rpartition("_"), key=lambda parts: len(parts[0]))
    if not base or not sep or (sep == "_" and base not in METRIC_ALIASES):
        return key, "train"
    if suffix in _EVAL_SUFFIXES:
        return base, "eval"
    return (base, "train") if suffix in _TRAIN_SUFFIXES else (key, "train")


HPARAM_ALIASES: Mapping[str, str] = {
    "learning_rate": "lr", "lr": "lr", "max_lr": "lr", "peak_lr": "lr", "base_lr": "lr", "lr0": "lr",
    "per_device_train_batch_size": "batch_size", "batch_size": "batch_size", "micro_batch_size": "batch_size",
    "train_micro_batch_size_per_gpu": "batch_size", "per_gpu_train_batch_size": "batch_size", "bs": "batch_size",
    "train_batch_size": "global_batch_size", "global_batch_size": "global_batch_size",
    "gradient_accumulation_steps": "grad_accum", "grad_accum": "grad_accum", "accumulate_grad_batches": "grad_accum",
    "gradient_accumulation": "grad_accum", "grad_accumulation_steps": "grad_accum", "accum_steps": "grad_accum",
    "world_size": "world_size", "n_gpu": "world_size", "num_gpus": "world_size", "num_processes": "world_size",
    "warmup_steps": "warmup_steps", "warmup_iters": "warmup_steps", "lr_warmup_steps": "warmup_steps",
    "warmup_ratio": "warmup_ratio", "warmup_proportion": "warmup_ratio", "warmup_steps_proportion": "warmup_ratio",
    "weight_decay": "weight_decay", "wd": "weight_decay",
    "max_grad_norm": "max_grad_norm", "grad_clip": "max_grad_norm", "gradient_clip_val": "max_grad_norm",
    "clip_grad": "max_grad_norm", "clip_norm": "max_grad_norm", "gradient_clipping": "max_grad_norm",
    "temperature": "temperature", "base_temperature": "temperature", "kd_temperature": "temperature",
    "min_temperature": "min_temperature",
    "lr_scheduler_type": "lr_schedule", "lr_schedule": "lr_schedule", "lr_scheduler": "lr_schedule",
    "lr_decay_style": "lr_schedule",
    "block_size": "block_size", "max_seq_length": "block_size", "seq_len": "block_size", "seq_length": "block_size",
    "max_length": "block_size", "max_seq_len": "block_size", "context_length": "block_size", "n_ctx": "block_size", "n_positions": "block_size",
    "layer_norm_eps": "layer_norm_eps", "layer_norm_epsilon": "layer_norm_eps", "ln_eps": "layer_norm_eps",
    "vocab_size": "vocab_size", "n_vocab": "vocab_size", "padded_vocab_size": "vocab_size",
    "max_steps": "max_steps", "train_iters": "max_steps", "total_steps": "max_steps", "max_iters": "max_steps",
    "num_train_epochs": "epochs", "max_epochs": "epochs", "num_epochs": "epochs", "epochs": "epochs",
    "mlm_probability": "mlm_probability", "masking_ratio": "mlm_probability", "mask_prob": "mlm_probability",
    "seed": "seed", "optimizer": "optimizer", "optim": "optimizer", "alpha": "alpha",
    "adam_beta1": "beta1", "adam_beta2": "beta2", "adam_epsilon": "eps",
    "num_classes": "num_classes", "num_labels": "num_classes", "n_classes": "num_classes",
    "precision": "precision", "init_std": "init_std", "initializer_range": "init_std",
}


def canonical_hparam(name: str) -> str:
    """Canonical name of a hyperparameter key (the last component of a dotted path); unknown keys kept."""
    key = re.sub(r"[\s\-]+", "_", name.strip().lower()).split(".")[-1].lstrip("-")
    return HPARAM_ALIASES.get(key, key)


# --- plain data objects --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HParam:
    """One hyperparameter value and where it was read."""

    value: Any
    file: str  # relative to the run dir
    key: str  # the key as written in the file


@dataclass(frozen=True)
class Event:
    """A notable log line: a warning, an fp16 overflow, a NaN clamp, a restart, a skipped step."""

    kind: str  # one of EVENT_KINDS
    step: int | None
    text: str  # the line (or a faithful rendering of the record), stripped
    file: str
    line: int | None
    data: Mapping[str, Any] = field(default_factory=dict)  # parsed numbers, e.g. {"scale_from": 65536, "scale_to": 32768}


EVENT_KINDS = (
    "warning",  # any warning line
    "overflow",  # mixed-precision overflow: step skipped, loss scale reduced
    "skipped_step",  # a step skipped for another reason (counter rose)
    "nan",  # a non-finite value reported in text (nan iterations, "loss is nan")
    "nan_clamp",  # a non-finite value replaced by a finite one (clamped to zero, filtered)
    "restart",  # steps went backwards: a resume from a checkpoint
    "error",  # an error/traceback line
)


@dataclass(frozen=True)
class TensorStats:
    """Statistics of one tensor in a checkpoint, computed without keeping the tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    nonfinite: int
    norm: float  # L2 norm over finite values
    std: float
    absmax: float


@dataclass(frozen=True)
class CheckpointStats:
    """What a checkpoint says about the model, optimizer, loss scaler and scheduler at its step."""

    tensors: tuple[TensorStats, ...] = ()  # model weights
    optimizer_tensors: tuple[TensorStats, ...] = ()  # exp_avg / exp_avg_sq / momentum buffers
    optimizer_groups: tuple[Mapping[str, Any], ...] = ()  # lr, betas, eps, weight_decay per param group
    optimizer_step: int | None = None
    scaler: Mapping[str, Any] | None = None  # {"scale": 65536.0, "growth_tracker": 12}
    scheduler: Mapping[str, Any] | None = None  # {"last_lr": [...]}
    config: Mapping[str, Any] | None = None  # a config dict stored in the checkpoint

    @property
    def nonfinite(self) -> int:
        return sum(t.nonfinite for t in self.tensors) + sum(t.nonfinite for t in self.optimizer_tensors)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint found in the run: a file or an HF `checkpoint-N/` folder."""

    path: str  # relative to the run dir
    step: int | None
    format: str  # torch | safetensors | hf | lightning | deepspeed | lfs-pointer
    stats: CheckpointStats | None = None
    error: str | None = None  # why it could not be read (refused pickle, LFS pointer, corrupt file)


@dataclass(frozen=True)
class BlindSpot:
    """Something these logs cannot show, and which detectors that weakens."""

    message: str
    affects: tuple[str, ...] = ()


@dataclass(frozen=True)
class Note:
    """A problem ingest tolerated: garbage lines, a truncated last line, non-numeric values."""

    file: str
    message: str
    line: int | None = None
    count: int = 1


@dataclass
class Ingested:
    """What one reader found in the files it claimed. Mutable while a reader fills it; merged by build_run.

    Each frame has columns step (int), name (str, as logged), value (float), line (int: 1-based line or record
    number) and optionally split ("train"/"eval", else inferred from the name) and rank (int, default 0).
    Frames must be in file order: a step that goes backwards means a restart.
    `clocks` are frames of the same shape holding only CLOCK_METRIC points (the time a format wrote with each
    point), kept apart so that `frames` stay what the file logged; build_run reads them after the frames.
    `lines_are_records`: the `line` column numbers binary records (TensorBoard), not text lines a user can open;
    build_run reads such pieces' frames after the others, so that where two files hold the same point the text
    one is cited.
    """

    format: str
    frames: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # (file, frame)
    clocks: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # (file, frame of CLOCK_METRIC points)
    hparams: list[tuple[str, Any, str, str]] = field(default_factory=list)  # (name, value, file, key)
    events: list[Event] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    blind_spots: list[BlindSpot] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    lines_are_records: bool = False

    def add_frame(self, file: str, frame: pd.DataFrame) -> None:
        if len(frame):
            self.frames.append((file, frame))

    def add_clock(self, file: str, frame: pd.DataFrame) -> None:
        if len(frame):
            self.clocks.append((file, frame))

    def add_hparams(self, values: Mapping[str, Any], file: str, prefix: str = "") -> None:
        """Flatten a (nested) config mapping into hparams; the canonical name comes from the last key."""
        for key, value in values.items():
            if str(key).startswith("_") or str(key).lower() in _COMMENT_KEYS:
                continue  # a comment written into a config explains values; it is not one
            full = f"{prefix}{key}"
            if isinstance(value, Mapping):
                self.add_hparams(value, file, prefix=f"{full}.")
            elif value is None or isinstance(value, (bool, int, float, str)) or _is_short_list(value):
                self.hparams.append((canonical_hparam(str(key)), value, file, full))


_COMMENT_KEYS = {"comment", "comments", "description", "notes", "note", "doc"}


def _is_short_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) <= 8 and all(
        isinstance(v, (bool, int, float, str)) for v in value)


# --- the Run -------------------------------------------------------------------------------------------------------

SCALAR_COLUMNS = ("step", "metric", "value", "split", "rank", "source", "line", "name", "segment")


@dataclass(frozen=True)
class Run:
    """One training run as every detector and report sees it."""

    path: str
    name: str
    formats: tuple[str, ...]
    sources: tuple[str, ...]  # files the scalars came from, relative to the run dir; `scalars.source` indexes it
    scalars: pd.DataFrame  # SCALAR_COLUMNS, every point, all segments, in file order
    hparams: Mapping[str, HParam]
    checkpoints: tuple[Checkpoint, ...] = ()
    events: tuple[Event, ...] = ()
    blind_spots: tuple[BlindSpot, ...] = ()
    notes: tuple[Note, ...] = ()
    status: str | None = None  # completed | diverged | crashed, where the run says so

    # -- metrics --
    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(sorted(self._latest_index()[1]))

    def has(self, metric: str) -> bool:
        return metric in self._latest_index()[1]

    def series(self, metric: str, rank: int | None = None) -> pd.Series:
        """Values of one metric indexed by step, sorted; where a restart repeats steps, the newest segment wins.

        The same Series object for the same question, so what detectors derive from it can be kept with it
        (analyzer.detectors.stats.cached); callers never modify it in place."""
        cache = self.__dict__.setdefault("_series_cache", {})
        found = cache.get((metric, rank))
        if found is None:  # setdefault: where detectors run in threads, every caller gets the one stored object
            found = cache.setdefault((metric, rank), self._series(metric, rank))
        return found

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (a sweep's worker process hands its Run back) with its fields only: the lookups and answers
        cached on it are rebuilt where needed."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def _series(self, metric: str, rank: int | None) -> pd.Series:
        rows = self._latest_rows(metric)
        ranks = self._column("rank")[rows]
        if rank is None and len(rows):
            rank = int(ranks.min())
        rows = rows[ranks == rank]
        return pd.Series(self._column("value")[rows], index=pd.Index(self._column("step")[rows], name="step"),
                         name=metric)

    def point(self, metric: str, step: int) -> tuple[str, int] | None:
        """(file, line) of the point that `series(metric)` holds at `step`, for evidence."""
        rows = self._latest_rows(metric)
        hit = rows[self._column("step")[rows] == step]
        if not len(hit):
            return None
        row = hit[-1]
        return self.sources[int(self._column("source")[row])], int(self._column("line")[row])

    def _latest(self) -> pd.DataFrame:
        """latest_points(scalars), built on demand: lookups go through `_latest_index` without copying rows."""
        cached = self.__dict__.get("_latest_cache")
        if cached is None:
            cached = self.scalars.iloc[self._latest_index()[0]]
            object.__setattr__(self, "_latest_cache", cached)
        return cached

    def _latest_index(self) -> tuple[np.ndarray, dict[str, slice]]:
        """(positions of latest_points' rows in `scalars`, where each metric's rows lie among them): one pass."""
        cached = self.__dict__.get("_index_cache")
        if cached is None:
            cached = latest_index(self.scalars)
            object.__setattr__(self, "_index_cache", cached)
        return cached

    def _latest_rows(self, metric: str) -> np.ndarray:
        positions, slices = self._latest_index()
        where = slices.get(metric)
        return positions[where] if where is not None else positions[:0]

    def _column(self, name: str) -> np.ndarray:
        cache = self.__dict__.setdefault("_column_cache", {})
        if name not in cache:
            cache[name] = self.scalars[name].to_numpy()
        return cache[name]

    def row_counts(self) -> dict[str, int]:
        """Points per metric in `scalars`: every point written, all segments and ranks."""
        cached = self.__dict__.get("_row_counts_cache")
        if cached is None:
            codes = self.__dict__.get("_codes_cache")
            if codes is None and len(self.scalars):
                codes = GroupCodes.of(self.scalars)
            counts = np.bincount(codes.metric, minlength=len(codes.metric_names)) if codes is not None else []
            cached = {name: int(c) for name, c in zip(codes.metric_names if codes is not None else [], counts) if c}
            object.__setattr__(self, "_row_counts_cache", cached)
        return cached

    @property
    def first_step(self) -> int | None:
        return int(self.scalars["step"].min()) if len(self.scalars) else None

    @property
    def last_step(self) -> int | None:
        return int(self.scalars["step"].max()) if len(self.scalars) else None

    # -- hyperparameters --
    def hparam(self, name: str, default: Any = None) -> Any:
        found = self.hparams.get(name)
        return default if found is None else found.value

    def events_of(self, *kinds: str) -> tuple[Event, ...]:
        return tuple(e for e in self.events if e.kind in kinds)


def latest_points(scalars: pd.DataFrame) -> pd.DataFrame:
    """One row per (metric, split, rank, step): the last one written, so a resumed segment replaces the old one."""
    return scalars.iloc[latest_index(scalars)[0]]


def latest_index(scalars: pd.DataFrame, codes: "GroupCodes | None" = None) -> tuple[np.ndarray, dict[str, slice]]:
    """Positions of latest_points' rows, sorted by metric, rank, step (stable), and each metric's slice of them.

    Done on integer codes, group by group, because a series is nearly always in step order already: no string
    comparisons and no full sort over millions of rows. `codes` are the rows' sorted metric and rank codes where
    build_run already has them.
    """
    if not len(scalars):
        return np.zeros(0, dtype="int64"), {}
    if codes is None:
        codes = GroupCodes.of(scalars)
    metric_codes, metric_names = codes.metric, codes.metric_names
    group = codes.group()
    order = codes.order().copy()  # changed below where a series goes back
    steps = scalars["step"].to_numpy()
    g, s = group[order], steps[order]
    unsorted = (g[1:] == g[:-1]) & (s[1:] < s[:-1])
    if unsorted.any():  # some series go back (restarts): sort those groups by step, stably
        for code in np.unique(g[1:][unsorted]):
            where = np.flatnonzero(g == code)
            order[where] = order[where][np.argsort(s[where], kind="stable")]
        g, s = group[order], steps[order]
    last_of_step = np.ones(len(order), dtype=bool)
    last_of_step[:-1] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    positions = order[last_of_step]
    metric_of = metric_codes[positions]
    starts = np.flatnonzero(np.r_[True, metric_of[1:] != metric_of[:-1]])
    ends = np.r_[starts[1:], len(positions)]
    slices = {str(metric_names[metric_of[a]]): slice(int(a), int(b)) for a, b in zip(starts, ends)}
    return positions, slices


@dataclass(frozen=True)
class GroupCodes:
    """Each row's metric and rank as integer codes in sorted order (what pd.factorize(sort=True) gives)."""

    metric: np.ndarray
    metric_names: list[str]
    rank: np.ndarray
    n_ranks: int

    @classmethod
    def of(cls, scalars: pd.DataFrame) -> "GroupCodes":
        metric_codes, metric_names = pd.factorize(scalars["metric"], sort=True)
        rank_codes, ranks = pd.factorize(scalars["rank"], sort=True)
        return cls(metric_codes, [str(m) for m in metric_names], rank_codes, len(ranks))

    def group(self) -> np.ndarray:
        """One code per (metric, rank) pair, in metric then rank order."""
        if "_group" not in self.__dict__:
            self.__dict__["_group"] = self.metric.astype("int64") * max(self.n_ranks, 1) + self.rank
        return self.__dict__["_group"]

    def order(self) -> np.ndarray:
        """Row positions grouped by `group()`, file order inside each group (shared: copy before changing it)."""
        if "_order" not in self.__dict__:
            self.__dict__["_order"] = _stable_order(self.group())
        return self.__dict__["_order"]


def _group_codes(metric: pd.Series, rank: pd.Series, sort: bool) -> np.ndarray:
    """One integer per (metric, rank) pair; with sort=True the codes follow metric, then rank, order."""
    metric_codes, metric_names = pd.factorize(metric, sort=sort)
    rank_codes, ranks = pd.factorize(rank, sort=sort)
    return metric_codes.astype("int64") * max(len(ranks), 1) + rank_codes


def _stable_order(group: np.ndarray) -> np.ndarray:
    """Row order grouped by code, keeping file order inside each group (numpy radix-sorts small integers)."""
    if len(group) and group.max() < np.iinfo(np.int16).max:
        return np.argsort(group.astype(np.int16), kind="stable")
    return np.argsort(group, kind="stable")


# --- building a Run from readers' pieces ----------------------------------------------------------------------------

def empty_scalars() -> pd.DataFrame:
    return pd.DataFrame({
        "step": pd.Series([], dtype="int64"), "metric": pd.Series([], dtype="object"),
        "value": pd.Series([], dtype="float64"), "split": pd.Series([], dtype="object"),
        "rank": pd.Series([], dtype="int64"), "source": pd.Series([], dtype="int64"),
        "line": pd.Series([], dtype="int64"), "name": pd.Series([], dtype="object"),
        "segment": pd.Series([], dtype="int64"),
    })


def build_run(path: Path, pieces: Iterable[Ingested], name: str | None = None, status: str | None = None) -> Run:
    """Merge readers' pieces into one Run: canonical names, segments after restarts, restart events."""
    pieces = list(pieces)
    sources: list[str] = []
    frames, row_codes = [], []
    copies = _Copies()
    # Text sources first: a point that a binary file repeats is then read, and cited, from the text (sorted() is
    # stable, so the readers' order holds otherwise).
    for piece in sorted(pieces, key=lambda p: p.lines_are_records):
        for file, frame in [*piece.frames, *piece.clocks]:
            if file not in sources:
                sources.append(file)
            normalised, metric_of, pair_codes = _normalise_frame(frame, sources.index(file))
            repeated = copies.repeated(normalised, metric_of, pair_codes, file, piece.format)
            if repeated is not None:
                normalised, pair_codes = normalised[~repeated].reset_index(drop=True), pair_codes[~repeated]
            frames.append(normalised)
            row_codes.append((metric_of, pair_codes))
    if len(frames) == 1:  # the usual single log: its frame is already ours, with a fresh 0..n-1 index
        scalars = frames[0]
    else:
        for column in ("metric", "split", "name"):  # one set of categories, so that concat keeps them
            union = sorted(set().union(*(f[column].cat.categories for f in frames)))
            for f in frames:
                f[column] = f[column].cat.set_categories(union)
        scalars = pd.concat(frames, ignore_index=True) if frames else empty_scalars()
    codes = _codes(frames, row_codes) if frames else None
    scalars, restarts = _segments(scalars, sources, codes)

    hparams: dict[str, HParam] = {}
    for piece in pieces:  # later readers (more specific sources) override earlier ones
        for hp_name, value, file, key in piece.hparams:
            hparams[hp_name] = HParam(value, file, key)

    events = [e for piece in pieces for e in piece.events] + restarts
    events.sort(key=lambda e: (e.step if e.step is not None else -1, e.file, e.line or 0, e.kind))
    checkpoints = sorted((c for p in pieces for c in p.checkpoints), key=lambda c: (c.step is None, c.step or 0, c.path))
    blind = []
    for spot in (b for p in pieces for b in p.blind_spots):
        if spot not in blind:
            blind.append(spot)
    run = Run(
        path=str(path), name=name or Path(path).resolve().name,
        formats=tuple(dict.fromkeys(p.format for p in pieces if p.frames or p.hparams or p.events or p.checkpoints)),
        sources=tuple(sources), scalars=scalars, hparams=dict(sorted(hparams.items())),
        checkpoints=tuple(checkpoints), events=tuple(events), blind_spots=tuple(blind),
        notes=tuple(n for p in pieces for n in p.notes) + tuple(copies.notes), status=status,
    )
    if codes is not None:  # the per-metric index, from the codes in hand rather than by factorising strings again
        object.__setattr__(run, "_index_cache", latest_index(scalars, codes))
        object.__setattr__(run, "_codes_cache", codes)
        codes.__dict__.pop("_group", None)  # only the index needed them: 16 bytes a point, recomputed on demand
        codes.__dict__.pop("_order", None)
    return run


class _Copies:
    """Series that a later file repeats point for point: HF Trainer's TensorBoard events beside trainer_state.json,
    a W&B history beside them, a framework's CSV copy of its JSON. Their points are kept once, from the file read
    first, so a copy never reads as a restart (its steps start again from the first) and no point counts twice. A
    later file is a copy of a series (one metric of one rank) when every one of its points is already there, at the
    same step with the same value (to float32 precision: TensorBoard stores float32); anything else is data of its
    own. A file of another format that repeats only some of the points (HF's TensorBoard file runs on past the
    last checkpoint's trainer_state.json) has those points dropped and keeps the rest; two files of one format that
    share some points are two runs (a resume replays the lr schedule), kept whole. A second clock (wall_time) is a
    copy when it times no step the first did not. Files whose metrics nothing read before shares cost nothing: the
    usual single log is not scanned."""

    RTOL = 1e-6  # float32 keeps ~7 significant digits

    def __init__(self) -> None:
        # as read: file, rows, codes, format
        self.frames: list[tuple[str, pd.DataFrame, list[str], np.ndarray, str]] = []
        self.metrics: set[str] = set()
        self.notes: list[Note] = []

    def repeated(self, frame: pd.DataFrame, metric_of: list[str], pair_codes: np.ndarray,
                 file: str, fmt: str = "") -> np.ndarray | None:
        """Which rows of this file's frame repeat points of files read before (None: none do)."""
        shared = set(metric_of) & self.metrics
        self.frames.append((file, frame, metric_of, pair_codes, fmt))
        self.metrics |= set(metric_of)
        if not shared or not len(frame):
            return None
        out = np.zeros(len(frame), dtype=bool)
        for metric in sorted(shared):
            rows = self._rows(frame, metric_of, pair_codes, metric)
            ranks = frame["rank"].to_numpy()[rows]
            for rank in sorted(set(ranks.tolist())):  # a few ranks at most, on the few rows of one metric
                these = rows[ranks == rank]
                same, at_old_step, where, other_format = self._matches(frame, these, metric, rank, fmt)
                if not same.any():
                    continue
                kind = "same steps" if metric == CLOCK_METRIC else "same steps and values"
                if same.all():
                    out[these] = True
                    self.notes.append(Note(file, f"{len(these)} {metric} point(s) repeat {where} ({kind}): read once",
                                           count=len(these)))
                elif metric != CLOCK_METRIC and (same == at_old_step).all() and other_format[same].all():
                    # it agrees wherever both have a point, and goes on where the earlier file stops
                    dropped = these[same]
                    out[dropped] = True
                    self.notes.append(Note(file, f"{len(dropped)} of its {len(these)} {metric} points repeat {where} "
                                                 f"({kind}): read once, from there", count=len(dropped)))
        return out if out.any() else None

    @staticmethod
    def _rows(frame: pd.DataFrame, metric_of: list[str], pair_codes: np.ndarray, metric: str) -> np.ndarray:
        pairs = [i for i, m in enumerate(metric_of) if m == metric]
        return np.flatnonzero(np.isin(pair_codes, pairs))

    def _matches(self, frame: pd.DataFrame, rows: np.ndarray, metric: str,
                 rank: int, fmt: str) -> tuple[np.ndarray, np.ndarray, str, np.ndarray]:
        """For each of these points: is it already there (same step, same value) in a file read before; is its step
        there (whatever the value); the earlier file holding the first repeated point; is that point's file of
        another format."""
        steps, values = frame["step"].to_numpy()[rows], frame["value"].to_numpy()[rows]
        nothing = np.zeros(len(rows), dtype=bool)
        old_steps, old_values, old_files = [], [], []
        earlier = [(f, old, m, c, old_fmt) for f, old, m, c, old_fmt in self.frames[:-1] if metric in m]
        for index, (_, old, metric_of, pair_codes, _) in enumerate(earlier):
            mine = self._rows(old, metric_of, pair_codes, metric)
            mine = mine[old["rank"].to_numpy()[mine] == rank]
            old_steps.append(old["step"].to_numpy()[mine])
            old_values.append(old["value"].to_numpy()[mine])
            old_files.append(np.full(len(mine), index))
        if not old_steps or not len(steps):
            return nothing, nothing, "", nothing
        old_step, old_value, old_file = (np.concatenate(a) for a in (old_steps, old_values, old_files))
        if not len(old_step):
            return nothing, nothing, "", nothing
        order = np.argsort(old_step, kind="stable")
        old_step, old_value, old_file = old_step[order], old_value[order], old_file[order]
        at = np.minimum(np.searchsorted(old_step, steps), len(old_step) - 1)
        at_old_step = old_step[at] == steps
        same = at_old_step.copy()
        if metric != CLOCK_METRIC:  # one clock reading per step is enough, whichever file wrote it
            found = old_value[at]
            same &= np.isclose(values, found, rtol=self.RTOL, atol=0.0, equal_nan=True) | (values == found)
        if not same.any():
            return same, at_old_step, "", nothing
        other_format = np.array([bool(fmt) and old_fmt != fmt for _, _, _, _, old_fmt in earlier])[old_file[at]]
        return same, at_old_step, earlier[int(old_file[at[np.argmax(same)]])][0], other_format


def _codes(frames: list[pd.DataFrame], row_codes: list[tuple[list[str], np.ndarray]]) -> GroupCodes:
    """Sorted metric and rank codes of the concatenated frames, from each frame's few (name, split) pairs."""
    metric_names = sorted({m for metric_of, _ in row_codes for m in metric_of})
    position = {m: i for i, m in enumerate(metric_names)}
    metric = np.concatenate([np.array([position[m] for m in metric_of], dtype=np.int64)[pair_codes]
                             for metric_of, pair_codes in row_codes])
    ranks = [f["rank"].to_numpy() for f in frames]
    if all(len(r) and (r == r[0]).all() for r in ranks):  # one rank per frame, nearly always 0
        present = sorted({int(r[0]) for r in ranks})
        rank = np.concatenate([np.full(len(r), present.index(int(r[0])), dtype=np.int64) for r in ranks])
        return GroupCodes(metric, metric_names, rank, len(present))
    rank_codes, uniques = pd.factorize(np.concatenate(ranks), sort=True)
    return GroupCodes(metric, metric_names, rank_codes, len(uniques))


def _normalise_frame(frame: pd.DataFrame, source: int) -> tuple[pd.DataFrame, list[str], np.ndarray]:
    """(the frame in SCALAR_COLUMNS, the metric of each (name, split) pair, each row's pair code)."""
    # Millions of rows hold a few distinct (name, split) pairs: canonicalise each pair once, expand by codes.
    name_codes, name_uniques = _factorize(frame["name"], use_na_sentinel=False)
    names = [str(n) for n in name_uniques]
    has_split = "split" in frame
    if has_split:  # a reader that knows the split (e.g. canonical jsonl "split": "eval") wins
        split_codes, split_uniques = _factorize(frame["split"], use_na_sentinel=True)  # -1: no split given
        width = len(split_uniques) + 1
        pair_codes, pairs = _small_factorize(name_codes.astype("int64") * width + (split_codes + 1))
        given = [str(v) for v in split_uniques] + [None]  # given[-1] is None: the name decides
        pairs = [(int(p) // width, int(p) % width - 1) for p in pairs]
    else:
        pair_codes, given = name_codes, [None]
        pairs = [(i, -1) for i in range(len(names))]
    metric_of, split_of, name_of = [], [], []
    for name_index, split_index in pairs:
        metric, split = canonical_metric(names[name_index])
        if has_split:
            split_given = given[split_index] if given[split_index] is not None else split
            if split_given == "eval" and not metric.startswith("eval_"):
                metric = _EVAL_NAMES.get(metric, "eval_" + metric)
            split = "eval" if metric.startswith("eval_") else split_given
        metric_of.append(metric)
        split_of.append(split)
        name_of.append(names[name_index])
    rank = frame["rank"].astype("int64") if "rank" in frame else 0
    return pd.DataFrame({
        "step": frame["step"].astype("int64").to_numpy(), "metric": _strings(metric_of, pair_codes),
        "value": frame["value"].astype("float64").to_numpy(), "split": _strings(split_of, pair_codes),
        "rank": rank if np.isscalar(rank) else rank.to_numpy(), "source": source,
        "line": frame["line"].astype("int64").to_numpy(), "name": _strings(name_of, pair_codes), "segment": 0,
    }, copy=False), metric_of, np.asarray(pair_codes)  # the reader's columns, not copies of them


def _factorize(column: pd.Series, use_na_sentinel: bool) -> tuple[np.ndarray, Any]:
    """pd.factorize, straight from the codes of a categorical column (readers' name and split columns); the codes
    only group rows, so categories without rows do no harm."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        codes = column.cat.codes.to_numpy()
        if use_na_sentinel or not len(codes) or codes.min() >= 0:  # -1 for a missing value, as pd.factorize's
            return codes.astype("int64"), column.cat.categories
    return pd.factorize(column, use_na_sentinel=use_na_sentinel)


def _small_factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes and uniques of non-negative integers of a small range (pair codes) through a lookup table instead of
    pd.factorize's hash table over millions of rows. Uniques come sorted; the codes only group rows."""
    if not len(values) or values.min() < 0 or values.max() > 4 * len(values) + 1024:
        return pd.factorize(values)
    seen = np.zeros(int(values.max()) + 1, dtype=bool)
    seen[values] = True
    uniques = np.flatnonzero(seen)
    lookup = np.empty(len(seen), dtype=np.int64)
    lookup[uniques] = np.arange(len(uniques))
    return lookup[values], uniques


def _strings(values: list[str], codes: np.ndarray) -> pd.Categorical:
    """The column values[codes] as a categorical, its categories sorted (as pd.factorize(sort=True) orders them): a
    few distinct names over millions of rows cost a small integer each (as text: ~13 bytes a row, 3 columns)."""
    categories = sorted(set(values))
    position = {v: i for i, v in enumerate(categories)}
    lookup = np.array([position[v] for v in values], dtype=np.int32)
    return pd.Categorical.from_codes(lookup[codes], categories=categories)


def _segments(scalars: pd.DataFrame, sources: list[str],
              codes: GroupCodes | None = None) -> tuple[pd.DataFrame, list[Event]]:
    """Number the segments of each series: a step lower than one already seen starts a new segment (a restart)."""
    if not len(scalars):
        return scalars, []
    # A restart is where a series' step drops below its previous point; the resumed segment then rises again
    # (comparing with the running maximum would count every resumed point below the old maximum as a restart).
    # Computed on integer group codes in group order, then put back in file order.
    # any coding of (metric, rank) groups the rows the same way
    group = codes.group() if codes is not None else _group_codes(scalars["metric"], scalars["rank"], sort=False)
    order = codes.order() if codes is not None else _stable_order(group)
    group = group[order]
    steps = scalars["step"].to_numpy()[order]
    first_of_group = np.ones(len(order), dtype=bool)
    first_of_group[1:] = group[1:] != group[:-1]
    restarted_sorted = np.zeros(len(order), dtype=bool)
    restarted_sorted[1:] = ~first_of_group[1:] & (steps[1:] < steps[:-1])
    running = np.cumsum(restarted_sorted)
    segment_sorted = running - running[first_of_group][np.cumsum(first_of_group) - 1]
    restarted = np.empty(len(order), dtype=bool)
    restarted[order] = restarted_sorted
    segment = np.empty(len(order), dtype="int64")
    segment[order] = segment_sorted
    scalars["segment"] = segment  # scalars is build_run's own fresh frame: no need to copy it
    events = []
    if restarted.any():
        hits = scalars[restarted]
        hits = hits[~hits.duplicated(["source", "segment"])]
        for row in hits.itertuples(index=False):  # one per restart, not per row
            events.append(Event("restart", int(row.step), f"steps restart at {int(row.step)} ({row.name})",
                                sources[int(row.source)], int(row.line), {"segment": int(row.segment)}))
    return scalars, events
