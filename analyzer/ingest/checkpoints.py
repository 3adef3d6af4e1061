"""Checkpoint reader: per-tensor health of weights, optimizer, loss scaler and scheduler, without unpickling anything.

Files are untrusted. `torch.save` files are opened with `torch.load(weights_only=True, mmap=True)` (legacy non-zip
files without mmap, which they do not support); a file that needs arbitrary pickled objects is refused by torch's
restricted unpickler before any object is built, and reported. safetensors files are read tensor by tensor.
Statistics are reduced chunk by chunk in float64, so a checkpoint larger than memory can be scanned.

DeepSpeed checkpoint folders (`engine.save_checkpoint(save_dir, tag)` writes `save_dir/<tag>/`, tag `global_stepN` by
default) are one checkpoint each. Their ZeRO optimizer shards pickle a few DeepSpeed objects (ZeroStageEnum, the loss
scaler, fragment_address); those names, and only names under `deepspeed.`, are bound for the weights_only loader to an
inert record class that stores the arguments and state it is given. DeepSpeed itself is never imported and nothing
of the file's choosing runs; a shard that names any other global is refused like every other file.
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
# torch.save stores its zip entries uncompressed; compressed ones that inflate past this are a zip bomb, not weights
MAX_INFLATED_BYTES = 256 << 20
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

STEP_KEYS = ("step", "global_step", "global_steps", "iter_num", "iteration", "num_updates", "train_step", "steps")
CONFIG_KEYS = ("config", "hyper_parameters", "hparams", "cfg", "args", "model_args", "ds_config")
# Containers of model weights whose key adds nothing to a tensor's name ("model.wte.weight" -> "wte.weight").
MODEL_KEYS = {"model", "state_dict", "module", "model_state_dict", "model_state", "net", "network", "weights"}
# Top-level keys whose tensors are bookkeeping, not weights: RNG states, callback scores, loop counters, EMA copies.
NON_WEIGHT_KEY = re.compile(r"rng|random|^callbacks$|^loops$|(^|_)ema(_|$)|^best_|metric", re.I)
SCHEDULER_KEYS = {"scheduler", "lr_scheduler", "scheduler_state_dict", "lr_scheduler_state_dict", "sched"}
SCALER_KEYS = {"scaler", "grad_scaler", "scaler_state_dict", "loss_scaler", "amp_scaler"}
GROUP_FIELDS = ("lr", "initial_lr", "betas", "eps", "weight_decay", "momentum", "nesterov", "amsgrad")

# DeepSpeed (deepspeed/runtime/engine.py, _get_ckpt_name / _get_rank_zero_ckpt_name / save_checkpoint): a tag folder
# holds mp_rank_XX_model_states.pt (ZeRO-3: zero_pp_rank_R_mp_rank_XX_model_states.pt, one per data-parallel rank),
# one optimizer shard per data-parallel rank, [bf16_]zero_pp_rank_R_mp_rank_XX_optim_states.pt (before 0.5 without the
# "_" before "optim"), MoE expert and optimizer files, and pipeline layer files layer_NN-model_XX-model_states.pt;
# save_dir/latest names the newest tag.
DS_FILE = re.compile(r"(?:^|_)mp_rank_\d+_?(?:model|optim)_states\.pt$|^layer_\d+-model_\d+-model_states\.pt$")
DS_OPTIM_SHARD = re.compile(r"^(?:bf16_|fp16_)?zero_pp_rank_(?P<dp>\d+)_mp_rank_(?P<mp>\d+)_?optim_states\.pt$")
DS_ZERO3_MODEL = re.compile(r"^zero_pp_rank_\d+_mp_rank_\d+_model_states\.pt$")
DS_MODEL_STATES = re.compile(r"(?:^|_)mp_rank_\d+_model_states\.pt$")
DS_LAYER = re.compile(r"^layer_(\d+)-model_\d+-model_states\.pt$")
DS_LATEST = "latest"
MAX_LATEST_BYTES = 256  # `latest` holds one tag name
DS_GLOBAL_PREFIX = "deepspeed."
# Model-states keys that describe the run's layout, not its health (engine.py _save_checkpoint); ds_config is read as
# the checkpoint's config and global_steps as its step.
DS_BOOKKEEPING = {"buffer_names", "param_shapes", "frozen_param_shapes", "shared_params", "frozen_param_fragments",
                  "sparse_tensor_module_names", "csr_tensor_module_names", "skipped_steps", "global_samples",
                  "dp_world_size", "mp_world_size", "ds_version", "data_sampler", "random_ltd", "num_experts"}
# The wrapped torch optimizer inside a DeepSpeed optimizer's state_dict: ZeRO-1/2 and BF16_Optimizer use the first
# key, ZeRO-3 and FP16_Optimizer the second.
DS_BASE_OPTIMIZER_KEYS = ("base_optimizer_state", "optimizer_state_dict")
# Flat fp32 master-weight partitions: ZeRO-1/2 and BF16_Optimizer, ZeRO-3, FP16_Optimizer, FP16_UnfusedOptimizer.
DS_MASTER_KEYS = ("single_partition_of_fp32_groups", "fp32_flat_groups", "fp32_groups_flat", "fp32_groups")
DS_MASTER = "fp32_master_weights"  # their pooled statistics, listed with the optimizer state


def sniff(path: Path) -> bool:
    """Checkpoint files by name; a `.bin` only under a checkpoint name or with torch.save's first bytes; DeepSpeed's
    `latest` when it names a tag."""
    try:
        name = path.name
        suffix = path.suffix.lower()
        if suffix in CHECKPOINT_SUFFIXES:
            return True
        if name == DS_LATEST:
            return _latest_tag(path) is not None
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
    """One Checkpoint per file, per HF `checkpoint-N/` folder, per DeepSpeed tag folder and per set of shards; stats
    unless scan=False."""
    out = Ingested(FORMAT)
    found: list[tuple[Checkpoint, Mapping[str, Any] | None]] = []
    latest = [p for p in paths if p.name == DS_LATEST]
    for group in _group([p for p in paths if p.name != DS_LATEST], root):
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
    out.notes.extend(_latest_note(path, root, out.checkpoints) for path in sorted(latest))
    return out


# --- grouping files into checkpoints ----------------------------------------------------------------------------------

@dataclass
class _Group:
    path: Path  # what the Checkpoint is named after: the file, the HF or DeepSpeed folder, or the first shard
    files: list[Path]
    kind: str  # "hf" | "deepspeed" | "shards" | "file"
    step: int | None = None


def _group(paths: Iterable[Path], root: Path) -> list[_Group]:
    paths = sorted(paths)
    # A DeepSpeed tag folder is any folder holding a file under one of DeepSpeed's names; inside an HF checkpoint-N/
    # folder (the HF Trainer with DeepSpeed) it stays part of that checkpoint.
    ds_folders = {p.parent for p in paths if DS_FILE.search(p.name)}
    groups: dict[Path, _Group] = {}
    for path in paths:
        folder = _hf_folder(path, root)
        if folder is not None:
            key, kind = folder, "hf"
        elif path.parent in ds_folders:
            key, kind = path.parent, "deepspeed"
        elif SHARD.match(path.name):
            match = SHARD.match(path.name)
            key, kind = path.parent / f"{match['prefix']}-of-{match['total']}.{match['ext']}", "shards"
        else:
            key, kind = path, "file"
        named = folder if kind == "hf" else key if kind == "deepspeed" and key != root else path
        group = groups.setdefault(key, _Group(path=named, files=[], kind=kind))
        group.files.append(path)
    for group in groups.values():
        if group.kind == "hf":
            group.step = int(HF_DIR.match(group.path.name)[1])
        elif group.kind == "deepspeed":
            # "global_step800"; a custom tag may carry no number, its parent may (Lightning: epoch=0-step=100.ckpt/).
            folder = group.files[0].parent
            step = step_from_name(folder.name)
            group.step = step if step is not None or folder == root else step_from_name(folder.parent.name)
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


def _latest_tag(path: Path) -> str | None:
    """The tag DeepSpeed's `latest` file names, when it is one: a short single line naming a sibling folder or a
    global_stepN (the folder may be gone)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_LATEST_BYTES + 1)
        tag = data.decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if len(data) > MAX_LATEST_BYTES or not tag or "\n" in tag or "/" in tag or tag in (".", ".."):
        return None
    return tag if re.fullmatch(r"global_step\d+", tag) or (path.parent / tag).is_dir() else None


