"""Checkpoint reader: per-tensor health of weights, optimizer, loss scaler and scheduler, without unpickling anything.

Files are untrusted. `torch.save` files are opened with `torch.load(weights_only=True, mmap=True)` (legacy non-zip
files without mmap, which they do not support); a file that needs arbitrary pickled objects is refused by torch's
restricted unpickler before any object is built, and reported. safetensors files are read tensor by tensor.
Statistics are reduced chunk by chunk in float64, so a checkpoint larger than memory can be scanned.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Iterator, Mapping

from analyzer.run import Checkpoint, CheckpointStats, Ingested, Note, TensorStats
from analyzer.ingest.paths import relative

FORMAT = "checkpoint"

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
CHUNK_ELEMENTS = 1 << 22  # 32 MiB of float64 per reduction step: bounded memory whatever the tensor size
MAX_NESTING = 8  # how deep the walk into a loaded checkpoint dict goes
MAX_CONFIG_ITEMS = 2000  # a stored config larger than this is cut (it is copied into the report)

LFS_MAGIC = b"version https://git-lfs.github.com/spec/v1"
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = b"\x80"  # the PROTO opcode that starts every pickle of protocol 2 or later
# torch.save's legacy (non-zip) format starts with a protocol-2 pickle of this magic number.
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"

HF_DIR = re.compile(r"^checkpoint-(\d+)$")
SHARD = re.compile(r"^(?P<prefix>.+)-\d{5}-of-(?P<total>\d{5})\.(?P<ext>safetensors|bin)$")
# A `.bin` is only a checkpoint under one of these names, or when its first bytes say torch.save wrote it:
# Megatron/fairseq data sets, tokenizers and word vectors are `.bin` files too.
BIN_NAMES = re.compile(r"^(pytorch_model|adapter_model|model|optimizer|scheduler|scaler|training_args)\b.*\.bin$")
STEP_IN_NAME = re.compile(r"(?:^|[^a-z])(?:global_step|step|iter|iteration|checkpoint|ckpt)[-_=]?0*(\d+)", re.I)
# Never loaded, not even with weights_only: training_args.bin pickles a TrainingArguments object (weights_only would
# refuse it anyway, and the hf reader has the same values in trainer_state.json / config.json), and rng_state*.pth /
# random_states*.pkl hold RNG states (numpy objects) that say nothing about the health of training.
NOT_LOADED = re.compile(r"^(training_args\.bin|rng_state.*\.pth|random_states.*)$")

STEP_KEYS = ("step", "global_step", "iter_num", "iteration", "num_updates", "train_step", "steps")
CONFIG_KEYS = ("config", "hyper_parameters", "hparams", "cfg", "args", "model_args")
# Containers of model weights whose key adds nothing to a tensor's name ("model.wte.weight" -> "wte.weight").
MODEL_KEYS = {"model", "state_dict", "module", "model_state_dict", "model_state", "net", "network", "weights"}
# Top-level keys whose tensors are bookkeeping, not weights: RNG states, callback scores, loop counters, EMA copies.
NON_WEIGHT_KEY = re.compile(r"rng|random|^callbacks$|^loops$|(^|_)ema(_|$)|^best_|metric", re.I)
SCHEDULER_KEYS = {"scheduler", "lr_scheduler", "scheduler_state_dict", "lr_scheduler_state_dict", "sched"}
SCALER_KEYS = {"scaler", "grad_scaler", "scaler_state_dict", "loss_scaler", "amp_scaler"}
GROUP_FIELDS = ("lr", "initial_lr", "betas", "eps", "weight_decay", "momentum", "nesterov", "amsgrad")


def sniff(path: Path) -> bool:
    """Checkpoint files by name; a `.bin` only under a checkpoint name or with torch.save's first bytes."""
    try:
        name = path.name
        suffix = path.suffix.lower()
        if suffix in CHECKPOINT_SUFFIXES:
            return True
        if suffix != ".bin":
            return False
        if BIN_NAMES.match(name) or SHARD.match(name) or any(HF_DIR.match(p) for p in path.parts[:-1]):
            return True
        with open(path, "rb") as handle:
            head = handle.read(256)
        return (head.startswith(ZIP_MAGIC) and b"data.pkl" in head) or head.startswith(LEGACY_TORCH_MAGIC)
    except (OSError, ValueError):
        return False


