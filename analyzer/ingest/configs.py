"""Hyperparameter files: JSON/YAML configs (HF config.json, args.json, config.yaml, DeepSpeed configs, ...)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

from analyzer.errors import InputError
from analyzer.run import HPARAM_ALIASES, Ingested, Note, canonical_hparam
from analyzer.ingest.paths import relative

FORMAT = "config"

SUFFIXES = (".json", ".yaml", ".yml")
MAX_NAMED_BYTES = 1024 * 1024  # a config named as one is at most this big; larger files are data
MAX_UNNAMED_BYTES = 16 * 1024  # an unnamed JSON/YAML is parsed in sniff only when this small
MAX_HPARAMS = 2000  # flattened keys kept per file: a config, not a dataset
MAX_DEPTH = 12
MAX_NODES = 20 * MAX_HPARAMS  # keys visited per file, leaves or not: nested aliases of empty mappings end too
MIN_KNOWN_KEYS = 2  # an unnamed file must hold this many known hyperparameters (lr, batch_size, ...)

# File stems that hold training hyperparameters.
CONFIG_NAME = re.compile(r"(config|args|hparams?|hyper_?param(eter)?s?|params|settings|cfg|opt|deepspeed|ds_)",
                         re.IGNORECASE)
# JSON/YAML files that frameworks write beside a run but that are not the run's hyperparameters: a generation
# config's `temperature` is a sampling setting, results files hold final metrics (`epoch` would pass for a setting).
NOT_CONFIGS = re.compile(
    r"(generation_config|tokenizer(_config)?|special_tokens_map|added_tokens|vocab|merges|preprocessor_config|"
    r"processor_config|feature_extractor_config|image_processor_config|chat_template|trainer_state|"
    r".*results?|.*\.index|model_index|wandb-metadata|wandb-summary|meta|MLmodel|conda|requirements|"
    r"python_env|dataset_info|state)",
    re.IGNORECASE)
# Mappings that describe labels or files, not settings.
SKIPPED_KEYS = {"id2label", "label2id", "weight_map", "auto_map", "_name_or_path"}
_PYTHON_TAG = re.compile(r"^tag:yaml\.org,2002:python/[\w/]+:")  # `!!python/name:torch.optim.AdamW` -> the name
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_KNOWN = set(HPARAM_ALIASES) | set(HPARAM_ALIASES.values())


def sniff(path: Path) -> bool:
    if path.suffix.lower() not in SUFFIXES or NOT_CONFIGS.fullmatch(path.stem):
        return False
    size = path.stat().st_size
    if CONFIG_NAME.search(path.stem):
        return 0 < size <= MAX_NAMED_BYTES and _starts_like_mapping(path)
    if not 0 < size <= MAX_UNNAMED_BYTES:
        return False
    try:
        value = _parse(path.read_bytes(), path.suffix.lower())
    except (ValueError, RecursionError):
        return False
    if not isinstance(value, Mapping):
        return False
    flat = flatten(value)
    known = {canonical_hparam(k) for k in flat} & _KNOWN
    return len(known) >= MIN_KNOWN_KEYS


def _starts_like_mapping(path: Path) -> bool:
    """A JSON config is an object; a YAML config is `key: value` lines, not a list or a wall of text."""
    with open(path, "rb") as fh:
        head = fh.read(2048).lstrip(b"\xef\xbb\xbf").lstrip()
    if path.suffix.lower() == ".json":
        return head.startswith(b"{")
    text = head.decode("utf-8", "replace")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "---", "%"))]
    return bool(lines) and bool(re.match(r"\s*[^\s:#-][^:]*:(\s|$)", lines[0]))


def read(paths: list[Path], root: Path) -> Ingested:
    out = Ingested(FORMAT)
    # deeper files first, so a run's own top-level config wins over copies in checkpoint folders
    for path in sorted(paths, key=lambda p: (-len(p.relative_to(root).parts) if _under(p, root) else 0, str(p))):
        file = relative(path, root)
        value = load(path, file, out.notes)
        if value is None:
            continue
        if not isinstance(value, Mapping):
            out.notes.append(Note(file, "not a mapping of settings; not read"))
            continue
        out.add_hparams(settings(value), file)
    return out


def load(path: Path, file: str, notes: list[Note]) -> Any:
    """Parse a JSON or YAML file; a broken config is reported as a note (the logs may still be good)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}", path=file) from None
    try:
        return _parse(data, path.suffix.lower())
    except json.JSONDecodeError as exc:
        notes.append(Note(file, f"not valid JSON ({exc.msg}); not read", line=exc.lineno))
    except ValueError as exc:  # yaml.YAMLError is re-raised as ValueError by _parse
        line = getattr(exc, "line", None)
        notes.append(Note(file, f"not valid YAML ({str(exc).splitlines()[0][:120]}); not read", line=line))
    except RecursionError:
        notes.append(Note(file, "nested too deeply; not read"))
    return None