def _latest_note(path: Path, root: Path, found: list[Checkpoint]) -> Note:
    """Which tag `latest` names, and whether a newer tag folder beside it suggests a save that never finished
    (DeepSpeed writes `latest` after every file of the checkpoint is saved)."""
    rel = relative(path, root)
    tag = _latest_tag(path)
    if tag is None:
        return Note(rel, "DeepSpeed `latest` file could not be read; it is not needed")
    target = relative(path.parent / tag, root)
    named = [c for c in found if target == c.path or target.startswith(c.path + "/")]
    if not named:
        return Note(rel, f"DeepSpeed `latest` names tag {tag}, but {target} is not in the run directory")
    step = named[0].step
    prefix = relative(path.parent, root) + "/" if path.parent != root else ""
    siblings = [c for c in found if c.format == "deepspeed" and c.path.startswith(prefix) and "/" not in
                c.path[len(prefix):] and c.step is not None]
    newer = [c for c in siblings if step is not None and c.step > step]
    if newer:
        last = max(newer, key=lambda c: c.step)
        return Note(rel, f"DeepSpeed `latest` names tag {tag} (step {step}), but {last.path} (step {last.step}) is "
                         "newer: its save may not have finished")
    return Note(rel, f"DeepSpeed `latest` names tag {tag} ({target}) as the newest checkpoint")


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
    zero3: bool = False  # a ZeRO-3 model-states file was read: its weights are placeholders, the real ones are sharded
    partition_count: int | None = None  # data-parallel ranks a ZeRO checkpoint was saved from

    def stats(self) -> CheckpointStats:
        return CheckpointStats(
            tensors=tuple(self.tensors),
            optimizer_tensors=tuple(m.stats(key) for key, m in sorted(self.optimizer.items())),
            optimizer_groups=tuple(self.groups), optimizer_step=self.optimizer_step, scaler=self.scaler,
            scheduler=self.scheduler, config=self.config)