def read(paths: list[Path], root: Path, scan: bool = True) -> Ingested:
    """One Checkpoint per file, per HF `checkpoint-N/` folder and per set of shards; stats unless scan=False."""
    out = Ingested(FORMAT)
    found: list[tuple[Checkpoint, Mapping[str, Any] | None]] = []
    for group in _group(paths, root):
        checkpoint, config = _read_group(group, root, scan, out.notes)
        if checkpoint is None:
            out.notes.append(Note(relative(group.path, root), "not loaded: a pickle of Python objects (training "
                                  "arguments or RNG state), and unpickling could run code"))
        else:
            found.append((checkpoint, config))
    found.sort(key=lambda item: (item[0].step is None, item[0].step or 0, item[0].path))
    for checkpoint, config in found:  # ascending step: the newest checkpoint's config wins
        out.checkpoints.append(checkpoint)
        if config:
            out.add_hparams(config, checkpoint.path)
    return out


# --- grouping files into checkpoints ----------------------------------------------------------------------------------

@dataclass
class _Group:
    path: Path  # what the Checkpoint is named after: the file, the HF folder, or the first shard
    files: list[Path]
    kind: str  # "hf" | "shards" | "file"
    step: int | None = None


def _group(paths: Iterable[Path], root: Path) -> list[_Group]:
    groups: dict[Path, _Group] = {}
    for path in sorted(paths):
        folder = _hf_folder(path, root)
        if folder is not None:
            key, kind = folder, "hf"
        elif SHARD.match(path.name):
            match = SHARD.match(path.name)
            key, kind = path.parent / f"{match['prefix']}-of-{match['total']}.{match['ext']}", "shards"
        else:
            key, kind = path, "file"
        group = groups.setdefault(key, _Group(path=folder if kind == "hf" else path, files=[], kind=kind))
        group.files.append(path)
    for group in groups.values():
        if group.kind == "hf":
            group.step = int(HF_DIR.match(group.path.name)[1])
    return list(groups.values())


def _hf_folder(path: Path, root: Path) -> Path | None:
    """The nearest `checkpoint-N/` folder holding this file, inside the run dir."""
    try:
        parts = path.relative_to(root).parts[:-1]
    except ValueError:
        parts = path.parts[:-1][-1:]
    for depth in range(len(parts), 0, -1):
        if HF_DIR.match(parts[depth - 1]):
            return path.parents[len(parts) - depth]
    return None


def step_from_name(name: str) -> int | None:
    """The training step a checkpoint's name carries (step_000400.pt, checkpoint-400, epoch=3-step=1200.ckpt)."""
    hits = STEP_IN_NAME.findall(name)
    return int(hits[-1]) if hits else None


def _format_from_name(path: Path) -> str:
    suffix = path.suffix.lower()
    return {".safetensors": "safetensors", ".ckpt": "lightning"}.get(suffix, "torch")


# --- reading one checkpoint -------------------------------------------------------------------------------------------

@dataclass
class _Parts:
    """What the files of one checkpoint held, accumulated while walking them."""

    tensors: list[TensorStats] = field(default_factory=list)
    optimizer: dict[str, _Moments] = field(default_factory=dict)  # state key -> pooled statistics
    groups: list[dict[str, Any]] = field(default_factory=list)
    optimizer_step: int | None = None
    scaler: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    step: int | None = None
    lightning: bool = False
    skipped: int = 0  # tensors whose dtype has no float64 view (quantized, meta, sparse)

    def stats(self) -> CheckpointStats:
        return CheckpointStats(
            tensors=tuple(self.tensors),
            optimizer_tensors=tuple(m.stats(key) for key, m in sorted(self.optimizer.items())),
            optimizer_groups=tuple(self.groups), optimizer_step=self.optimizer_step, scaler=self.scaler,
            scheduler=self.scheduler, config=self.config)