def _parse(data: bytes, suffix: str) -> Any:
    text = data.decode("utf-8", "replace").lstrip("\ufeff")
    if suffix == ".json":
        return json.loads(text)
    return load_yaml(text)


class YamlError(ValueError):
    """A YAML file we could not parse; `line` is 1-based where known."""

    def __init__(self, message: str, line: int | None):
        super().__init__(message)
        self.line = line


def load_yaml(text: str) -> Any:
    """yaml.safe_load that tolerates python tags (`!!python/object:argparse.Namespace`) without building objects.

    A tagged mapping or list is read as a plain one, a tagged scalar as its text (or its tag name when empty,
    as in `!!python/name:torch.optim.AdamW ''`). Nothing is imported, nothing is constructed.
    """
    import yaml

    try:
        return yaml.load(text, Loader=_tolerant_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YamlError(f"{exc.problem or exc}", mark.line + 1 if mark else None) from None
    except (yaml.YAMLError, TypeError, ValueError) as exc:
        raise YamlError(str(exc) or type(exc).__name__, None) from None


_LOADER = None


def _tolerant_loader():
    global _LOADER
    if _LOADER is None:
        import yaml

        class TolerantLoader(yaml.SafeLoader):
            """SafeLoader that reads unknown tags as plain data."""

        def construct_unknown(loader, tag_suffix, node):
            if isinstance(node, yaml.MappingNode):
                return loader.construct_mapping(node, deep=True)
            if isinstance(node, yaml.SequenceNode):
                return loader.construct_sequence(node, deep=True)
            return loader.construct_scalar(node) or _PYTHON_TAG.sub("", tag_suffix)

        TolerantLoader.add_multi_constructor("", construct_unknown)
        _LOADER = TolerantLoader
    return _LOADER


def flatten(value: Mapping, limit: int = MAX_HPARAMS) -> dict[str, Any]:
    """A nested config as {"a.b.c": leaf} (see `bounded`), for counting the settings a file holds."""
    out: dict[str, Any] = {}

    def walk(node: Mapping, prefix: str) -> None:
        for key, item in node.items():
            if isinstance(item, Mapping):
                walk(item, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = item

    walk(bounded(value, limit), "")
    return out


def bounded(value: Mapping, limit: int = MAX_HPARAMS) -> dict[str, Any]:
    """A copy of a nested config cut to MAX_DEPTH levels and `limit` leaves (YAML aliases can nest without end),
    ready for `Ingested.add_hparams`. W&B's `{key: {desc: ..., value: v}}` entries are unwrapped, label maps
    dropped, and numbers that YAML 1.1 left as text (`1e-4`) become numbers."""
    leaves = nodes = 0

    def walk(node: Mapping, depth: int) -> dict[str, Any]:
        nonlocal leaves, nodes
        out: dict[str, Any] = {}
        for key, item in node.items():
            nodes += 1
            if leaves >= limit or nodes >= MAX_NODES:
                break
            if str(key) in SKIPPED_KEYS:
                continue
            if isinstance(item, Mapping) and "value" in item and set(item) <= {"value", "desc"}:
                item = item["value"]
            if isinstance(item, Mapping):
                if depth < MAX_DEPTH:
                    out[str(key)] = walk(item, depth + 1)
            else:
                out[str(key)] = _number_text(item)
                leaves += 1
        return out

    return walk(value, 0)


def settings(value: Mapping, limit: int = MAX_HPARAMS) -> dict[str, Any]:
    """`bounded(value)` without the nulls whose name another key of the same config sets: HF 4.x's
    TrainingArguments hold `per_device_train_batch_size: 8` and then the deprecated `per_gpu_train_batch_size:
    null`, both batch_size, and the null read last would hide the 8. A null no other key sets is kept (Lightning's
    `gradient_clip_val: null` says there is no clipping)."""
    out = bounded(value, limit)
    set_names = {canonical_hparam(key) for key, item in flatten(out).items() if item is not None}

    def prune(node: dict) -> dict:
        return {key: prune(item) if isinstance(item, dict) else item for key, item in node.items()
                if not (item is None and canonical_hparam(key) in set_names)}

    return prune(out)


def _number_text(value: Any) -> Any:
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        number = float(value)
        return int(number) if number.is_integer() and re.fullmatch(r"[+-]?\d+", value.strip()) else number
    return value


def _under(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