def _read_group(group: _Group, root: Path, scan: bool,
                notes: list[Note]) -> tuple[Checkpoint | None, Mapping | None]:
    rel = relative(group.path, root)
    # DeepSpeed's files last: where the HF Trainer also exported the weights, those are the ones listed.
    files = sorted((f for f in group.files if not NOT_LOADED.match(f.name)),
                   key=lambda f: (bool(DS_FILE.search(f.name)), f))
    if not files:  # a lone training_args.bin / rng_state.pth: nothing we are willing to load
        return None, None
    fmt = {"hf": "hf", "deepspeed": "deepspeed"}.get(group.kind) or _format_from_name(group.path)
    step = group.step if group.step is not None else step_from_name(group.path.name)
    pointers = [f for f in files if _is_lfs_pointer(f)]
    if pointers:
        names = ", ".join(relative(f, root) for f in pointers)
        return Checkpoint(rel, step, "lfs-pointer", error=(
            f"Git LFS pointer file(s), the weights were not downloaded ({names}); run `git lfs pull`")), None
    if not scan:
        return Checkpoint(rel, step, fmt), None
    parts, errors = _Parts(), []
    shards = [f for f in files if DS_OPTIM_SHARD.match(f.name)]
    for file in files:
        if DS_FILE.search(file.name):
            error = _read_deepspeed(file, parts, optimizer_in_shards=bool(shards))
        else:
            error = _read_file(file, parts)
        if error:
            errors.append(error if len(files) == 1 and group.kind == "file" else f"{file.name}: {error}")
    if parts.skipped:
        notes.append(Note(rel, "tensors with a dtype that has no float64 view (quantized, sparse or meta) "
                               "were not scanned", count=parts.skipped))
    if any(DS_FILE.search(f.name) for f in files):
        notes.extend(_deepspeed_notes(rel, files, shards, parts))
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
    obj, error = _load_torch(path)
    if error:
        return error
    _read_loaded(obj, parts)
    return None