def _read_group(group: _Group, root: Path, scan: bool,
                notes: list[Note]) -> tuple[Checkpoint | None, Mapping | None]:
    rel = relative(group.path, root)
    files = [f for f in sorted(group.files) if not NOT_LOADED.match(f.name)]
    if not files:  # a lone training_args.bin / rng_state.pth: nothing we are willing to load
        return None, None
    fmt = "hf" if group.kind == "hf" else _format_from_name(group.path)
    step = group.step if group.step is not None else step_from_name(group.path.name)
    pointers = [f for f in files if _is_lfs_pointer(f)]
    if pointers:
        names = ", ".join(relative(f, root) for f in pointers)
        return Checkpoint(rel, step, "lfs-pointer", error=(
            f"Git LFS pointer file(s), the weights were not downloaded ({names}); run `git lfs pull`")), None
    if not scan:
        return Checkpoint(rel, step, fmt), None
    parts, errors = _Parts(), []
    for file in files:
        error = _read_file(file, parts)
        if error:
            errors.append(error if len(files) == 1 and group.kind == "file" else f"{file.name}: {error}")
    if parts.skipped:
        notes.append(Note(rel, "tensors with a dtype that has no float64 view (quantized, sparse or meta) "
                               "were not scanned", count=parts.skipped))
    if parts.lightning and fmt == "torch":
        fmt = "lightning"
    if group.kind != "hf" and parts.step is not None:
        step = parts.step
    loaded_anything = parts.tensors or parts.optimizer or parts.groups or parts.scaler or parts.scheduler
    stats = parts.stats() if loaded_anything or parts.config else None
    return Checkpoint(rel, step, fmt, stats=stats, error="; ".join(errors) or None), parts.config


def _read_file(path: Path, parts: _Parts) -> str | None:
    """Add one file's contents to `parts`; the reason it could not be read, or None."""
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path, parts)
    return _read_torch(path, parts)


def _read_safetensors(path: Path, parts: _Parts) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - a safetensors handle is not iterable
                stats = _stats_of_chunks(name, *_safetensor_chunks(handle, name), parts)
                if stats is not None:
                    parts.tensors.append(stats)
    except Exception as error:  # noqa: BLE001 - a corrupt file of any kind is reported, never fatal
        return f"unreadable safetensors file: {_first_line(error)}"
    return None