def _load_torch(path: Path, deepspeed_objects: bool = False) -> tuple[Any, str | None]:
    """(the loaded object, None) or (None, why it was not loaded). deepspeed_objects: names under `deepspeed.` become
    inert records (see the module docstring); any other unsafe global is still refused."""
    import torch

    try:
        with open(path, "rb") as handle:
            head = handle.read(len(LEGACY_TORCH_MAGIC))
    except OSError as error:
        return None, f"unreadable: {error.strerror or error}"
    if not head:
        return None, "empty file"
    if not head.startswith((ZIP_MAGIC, PICKLE_PROTO)):
        return None, "not a torch.save file (neither a zip archive nor a pickle)"
    # mmap needs torch.save's zip format; legacy files (and anything else) are read without it.
    mmap = head.startswith(ZIP_MAGIC)
    inflated = _inflated_bytes(path) if mmap else 0
    if inflated > MAX_INFLATED_BYTES:
        return None, (f"refused: {path.name} has compressed entries that inflate to {inflated / 2**30:.1f} GiB "
                      "(torch.save writes none; not loaded)")
    stand_ins = []
    if deepspeed_objects and mmap:
        try:  # a static listing of the pickle's GLOBAL opcodes: nothing is built
            unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # noqa: BLE001 - a corrupt archive: the load below says what is wrong
            unsafe = []
        foreign = [name for name in unsafe if not name.startswith(DS_GLOBAL_PREFIX)]
        if foreign:
            return None, (f"refused: {path.name} needs arbitrary Python objects, e.g. {foreign[0]} "
                          "(not loaded, nothing executed)")
        stand_ins = [(_deepspeed_stand_in(name), name) for name in unsafe]
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(stand_ins):
            warnings.simplefilter("ignore")  # torch warns about pickle protocols; the outcome is reported instead
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap), None
    except Exception as error:  # noqa: BLE001 - torch raises many types for corrupt or hostile files
        return None, _load_failure(path, error)