def _safetensor_chunks(handle, name: str) -> tuple[tuple[int, ...], Iterator]:
    """(shape, chunks) of one safetensors tensor, read in row blocks so a huge tensor never sits in memory."""
    view = handle.get_slice(name)
    shape = tuple(view.get_shape())
    numel = math.prod(shape)
    if len(shape) == 0 or numel <= CHUNK_ELEMENTS:
        return shape, iter((handle.get_tensor(name).reshape(-1),))
    rows = max(1, CHUNK_ELEMENTS // max(1, numel // shape[0]))
    return shape, (view[i:i + rows].reshape(-1) for i in range(0, shape[0], rows))


def _read_torch(path: Path, parts: _Parts) -> str | None:
    import torch

    try:
        with open(path, "rb") as handle:
            head = handle.read(len(LEGACY_TORCH_MAGIC))
    except OSError as error:
        return f"unreadable: {error.strerror or error}"
    if not head:
        return "empty file"
    if not head.startswith((ZIP_MAGIC, PICKLE_PROTO)):
        return "not a torch.save file (neither a zip archive nor a pickle)"
    # mmap needs torch.save's zip format; legacy files (and anything else) are read without it.
    mmap = head.startswith(ZIP_MAGIC)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols; the outcome is reported instead
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # noqa: BLE001 - torch raises many types for corrupt or hostile files
        return _load_failure(path, error)
    if isinstance(obj, Mapping):
        if "pytorch-lightning_version" in obj or ("state_dict" in obj and "global_step" in obj):
            parts.lightning = True
        parts.step = _step_of(obj) if _step_of(obj) is not None else parts.step
        if parts.config is None:
            parts.config = _config_of(obj)
    _walk(obj, "", parts, 0)
    return None


GLOBAL_NAME = re.compile(r"GLOBAL ([\w.]+)")


def _load_failure(path: Path, error: Exception) -> str:
    text = str(error)
    blocked = GLOBAL_NAME.search(text)
    if blocked:
        return (f"refused: {path.name} needs arbitrary Python objects, e.g. {blocked[1]} "
                "(not loaded, nothing executed)")
    if "Weights only load failed" in text:
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        return (f"refused: {path.name} uses pickle features the safe loader does not allow"
                f"{f' ({detail[1].strip()})' if detail else ''} (not loaded, nothing executed)")
    if isinstance(error, EOFError):
        return "truncated or corrupt: the file ends early"
    return f"truncated or corrupt: {_first_line(error)}"


def _first_line(error: Exception) -> str:
    """The first sentence of an error message (torch appends paragraphs of advice)."""
    lines = str(error).strip().splitlines()
    first = lines[0] if lines else type(error).__name__
    return re.split(r"(?<=[a-z0-9])\. ", first)[0][:200]


# --- walking a loaded checkpoint --------------------------------------------------------------------------------------

def _walk(obj: Any, prefix: str, parts: _Parts, depth: int) -> None:
    """Sort what a checkpoint holds into weights, optimizer, scheduler and scaler state, whatever its layout."""
    import torch

    if depth > MAX_NESTING:
        return
    if isinstance(obj, torch.Tensor):
        stats = _torch_tensor_stats(prefix or "tensor", obj, parts)
        if stats is not None:
            parts.tensors.append(stats)
        return
    if isinstance(obj, Mapping):
        if _is_optimizer(obj):
            _add_optimizer(obj, parts)
        elif _is_scheduler(obj):
            parts.scheduler = _merge_scheduler(parts.scheduler, obj)
        elif _is_scaler(obj):
            parts.scaler = _scaler(obj)
        else:
            for key, value in obj.items():
                key = str(key)
                if depth == 0 and (key in CONFIG_KEYS or key in STEP_KEYS or (
                        NON_WEIGHT_KEY.search(key) and not _holds_training_state(value))):
                    continue
                # Hand-rolled schedulers and loss scalers (the reference trainer's) are known by their key.
                if key in SCHEDULER_KEYS and isinstance(value, Mapping) and ("last_lr" in value or "_last_lr" in value):
                    parts.scheduler = _merge_scheduler(parts.scheduler, value)
                    continue
                if key in SCALER_KEYS and isinstance(value, Mapping) and not _is_optimizer(value):
                    parts.scaler = _scaler(value) or parts.scaler
                    continue
                if key in MODEL_KEYS and depth <= 1 and isinstance(value, Mapping):
                    name = prefix
                else:
                    name = f"{prefix}.{key}" if prefix else key
                _walk(value, name, parts, depth + 1)
        return
    if isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            _walk(value, f"{prefix}.{index}" if prefix else str(index), parts, depth + 1)


def _holds_training_state(value: Any) -> bool:
    """Optimizer, scheduler or scaler state kept under a bookkeeping-like key (e.g. "ema_optimizer") is still read."""
    if isinstance(value, Mapping):
        items = [value, *value.values()]
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        return False
    return any(isinstance(v, Mapping) and (_is_optimizer(v) or _is_scheduler(v) or _is_scaler(v)) for v in items)


def _is_optimizer(obj: Mapping) -> bool:
    return isinstance(obj.get("state"), Mapping) and isinstance(obj.get("param_groups"), (list, tuple))


def _is_scheduler(obj: Mapping) -> bool:
    return "_last_lr" in obj or ("base_lrs" in obj and "last_epoch" in obj)


def _is_scaler(obj: Mapping) -> bool:
    return "scale" in obj and ("_growth_tracker" in obj or "growth_factor" in obj)


def _add_optimizer(obj: Mapping, parts: _Parts) -> None:
    import torch

    for group in obj["param_groups"]:
        if isinstance(group, Mapping):
            kept = {k: _plain(group[k]) for k in GROUP_FIELDS if k in group}
            kept["params"] = len(group.get("params", ()) or ())
            parts.groups.append(kept)
    for param_state in obj["state"].values():
        if not isinstance(param_state, Mapping):
            continue
        for key, value in param_state.items():
            if key == "step":
                step = _number(value)
                if step is not None and math.isfinite(step):
                    parts.optimizer_step = max(parts.optimizer_step or 0, int(step))
            elif isinstance(value, torch.Tensor):
                _accumulate(parts.optimizer.setdefault(str(key), _Moments()), value, parts)


def _scaler(obj: Mapping) -> dict[str, Any] | None:
    """GradScaler state (scale, _growth_tracker) or a hand-rolled equivalent; None when loss scaling was off."""
    scale = next((_number(obj[k]) for k in ("scale", "cur_scale", "loss_scale") if k in obj), None)
    if scale is None or obj.get("enabled") is False:
        return None
    tracker = next((_number(obj[k]) for k in ("_growth_tracker", "good_steps", "growth_tracker") if k in obj), None)
    found = {"scale": scale, "growth_tracker": tracker}
    if "growth_interval" in obj:
        found["growth_interval"] = _number(obj["growth_interval"])
    return found


def _merge_scheduler(current: dict | None, obj: Mapping) -> dict:
    last_lr = obj.get("_last_lr") or obj.get("last_lr") or []
    merged = dict(current or {"last_lr": []})
    merged["last_lr"] = list(merged.get("last_lr", [])) + [_number(v) for v in _as_list(last_lr)]
    if "last_epoch" in obj:
        merged["last_epoch"] = _number(obj["last_epoch"])
    return merged


def _step_of(obj: Mapping) -> int | None:
    for key in STEP_KEYS:
        value = _number(obj.get(key))
        if value is not None and math.isfinite(value) and value >= 0:
            return int(value)
    return None


def _config_of(obj: Mapping) -> dict[str, Any] | None:
    for key in CONFIG_KEYS:
        value = obj.get(key)
        if isinstance(value, Mapping) and value:
            budget = [MAX_CONFIG_ITEMS]
            return _plain_mapping(value, budget, 0)
    return None


def _plain_mapping(value: Mapping, budget: list[int], depth: int) -> dict[str, Any]:
    out = {}
    for key, item in value.items():
        if budget[0] <= 0 or depth > MAX_NESTING:
            break
        budget[0] -= 1
        plain = _plain_mapping(item, budget, depth + 1) if isinstance(item, Mapping) else _plain(item)
        if plain is not None or item is None:
            out[str(key)] = plain
    return out


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a config value: tensors of one element become numbers, bigger ones are dropped."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 and not value.is_complex() else None
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)) and len(value) <= 64:
        return [_plain(v) for v in value]
    return None


def _number(value: Any) -> float | None:
    import torch

    if isinstance(value, torch.Tensor):
        return float(value.item()) if value.numel() == 1 and not value.is_complex() else None
    if isinstance(value, (bool, int, float)):
        return value
    return None


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


# --- statistics -------------------------------------------------------------------------------------------------------

@dataclass
class _Moments:
    """Statistics pooled over chunks as float64 sums (count, sum, sum of squares, extremes)."""

    dtype: str = ""
    numel: int = 0
    nonfinite: int = 0
    finite: int = 0
    total: float = 0.0
    sumsq: float = 0.0
    absmax: float = 0.0

    def add(self, chunk) -> None:
        """Fold in one chunk (a flat torch tensor of any real or complex dtype).

        Fast path: a finite sum means every value is finite (one inf or NaN makes the float64 sum non-finite,
        and float32 data cannot overflow it), so the slow elementwise isfinite() pass runs only for damaged or
        float64-extreme chunks. Sum, dot and aminmax are single passes; no chunk-sized temporaries beyond the
        float64 copy.
        """
        import torch

        self.dtype = self.dtype or _dtype_name(chunk.dtype)
        chunk = chunk.abs() if chunk.is_complex() else chunk
        chunk = chunk.to(torch.float64)
        self.numel += chunk.numel()
        if not chunk.numel():
            return
        total = float(chunk.sum())
        if not math.isfinite(total):
            finite_mask = torch.isfinite(chunk)
            n_finite = int(finite_mask.sum())
            self.nonfinite += chunk.numel() - n_finite
            if not n_finite:
                return
            chunk = chunk[finite_mask]
            total = float(chunk.sum())
        low, high = torch.aminmax(chunk)
        self.finite += chunk.numel()
        self.total += total
        self.sumsq += float(torch.dot(chunk, chunk))
        self.absmax = max(self.absmax, -float(low), float(high))

    def stats(self, name: str, shape: tuple[int, ...] | None = None) -> TensorStats:
        """Norm, std and abs-max are over finite values (0.0 where there are none); std is the population std.

        std comes from E[x^2] - E[x]^2 in float64: its relative error is ~1e-16 * (mean/std)^2, negligible for
        weights and optimizer moments (mean/std below 1e4 in any tensor that is not constant).
        """
        std = 0.0
        if self.finite:
            mean = self.total / self.finite
            std = math.sqrt(max(self.sumsq / self.finite - mean * mean, 0.0))
        return TensorStats(name=name, shape=shape if shape is not None else (self.numel,), dtype=self.dtype,
                           numel=self.numel, nonfinite=self.nonfinite, norm=math.sqrt(self.sumsq), std=std,
                           absmax=self.absmax)


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _torch_chunks(tensor) -> Iterator:
    """Flat float64-able chunks of a tensor; a memory-mapped tensor is read a chunk at a time."""
    if tensor.dim() == 0:
        yield tensor.reshape(1)
        return
    if tensor.is_contiguous():
        flat = tensor.reshape(-1)
        for start in range(0, flat.numel(), CHUNK_ELEMENTS):
            yield flat[start:start + CHUNK_ELEMENTS]
        return
    rows = max(1, CHUNK_ELEMENTS // max(1, tensor.numel() // max(1, tensor.shape[0])))
    for start in range(0, tensor.shape[0], rows):
        yield tensor[start:start + rows].reshape(-1)


def _accumulate(moments: _Moments, tensor, parts: _Parts) -> bool:
    """Fold a torch tensor into `moments`; False (and counted as skipped) when it has no float64 view."""
    if tensor.is_sparse or tensor.is_quantized or tensor.is_meta:
        parts.skipped += 1
        return False
    return _fold(moments, _torch_chunks(tensor), parts)


def _fold(moments: _Moments, chunks: Iterator, parts: _Parts) -> bool:
    try:
        for chunk in chunks:
            moments.add(chunk)
    except (RuntimeError, TypeError):  # a dtype torch cannot convert to float64
        parts.skipped += 1
        return False
    return True


def _torch_tensor_stats(name: str, tensor, parts: _Parts) -> TensorStats | None:
    moments = _Moments(dtype=_dtype_name(tensor.dtype))
    return moments.stats(name, tuple(tensor.shape)) if _accumulate(moments, tensor, parts) else None


def _stats_of_chunks(name: str, shape: tuple[int, ...], chunks: Iterator, parts: _Parts) -> TensorStats | None:
    moments = _Moments()
    return moments.stats(name, shape) if _fold(moments, chunks, parts) else None


# --- small helpers ----------------------------------------------------------------------------------------------------

def _is_lfs_pointer(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(LFS_MAGIC)) == LFS_MAGIC
    except OSError:
        return False