def _inflated_bytes(path: Path) -> int:
    """What a zip archive's compressed entries declare they inflate to (the central directory only: nothing is
    inflated); 0 where the archive cannot be listed (torch.load then says what is wrong)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return sum(i.file_size for i in archive.infolist() if i.compress_type != zipfile.ZIP_STORED)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return 0


def _read_loaded(obj: Any, parts: _Parts) -> None:
    """Sort a loaded torch.save object into `parts`, with its step and config."""
    if isinstance(obj, Mapping):
        _read_header(obj, parts)
    _walk(obj, "", parts, 0)


def _read_header(obj: Mapping, parts: _Parts) -> None:
    if "pytorch-lightning_version" in obj or ("state_dict" in obj and "global_step" in obj):
        parts.lightning = True
    parts.step = _step_of(obj) if _step_of(obj) is not None else parts.step
    if parts.config is None:
        parts.config = _config_of(obj)


# --- DeepSpeed --------------------------------------------------------------------------------------------------------

class _DeepSpeedObject:
    """A DeepSpeed object in a checkpoint, kept as data: the arguments it was rebuilt with and its pickled state.

    Never the class the file names: the weights_only loader maps each `deepspeed.` name to a subclass of this one,
    which stores what it is given and runs nothing else.
    """

    ds_name = ""
    args: tuple = ()
    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


_STAND_INS: dict[str, type] = {}


def _deepspeed_stand_in(name: str) -> type:
    if name not in _STAND_INS:
        _STAND_INS[name] = type(name.rsplit(".", 1)[-1], (_DeepSpeedObject,), {"ds_name": name})
    return _STAND_INS[name]


def _read_deepspeed(path: Path, parts: _Parts, optimizer_in_shards: bool) -> str | None:
    """One file of a DeepSpeed tag folder: model states, a ZeRO optimizer shard, a pipeline layer or an MoE file."""
    obj, error = _load_torch(path, deepspeed_objects=True)
    if error:
        return error
    if not isinstance(obj, Mapping):
        _read_loaded(obj, parts)
        return None
    if DS_OPTIM_SHARD.match(path.name):  # {"optimizer_state_dict", "ds_config", "ds_version"} (_save_zero_checkpoint)
        state = obj.get("optimizer_state_dict")
        if not isinstance(state, Mapping):
            return "not a ZeRO optimizer shard: no optimizer_state_dict"
        _add_deepspeed_optimizer(state, parts)
        if parts.config is None:
            parts.config = _config_of(obj)
        return None
    layer = DS_LAYER.match(path.name)
    if layer:  # a pipeline stage's layer: its plain state_dict, named after the layer
        _add_module(obj, f"layer_{layer[1]}.", parts)
        return None
    if "module" not in obj and "optimizer" not in obj:  # an MoE expert's state_dict
        _read_loaded(obj, parts)
        return None
    _read_header(obj, parts)
    state = dict(obj)
    module, optimizer = state.pop("module", None), state.pop("optimizer", None)
    if DS_ZERO3_MODEL.match(path.name) and isinstance(module, Mapping):
        # ZeRO-3 parameters are empty placeholders here (their values are in the shards); buffers are whole.
        parts.zero3 = True
        buffers = {str(name) for name in _as_list(state.get("buffer_names") or [])}
        module = {key: value for key, value in module.items() if key in buffers}
    if isinstance(module, Mapping):
        _add_module(module, "", parts)
    # Without ZeRO the optimizer is saved here; BF16_Optimizer saves it in its shards too: count it once.
    if isinstance(optimizer, Mapping) and not optimizer_in_shards:
        if _is_optimizer(optimizer):
            _add_optimizer(optimizer, parts)
        else:
            _add_deepspeed_optimizer(optimizer, parts)
    for key in DS_BOOKKEEPING:
        state.pop(key, None)
    _walk(state, "", parts, 0)  # lr_scheduler and whatever client_state the training script added
    return None


def _add_module(module: Mapping, prefix: str, parts: _Parts) -> None:
    """Weights from a state_dict, each name once: ZeRO-3 ranks repeat the buffers, the HF Trainer exports them too."""
    seen = {t.name for t in parts.tensors}
    for key, value in module.items():
        name = f"{prefix}{key}"
        if name not in seen:
            _walk(value, name, parts, 1)


def _add_deepspeed_optimizer(state: Mapping, parts: _Parts) -> None:
    """A DeepSpeed optimizer's state_dict (ZeRO-1/2/3, BF16_Optimizer, FP16_Optimizer).

    The wrapped torch optimizer holds one flat partition per param group and data-parallel rank: its moments are
    pooled per state key (exp_avg, exp_avg_sq) over every shard, so the statistics are those of the whole moment
    (plus the few zeros DeepSpeed pads a partition with for alignment). The flat fp32 master-weight partitions are
    pooled the same way, as optimizer state named fp32_master_weights: they have no per-tensor names. Param groups
    are taken once, since every shard repeats them.
    """
    with_groups = not parts.groups
    for key in DS_BASE_OPTIMIZER_KEYS:
        base = state.get(key)
        if isinstance(base, Mapping) and _is_optimizer(base):
            _add_optimizer(base, parts, with_groups)
        elif isinstance(base, (list, tuple)):  # an elastic ZeRO-1/2 checkpoint: per-group states, no param groups
            for param_state in _mappings_in(base):
                _add_param_state(param_state, parts)
    _note_optimizer_step(state.get("base_optimizer_state_step"), parts)
    for key in DS_MASTER_KEYS:
        for tensor in _tensors_in(state.get(key)):
            _accumulate(parts.optimizer.setdefault(DS_MASTER, _Moments()), tensor, parts)
    counts = [c for c in _as_list(state.get("partition_count")) if isinstance(c, int) and not isinstance(c, bool)]
    if counts:  # one per param group (they differ for MoE experts); the largest is the data-parallel world size
        parts.partition_count = max(counts)
    scaler = _deepspeed_scaler(state)
    if scaler is not None:
        parts.scaler = scaler


def _deepspeed_scaler(state: Mapping) -> dict[str, Any] | None:
    """The loss scale: a (Dynamic)LossScaler object under ZeRO, plain keys in FP16_Optimizer. None when it does not
    scale: DeepSpeed keeps a static scaler of 1.0 for bf16 and fp32 training."""
    scaler = state.get("loss_scaler")
    fields = scaler.state if isinstance(scaler, _DeepSpeedObject) else scaler if scaler is not None else state
    if not isinstance(fields, Mapping) or "cur_scale" not in fields:
        return None
    dynamic = fields.get("dynamic", state.get("dynamic_loss_scale"))
    if not dynamic and _number(fields["cur_scale"]) == 1.0:
        return None
    found = {"cur_scale": fields["cur_scale"]}
    if "scale_window" in fields:
        found["growth_interval"] = fields["scale_window"]
    return _scaler(found)


def _mappings_in(value: Any, depth: int = 0) -> Iterator[Mapping]:
    if isinstance(value, Mapping):
        yield value
    elif isinstance(value, (list, tuple)) and depth < MAX_NESTING:
        for item in value:
            yield from _mappings_in(item, depth + 1)


def _tensors_in(value: Any, depth: int = 0) -> Iterator:
    import torch

    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)) and depth < MAX_NESTING:
        for item in value:
            yield from _tensors_in(item, depth + 1)


def _deepspeed_notes(rel: str, files: list[Path], shards: list[Path], parts: _Parts) -> list[Note]:
    """What a DeepSpeed tag folder lacks: its model states, some ZeRO shards, or (ZeRO-3) per-tensor weights."""
    notes = []
    if not any(DS_MODEL_STATES.search(f.name) for f in files):
        notes.append(Note(rel, "DeepSpeed checkpoint without its model states (mp_rank_00_model_states.pt): "
                               "DeepSpeed cannot resume from it"))
    ranks: dict[str, set[int]] = {}
    for match in (DS_OPTIM_SHARD.match(f.name) for f in shards):
        ranks.setdefault(match["mp"], set()).add(int(match["dp"]))
    expected = parts.partition_count
    if expected and ranks:
        missing = sorted(set(range(expected)) - min(ranks.values(), key=len))
        if missing:
            shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            notes.append(Note(rel, f"{expected - len(missing)} of {expected} ZeRO optimizer shards are here "
                                   f"(data-parallel ranks {shown} missing): the optimizer statistics cover only "
                                   "those present, and DeepSpeed cannot resume from it"))
    if parts.zero3 and all(DS_FILE.search(f.name) for f in files):
        notes.append(Note(rel, "ZeRO-3 checkpoint: the weights exist only as flat fp32 partitions in the optimizer "
                               f"shards, so they have no per-tensor statistics (scanned as {DS_MASTER})"))
    return notes


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


def _add_optimizer(obj: Mapping, parts: _Parts, with_groups: bool = True) -> None:
    for group in obj["param_groups"]:
        if isinstance(group, Mapping):
            if with_groups:
                kept = {k: _plain(group[k]) for k in GROUP_FIELDS if k in group}
                kept["params"] = len(group.get("params", ()) or ())
                parts.groups.append(kept)
            _note_optimizer_step(group.get("step"), parts)  # apex's and DeepSpeed's FusedAdam count per group
    for param_state in obj["state"].values():
        if isinstance(param_state, Mapping):
            _add_param_state(param_state, parts)


def _add_param_state(param_state: Mapping, parts: _Parts) -> None:
    import torch

    for key, value in param_state.items():
        if key == "step":
            _note_optimizer_step(value, parts)
        elif isinstance(value, torch.Tensor):
            _accumulate(parts.optimizer.setdefault(str(key), _Moments()), value, parts)


def _note_optimizer_step(value: Any, parts: _Parts) -> None:
    step = _number(value)
    if step is not None and math.isfinite(step):
        parts.optimizer_step = max(parts.optimizer_step or 0, int(step))


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


