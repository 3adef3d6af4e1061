"""Checkpoint reader: stats of weights and optimizer state, framework layouts, and hostile or broken files.

The DeepSpeed folders are built here with torch.save in the layout and key names of DeepSpeed's own save path
(deepspeedai/DeepSpeed master): deepspeed/runtime/engine.py (save_checkpoint writes save_dir/<tag>/ with tag
global_step{N} and save_dir/latest; _save_checkpoint's model-states dict; _save_zero_checkpoint's
{"optimizer_state_dict", "ds_config", "ds_version"}; _get_ckpt_name, _get_rank_zero_ckpt_name and
_get_zero_ckpt_prefix for the file names), deepspeed/runtime/zero/stage_1_and_2.py (state_dict),
deepspeed/runtime/zero/stage3.py (_rigid_state_dict), deepspeed/runtime/fp16/loss_scaler.py (LossScaler,
DynamicLossScaler), deepspeed/runtime/zero/config.py (ZeroStageEnum), deepspeed/utils/tensor_fragment.py
(fragment_address) and deepspeed/checkpoint/constants.py (the key names). The DeepSpeed classes are pickled under their
real module paths from stand-ins registered in sys.modules only while saving.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import pickle
import shutil
import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from analyzer.ingest import checkpoints

FRAMEWORKS = Path(__file__).resolve().parents[1] / "fixtures" / "frameworks"
HF_RUN = FRAMEWORKS / "hf_trainer_healthy"
LIGHTNING_RUN = FRAMEWORKS / "lightning_csv"


def read_dir(root: Path, scan: bool = True):
    files = sorted(p for p in root.rglob("*") if p.is_file() and checkpoints.sniff(p))
    return checkpoints.read(files, root, scan=scan)


def trainer_checkpoint(path: Path, *, step: int | None = 400, nan_weight: int = 0, nan_exp_avg_sq: int = 0) -> None:
    """A reference-trainer checkpoint: {"model", "optimizer", "scheduler", "scaler", "step", "config"}."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    state = model.state_dict()
    state["0.weight"].view(-1)[:nan_weight] = float("nan")
    opt_state = optimizer.state_dict()
    opt_state["state"][2]["exp_avg_sq"].view(-1)[:nan_exp_avg_sq] = float("inf")
    scaler = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 17}
    payload = {"model": state, "optimizer": opt_state, "scheduler": scheduler.state_dict(), "scaler": scaler,
               "config": {"lr": 3e-4, "batch_size": 8, "optim": {"weight_decay": 0.1}}}
    if step is not None:
        payload["step"] = step
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)


# --- the reference trainer's layout -----------------------------------------------------------------------------------

def test_trainer_checkpoint_counts_planted_nonfinite_values(tmp_path):
    trainer_checkpoint(tmp_path / "checkpoints" / "step_000400.pt", nan_weight=3, nan_exp_avg_sq=2)
    (ckpt,) = read_dir(tmp_path).checkpoints
    assert (ckpt.path, ckpt.step, ckpt.format, ckpt.error) == ("checkpoints/step_000400.pt", 400, "torch", None)
    weights = {t.name: t for t in ckpt.stats.tensors}
    assert set(weights) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert weights["0.weight"].nonfinite == 3 and weights["0.weight"].shape == (8, 4)
    assert weights["1.weight"].nonfinite == 0
    optimizer = {t.name: t for t in ckpt.stats.optimizer_tensors}
    assert optimizer["exp_avg_sq"].nonfinite == 2 and optimizer["exp_avg"].nonfinite == 0
    assert optimizer["exp_avg_sq"].numel == sum(p.numel for p in weights.values())
    assert ckpt.stats.nonfinite == 5


def test_trainer_checkpoint_optimizer_scaler_scheduler_and_config(tmp_path):
    trainer_checkpoint(tmp_path / "checkpoints" / "step_000400.pt")
    piece = read_dir(tmp_path)
    stats = piece.checkpoints[0].stats
    assert stats.optimizer_step == 1
    (group,) = stats.optimizer_groups
    assert group["lr"] == pytest.approx(1.5e-4) and group["betas"] == [0.9, 0.95] and group["weight_decay"] == 0.1
    assert stats.scaler == {"scale": 1024.0, "growth_tracker": 17, "growth_interval": 2000}
    assert stats.scheduler["last_lr"] == [pytest.approx(1.5e-4)]
    assert stats.config["optim"] == {"weight_decay": 0.1}
    hparams = {name: (value, file, key) for name, value, file, key in piece.hparams}
    assert hparams["lr"] == (3e-4, "checkpoints/step_000400.pt", "lr")
    assert hparams["weight_decay"] == (0.1, "checkpoints/step_000400.pt", "optim.weight_decay")


def test_step_comes_from_the_name_when_the_dict_has_none(tmp_path):
    trainer_checkpoint(tmp_path / "ckpt" / "step_001200.pt", step=None)
    assert read_dir(tmp_path).checkpoints[0].step == 1200


@pytest.mark.parametrize("name, step", [
    ("step_000400.pt", 400), ("checkpoint-400", 400), ("epoch=3-step=1200.ckpt", 1200), ("last.ckpt", None),
    ("global_step800", 800), ("iter_0001000", 1000), ("model.safetensors", None),
])
def test_step_from_name(name, step):
    assert checkpoints.step_from_name(name) == step


def test_stats_match_a_direct_computation_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "CHUNK_ELEMENTS", 7)  # many chunks, uneven last one
    values = torch.randn(5, 13, dtype=torch.float64) * 3 + 1
    values[2, 3] = float("nan")
    values[4, 0] = float("-inf")
    torch.save({"w": values.float(), "t": values.float().t()}, tmp_path / "x.pt")  # t: not contiguous
    stats = {t.name: t for t in read_dir(tmp_path).checkpoints[0].stats.tensors}
    finite = values.float().double()[torch.isfinite(values)]
    for name in ("w", "t"):
        got = stats[name]
        assert got.nonfinite == 2 and got.numel == 65
        assert got.norm == pytest.approx(float(finite.norm()), rel=1e-9)
        assert got.std == pytest.approx(float(finite.std(unbiased=False)), rel=1e-9)
        assert got.absmax == pytest.approx(float(finite.abs().max()))
    assert stats["t"].shape == (13, 5)


def test_all_nonfinite_tensor_has_zero_norm_not_nan(tmp_path):
    torch.save({"w": torch.full((4,), float("nan"))}, tmp_path / "x.pt")
    (stats,) = read_dir(tmp_path).checkpoints[0].stats.tensors
    assert (stats.nonfinite, stats.norm, stats.std, stats.absmax) == (4, 0.0, 0.0, 0.0)


def test_bfloat16_and_integer_tensors_are_scanned(tmp_path):
    torch.save({"b": torch.tensor([1.0, -2.0], dtype=torch.bfloat16), "i": torch.tensor([3, 4])}, tmp_path / "x.pt")
    stats = {t.name: t for t in read_dir(tmp_path).checkpoints[0].stats.tensors}
    assert stats["b"].dtype == "bfloat16" and stats["b"].absmax == 2.0
    assert stats["i"].dtype == "int64" and stats["i"].norm == 5.0


# --- framework layouts ------------------------------------------------------------------------------------------------

def test_hf_checkpoint_folder_is_one_checkpoint_with_weights_and_optimizer():
    piece = read_dir(HF_RUN)
    folders = {c.path: c for c in piece.checkpoints if c.format == "hf"}
    assert sorted(folders) == ["checkpoint-20", "checkpoint-40", "checkpoint-60"]
    ckpt = folders["checkpoint-40"]
    assert ckpt.step == 40 and ckpt.error is None
    assert {t.name for t in ckpt.stats.tensors} >= {"transformer.wte.weight", "transformer.h.0.attn.c_attn.weight"}
    assert {t.name for t in ckpt.stats.optimizer_tensors} == {"exp_avg", "exp_avg_sq"}
    assert ckpt.stats.nonfinite == 0
    assert ckpt.stats.optimizer_step == 40
    assert [g["weight_decay"] for g in ckpt.stats.optimizer_groups] == [0.01, 0.0]
    assert ckpt.stats.scheduler["last_lr"][0] == pytest.approx(ckpt.stats.optimizer_groups[0]["lr"])


def test_hf_top_level_safetensors_is_a_checkpoint_without_step():
    top = [c for c in read_dir(HF_RUN).checkpoints if c.path == "model.safetensors"]
    assert len(top) == 1 and top[0].format == "safetensors" and top[0].step is None and top[0].stats.tensors


def test_json_files_in_hf_folders_are_left_to_other_readers():
    assert not checkpoints.sniff(HF_RUN / "checkpoint-20" / "trainer_state.json")
    assert not checkpoints.sniff(HF_RUN / "checkpoint-20" / "config.json")
    assert checkpoints.sniff(HF_RUN / "checkpoint-20" / "training_args.bin")


def test_training_args_and_rng_state_are_never_loaded(monkeypatch):
    loaded = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda path, *a, **k: loaded.append(Path(path).name) or real_load(path, *a, **k))
    piece = read_dir(HF_RUN)
    assert loaded and not any(n == "training_args.bin" or n.startswith("rng_state") for n in loaded)
    assert any(n.file == "training_args.bin" and "not loaded" in n.message for n in piece.notes)
    assert all(c.error is None for c in piece.checkpoints)


def test_lightning_ckpt():
    piece = read_dir(LIGHTNING_RUN)
    ckpts = [c for c in piece.checkpoints if c.path.endswith("last.ckpt")]
    assert ckpts and all(c.format == "lightning" and c.error is None for c in ckpts)
    ckpt = ckpts[-1]
    assert ckpt.step == torch.load(LIGHTNING_RUN / ckpt.path, weights_only=True)["global_step"]
    assert {t.name for t in ckpt.stats.tensors} == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}
    assert [t.name for t in ckpt.stats.optimizer_tensors] == ["momentum_buffer"]
    assert ckpt.stats.optimizer_groups[0]["momentum"] == 0.9
    assert ckpt.stats.scheduler["last_lr"]
    assert ckpt.stats.config["optimizer"] == "SGD"
    assert ("lr", 0.05) in {(name, value) for name, value, _, _ in piece.hparams}


def test_lightning_step_comes_from_the_file_name_without_loading(tmp_path):
    (tmp_path / "epoch=3-step=1200.ckpt").write_bytes(b"not read")
    (ckpt,) = read_dir(tmp_path, scan=False).checkpoints
    assert (ckpt.step, ckpt.format, ckpt.stats, ckpt.error) == (1200, "lightning", None, None)


def test_safetensors_with_nan_read_in_row_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "CHUNK_ELEMENTS", 10)
    weight = torch.ones(9, 4)
    weight[7, 1] = float("nan")
    save_file({"w": weight, "b": torch.zeros(3)}, str(tmp_path / "model.safetensors"))
    stats = {t.name: t for t in read_dir(tmp_path).checkpoints[0].stats.tensors}
    assert stats["w"].shape == (9, 4) and stats["w"].nonfinite == 1 and stats["w"].norm == pytest.approx(35 ** 0.5)
    assert stats["b"].dtype == "float32"


def test_shards_are_one_checkpoint(tmp_path):
    save_file({"a": torch.ones(2)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b": torch.ones(3)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    (ckpt,) = read_dir(tmp_path).checkpoints
    assert ckpt.path == "model-00001-of-00002.safetensors" and {t.name for t in ckpt.stats.tensors} == {"a", "b"}


def test_scan_false_lists_without_loading(tmp_path, monkeypatch):
    trainer_checkpoint(tmp_path / "checkpoints" / "step_000400.pt")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("loaded"))
    (ckpt,) = read_dir(tmp_path, scan=False).checkpoints
    assert (ckpt.step, ckpt.format, ckpt.stats) == (400, "torch", None)


# --- hostile and broken files -----------------------------------------------------------------------------------------

class _CreatesFile:
    """Unpickling this runs os.system, which would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    trainer_checkpoint(run / "step_000400.pt")
    payload = torch.load(run / "step_000400.pt", weights_only=True)
    payload["evil"] = _CreatesFile(marker)
    torch.save(payload, run / "step_000400.pt")
    with open(run / "raw.pth", "wb") as handle:  # a bare protocol-2 pickle, not even a torch file
        pickle.dump(_CreatesFile(marker), handle, protocol=2)
    found = {c.path: c for c in read_dir(run).checkpoints}
    for name in ("step_000400.pt", "raw.pth"):
        assert found[name].error.startswith("refused: ")
        assert "needs arbitrary Python objects" in found[name].error and "system" in found[name].error
        assert "nothing executed" in found[name].error and found[name].stats is None
    assert not marker.exists()
    pickle.loads((run / "raw.pth").read_bytes())  # the payload is live: plain unpickling runs it
    assert marker.exists()


def test_lfs_pointer_is_reported(tmp_path):
    (tmp_path / "pytorch_model.bin").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 498000000\n")
    (ckpt,) = read_dir(tmp_path).checkpoints
    assert ckpt.format == "lfs-pointer" and "not downloaded" in ckpt.error


def test_lfs_pointer_inside_hf_folder(tmp_path):
    folder = tmp_path / "checkpoint-500"
    shutil.copytree(HF_RUN / "checkpoint-20", folder)
    (folder / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\nsize 1\n")
    (ckpt,) = read_dir(tmp_path).checkpoints
    assert (ckpt.path, ckpt.step, ckpt.format) == ("checkpoint-500", 500, "lfs-pointer")
    assert "checkpoint-500/model.safetensors" in ckpt.error


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.95])
def test_truncated_zip_checkpoint_is_an_error_not_a_crash(tmp_path, fraction):
    trainer_checkpoint(tmp_path / "full" / "step_000400.pt")
    data = (tmp_path / "full" / "step_000400.pt").read_bytes()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "step_000400.pt").write_bytes(data[: int(len(data) * fraction)])
    (ckpt,) = read_dir(tmp_path / "run").checkpoints
    assert ckpt.step == 400 and ckpt.error.startswith("truncated or corrupt") and ckpt.stats is None


def test_truncated_safetensors_is_an_error(tmp_path):
    save_file({"w": torch.ones(100)}, str(tmp_path / "full.safetensors"))
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "full.safetensors").write_bytes(data[:-50])
    (ckpt,) = read_dir(tmp_path).checkpoints
    assert ckpt.error.startswith("unreadable safetensors file")


def test_legacy_non_zip_file_loads_without_mmap(tmp_path):
    torch.save({"model": {"w": torch.tensor([3.0, 4.0])}, "step": 7}, tmp_path / "old.pt",
               _use_new_zipfile_serialization=False)
    (ckpt,) = read_dir(tmp_path).checkpoints
    assert ckpt.error is None and ckpt.step == 7 and ckpt.stats.tensors[0].norm == 5.0


def test_truncated_legacy_file(tmp_path):
    torch.save({"w": torch.ones(50)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "old.pt").write_bytes((tmp_path / "old.pt").read_bytes()[:60])
    (ckpt,) = read_dir(tmp_path).checkpoints
    assert ckpt.error.startswith("truncated or corrupt")


@pytest.mark.parametrize("content", [b"", b"hello world\n", bytes(range(256)) * 4])
def test_garbage_and_empty_files_are_errors(tmp_path, content):
    (tmp_path / "model.pt").write_bytes(content)
    (ckpt,) = read_dir(tmp_path).checkpoints
    assert ckpt.error and ckpt.stats is None


def test_bin_files_are_claimed_only_when_they_are_checkpoints(tmp_path):
    (tmp_path / "train_text_document.bin").write_bytes(bytes(1000))  # a Megatron data set
    torch.save({"w": torch.ones(2)}, tmp_path / "weights_v2.bin")
    assert not checkpoints.sniff(tmp_path / "train_text_document.bin")
    assert checkpoints.sniff(tmp_path / "weights_v2.bin")
    assert checkpoints.sniff(tmp_path / "pytorch_model-00001-of-00002.bin")  # by name, even when missing


def test_sniff_never_raises_on_unreadable_paths(tmp_path):
    assert not checkpoints.sniff(tmp_path / "missing.bin")
    assert checkpoints.sniff(tmp_path / "missing.pt")  # by extension; reading it reports the error


def test_nonexistent_file_is_an_error_not_a_crash(tmp_path):
    piece = checkpoints.read([tmp_path / "gone.pt"], tmp_path)
    assert piece.checkpoints[0].error


def test_newest_checkpoint_config_wins(tmp_path):
    for step, lr in ((100, 1e-3), (200, 5e-4)):
        torch.save({"model": {"w": torch.ones(1)}, "step": step, "config": {"lr": lr}}, tmp_path / f"s{step}.pt")
    hparams = [(value, file) for name, value, file, _ in read_dir(tmp_path).hparams if name == "lr"]
    assert hparams[-1] == (5e-4, "s200.pt")


def test_std_is_population_std(tmp_path):
    torch.save({"w": torch.tensor([1.0, 3.0])}, tmp_path / "x.pt")
    assert read_dir(tmp_path).checkpoints[0].stats.tensors[0].std == pytest.approx(1.0)
    assert math.isclose(read_dir(tmp_path).checkpoints[0].stats.tensors[0].norm, math.sqrt(10))


def test_reference_trainer_scheduler_and_scaler(tmp_path):
    """analyzer/trainer writes its own scheduler and loss-scaler dicts, not torch's state_dicts."""
    payload = {"model": {"w": torch.ones(2)}, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
               "scheduler": {"lr_schedule": "cosine", "step": 100, "last_lr": 2.5e-4},
               "scaler": {"enabled": True, "scale": 1024.0, "good_steps": 12}, "step": 100, "config": {"lr": 0.1}}
    torch.save(payload, tmp_path / "step_000100.pt")
    payload["scaler"] = {"enabled": False, "scale": 1.0, "good_steps": 0}
    torch.save(payload, tmp_path / "step_000200.pt")
    first, second = (c.stats for c in read_dir(tmp_path).checkpoints)
    assert first.scheduler["last_lr"] == [2.5e-4] and first.scaler == {"scale": 1024.0, "growth_tracker": 12}
    assert second.scaler is None  # fp16 off: no loss scale to report
    assert [t.name for t in first.tensors] == ["w"]


# --- DeepSpeed --------------------------------------------------------------------------------------------------------

class ZeroStageEnum(int, enum.Enum):
    disabled = 0
    optimizer_states = 1
    gradients = 2
    weights = 3


class LossScaler:
    def __init__(self, scale=1.0):
        self.cur_scale = scale
        self.dynamic = False


class DynamicLossScaler:
    def __init__(self, init_scale, scale_window=1000):
        self.cur_scale = init_scale
        self.dynamic = True
        self.cur_iter = 20
        self.last_overflow_iter = 7
        self.scale_factor = 2.0
        self.scale_window = scale_window
        self.min_scale = 1
        self.delayed_shift = 2
        self.cur_hysteresis = 2
        self.consecutive_hysteresis = False
        self.raise_error_at_min_scale = True
        self.dtype = torch.float16


@dataclasses.dataclass
class fragment_address:  # noqa: N801 - DeepSpeed's name
    numel: int
    start: int


DS_CLASSES = {"deepspeed.runtime.zero.config": ZeroStageEnum, "deepspeed.runtime.fp16.loss_scaler": LossScaler,
              "deepspeed.utils.tensor_fragment": fragment_address}
DS_CONFIG = {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
             "gradient_clipping": 1.0, "optimizer": {"type": "AdamW", "params": {"lr": 2e-4, "weight_decay": 0.01}},
             "fp16": {"enabled": True, "loss_scale": 0}, "zero_optimization": {"stage": 2}}


@pytest.fixture
def ds_save(monkeypatch):
    """torch.save with DeepSpeed's classes importable under their real module paths, as when DeepSpeed saved."""

    def save(obj, path: Path, extra: tuple = ()) -> None:
        classes = [*DS_CLASSES.items(), ("deepspeed.runtime.fp16.loss_scaler", DynamicLossScaler), *extra]
        with monkeypatch.context() as patch:
            for module_name, cls in classes:
                parts = module_name.split(".")
                for depth in range(1, len(parts) + 1):
                    name = ".".join(parts[:depth])
                    if name not in sys.modules:
                        patch.setitem(sys.modules, name, types.ModuleType(name))
                cls.__module__ = module_name
                setattr(sys.modules[module_name], cls.__name__, cls)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(obj, path)

    return save


def ds_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    model.register_buffer("position_ids", torch.arange(6.0))
    return model


def model_states(model: torch.nn.Module, *, global_steps: int = 20, optimizer=None, module=None) -> dict:
    """engine.py _save_checkpoint's dict (ZeRO: the optimizer lives in the shards)."""
    params = OrderedDict((n, p.shape) for n, p in model.named_parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch.optim.AdamW(model.parameters(), lr=2e-4), lambda s: 0.5)
    return dict(module=module if module is not None else model.state_dict(), buffer_names=["position_ids"],
                optimizer=optimizer, param_shapes=[params], frozen_param_shapes=None, shared_params={},
                frozen_param_fragments=None, lr_scheduler=scheduler.state_dict(), data_sampler=None, random_ltd=None,
                sparse_tensor_module_names=set(), skipped_steps=3, global_steps=global_steps,
                global_samples=global_steps * 16, dp_world_size=2, mp_world_size=1, ds_config=DS_CONFIG,
                ds_version="0.16.4")


def zero_shards(model: torch.nn.Module, ranks: int = 2, *, stage: int = 2, loss_scaler=None,
                inf_exp_avg_sq: int = 0) -> list[dict]:
    """One _save_zero_checkpoint dict per data-parallel rank: each holds its slice of the flat fp32 group."""
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    pad = -flat.numel() % ranks
    padded = torch.cat([flat, torch.zeros(pad)])
    shards = []
    for rank, part in enumerate(padded.chunk(ranks)):
        master = torch.nn.Parameter(part.clone())
        optimizer = torch.optim.AdamW([master], lr=2e-4, betas=(0.9, 0.95), weight_decay=0.01)
        master.grad = torch.ones_like(master)
        optimizer.step()
        base = optimizer.state_dict()
        if rank == ranks - 1:
            base["state"][0]["exp_avg_sq"][:inf_exp_avg_sq] = float("inf")
        scaler = loss_scaler if loss_scaler is not None else DynamicLossScaler(1024.0)
        if stage == 3:  # stage3.py _rigid_state_dict
            state = {"zero_stage": ZeroStageEnum.weights, "loss_scaler": scaler, "dynamic_loss_scale": True,
                     "overflow": False, "partition_count": ranks, "optimizer_state_dict": base,
                     "fp32_flat_groups": [part]}
        else:  # stage_1_and_2.py state_dict; the last rank's partition is saved without its padding
            lean = part[: part.numel() - (pad if rank == ranks - 1 else 0)]
            slices = OrderedDict((n, fragment_address(numel=p.numel(), start=0)) for n, p in model.named_parameters())
            state = {"loss_scaler": scaler, "dynamic_loss_scale": True, "overflow": False, "clip_grad": 1.0,
                     "base_optimizer_state": base, "single_partition_of_fp32_groups": [lean],
                     "zero_stage": ZeroStageEnum.gradients, "group_paddings": [pad if rank == ranks - 1 else 0],
                     "partition_count": [ranks], "ds_version": "0.16.4", "param_slice_mappings": [slices]}
        shards.append({"optimizer_state_dict": state, "ds_config": DS_CONFIG, "ds_version": "0.16.4"})
    return shards


def ds_checkpoint(ds_save, folder: Path, *, global_steps: int = 20, ranks: int = 2, prefix: str = "",
                  nan_weight: int = 0, inf_exp_avg_sq: int = 0, loss_scaler=None) -> torch.nn.Module:
    """A ZeRO-2 tag folder as engine.save_checkpoint writes it, with the recovery script it copies beside it."""
    model = ds_model()
    with torch.no_grad():
        model[0].weight.view(-1)[:nan_weight] = float("nan")
    ds_save(model_states(model, global_steps=global_steps), folder / "mp_rank_00_model_states.pt")
    for rank, shard in enumerate(zero_shards(model, ranks, loss_scaler=loss_scaler, inf_exp_avg_sq=inf_exp_avg_sq)):
        ds_save(shard, folder / f"{prefix}zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    (folder.parent / "zero_to_fp32.py").write_text("# copied by DeepSpeed\n")
    return model


def test_deepspeed_tag_folder_is_one_checkpoint(tmp_path, ds_save):
    model = ds_checkpoint(ds_save, tmp_path / "ds" / "global_step20")
    (tmp_path / "ds" / "latest").write_text("global_step20")
    piece = read_dir(tmp_path)
    (ckpt,) = piece.checkpoints
    assert (ckpt.path, ckpt.step, ckpt.format, ckpt.error) == ("ds/global_step20", 20, "deepspeed", None)
    weights = {t.name: t for t in ckpt.stats.tensors}
    assert set(weights) == {*dict(model.named_parameters()), "position_ids"}
    assert weights["0.weight"].shape == (8, 4)
    optimizer = {t.name: t for t in ckpt.stats.optimizer_tensors}
    assert set(optimizer) == {"exp_avg", "exp_avg_sq", "fp32_master_weights"}
    n_params = sum(p.numel() for p in model.parameters())
    assert optimizer["fp32_master_weights"].numel == n_params  # ZeRO-1/2 partitions are saved without padding
    assert optimizer["exp_avg"].numel == n_params + (-n_params % 2)
    expected_norm = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())
    assert optimizer["fp32_master_weights"].norm == pytest.approx(expected_norm, rel=1e-6)
    assert ckpt.stats.nonfinite == 0 and ckpt.stats.optimizer_step == 1
    (group,) = ckpt.stats.optimizer_groups  # every shard repeats the param groups: kept once
    assert group["lr"] == 2e-4 and group["betas"] == [0.9, 0.95]
    assert ckpt.stats.scaler == {"scale": 1024.0, "growth_tracker": None, "growth_interval": 1000}
    assert ckpt.stats.scheduler["last_lr"] == [pytest.approx(1e-4)]
    hparams = {name: (value, key) for name, value, _, key in piece.hparams}
    assert hparams["lr"] == (2e-4, "optimizer.params.lr")
    assert hparams["grad_accum"] == (2, "gradient_accumulation_steps")


def test_deepspeed_file_names_and_latest_are_sniffed(tmp_path):
    (tmp_path / "global_step5").mkdir()
    (tmp_path / "latest").write_text("global_step5\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "latest").write_text("see the wiki for the latest results\n")
    assert checkpoints.sniff(tmp_path / "latest")
    assert not checkpoints.sniff(tmp_path / "notes" / "latest")
    assert checkpoints.sniff(tmp_path / "global_step5" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt")


def test_deepspeed_step_comes_from_global_steps_under_a_custom_tag(tmp_path, ds_save):
    ds_checkpoint(ds_save, tmp_path / "ckpt" / "best", global_steps=37)
    (tmp_path / "ckpt" / "latest").write_text("best")
    piece = read_dir(tmp_path)
    assert [(c.path, c.step) for c in piece.checkpoints] == [("ckpt/best", 37)]
    assert [n.message for n in piece.notes if n.file == "ckpt/latest"] == [
        "DeepSpeed `latest` names tag best (ckpt/best) as the newest checkpoint"]


def test_deepspeed_step_comes_from_the_folder_name_without_loading(tmp_path, monkeypatch):
    folder = tmp_path / "global_step300"
    folder.mkdir()
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        (folder / name).write_bytes(b"not read")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("loaded"))
    (ckpt,) = read_dir(tmp_path, scan=False).checkpoints
    assert (ckpt.path, ckpt.step, ckpt.format, ckpt.stats) == ("global_step300", 300, "deepspeed", None)


def test_deepspeed_latest_behind_a_newer_folder_is_noted(tmp_path, ds_save):
    ds_checkpoint(ds_save, tmp_path / "global_step10", global_steps=10)
    ds_checkpoint(ds_save, tmp_path / "global_step20", global_steps=20)
    (tmp_path / "latest").write_text("global_step10")
    piece = read_dir(tmp_path)
    assert [c.step for c in piece.checkpoints] == [10, 20]
    (note,) = [n for n in piece.notes if n.file == "latest"]
    assert "names tag global_step10 (step 10), but global_step20 (step 20) is newer" in note.message


def test_deepspeed_latest_naming_a_missing_tag_is_noted(tmp_path, ds_save):
    ds_checkpoint(ds_save, tmp_path / "global_step10", global_steps=10)
    (tmp_path / "latest").write_text("global_step40")
    (note,) = [n for n in read_dir(tmp_path).notes if n.file == "latest"]
    assert note.message == "DeepSpeed `latest` names tag global_step40, but global_step40 is not in the run directory"


def test_deepspeed_nonfinite_values_in_weights_and_shards_are_counted(tmp_path, ds_save):
    ds_checkpoint(ds_save, tmp_path / "global_step20", nan_weight=3, inf_exp_avg_sq=2)
    (ckpt,) = read_dir(tmp_path).checkpoints
    weights = {t.name: t for t in ckpt.stats.tensors}
    optimizer = {t.name: t for t in ckpt.stats.optimizer_tensors}
    assert weights["0.weight"].nonfinite == 3 and optimizer["fp32_master_weights"].nonfinite == 3
    assert optimizer["exp_avg_sq"].nonfinite == 2 and optimizer["exp_avg"].nonfinite == 0
    assert ckpt.stats.nonfinite == 8


def test_deepspeed_bf16_shards_have_no_loss_scale(tmp_path, ds_save):
    ds_checkpoint(ds_save, tmp_path / "global_step20", prefix="bf16_", loss_scaler=LossScaler(1.0))
    (ckpt,) = read_dir(tmp_path).checkpoints
    assert ckpt.error is None and ckpt.stats.scaler is None
    assert {t.name for t in ckpt.stats.optimizer_tensors} == {"exp_avg", "exp_avg_sq", "fp32_master_weights"}


def test_deepspeed_zero3_weights_are_only_in_the_shards(tmp_path, ds_save):
    model = ds_model()
    folder = tmp_path / "global_step20"
    placeholders = {n: torch.empty(0) for n, _ in model.named_parameters()} | {"position_ids": torch.arange(6.0)}
    for rank, shard in enumerate(zero_shards(model, 3, stage=3)):
        ds_save(model_states(model, module=placeholders), folder / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")
        ds_save(shard, folder / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    piece = read_dir(tmp_path)
    (ckpt,) = piece.checkpoints
    assert ckpt.error is None and [t.name for t in ckpt.stats.tensors] == ["position_ids"]  # once, not per rank
    master = {t.name: t for t in ckpt.stats.optimizer_tensors}["fp32_master_weights"]
    assert master.numel == sum(p.numel() for p in model.parameters()) + 1  # stage 3 keeps the alignment padding
    assert any("ZeRO-3" in n.message and n.file == "global_step20" for n in piece.notes)


def test_hf_trainer_with_deepspeed_is_one_hf_checkpoint(tmp_path, ds_save):
    folder = tmp_path / "checkpoint-20"
    model = ds_checkpoint(ds_save, folder / "global_step20")
    (folder / "latest").write_text("global_step20")
    save_file({n: t.contiguous() for n, t in model.state_dict().items()}, str(folder / "model.safetensors"))
    piece = read_dir(tmp_path)
    (ckpt,) = piece.checkpoints
    assert (ckpt.path, ckpt.step, ckpt.format, ckpt.error) == ("checkpoint-20", 20, "hf", None)
    names = [t.name for t in ckpt.stats.tensors]
    assert sorted(names) == sorted(model.state_dict())  # the module in the model states repeats them: listed once
    assert "fp32_master_weights" in {t.name for t in ckpt.stats.optimizer_tensors}
    assert any(n.file == "checkpoint-20/latest" and "as the newest" in n.message for n in piece.notes)


def test_deepspeed_missing_shard_and_model_states_are_noted(tmp_path, ds_save):
    folder = tmp_path / "global_step20"
    ds_checkpoint(ds_save, folder, ranks=4)
    (folder / "zero_pp_rank_2_mp_rank_00_optim_states.pt").unlink()
    (folder / "mp_rank_00_model_states.pt").unlink()
    piece = read_dir(tmp_path)
    (ckpt,) = piece.checkpoints
    assert (ckpt.step, ckpt.error) == (20, None) and not ckpt.stats.tensors and ckpt.stats.optimizer_tensors
    messages = [n.message for n in piece.notes if n.file == "global_step20"]
    assert any("3 of 4 ZeRO optimizer shards" in m and "ranks 2 missing" in m for m in messages)
    assert any("without its model states" in m for m in messages)


def test_deepspeed_truncated_shard_is_an_error_not_a_crash(tmp_path, ds_save):
    folder = tmp_path / "global_step20"
    ds_checkpoint(ds_save, folder)
    shard = folder / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:300])
    (ckpt,) = read_dir(tmp_path).checkpoints
    assert ckpt.error.startswith("zero_pp_rank_1_mp_rank_00_optim_states.pt: truncated or corrupt")
    assert ckpt.step == 20 and ckpt.stats.tensors and ckpt.stats.optimizer_tensors  # what was readable is kept


def test_deepspeed_shard_of_the_wrong_shape_is_tolerated(tmp_path, ds_save):
    folder = tmp_path / "global_step20"
    ds_checkpoint(ds_save, folder)
    torch.save({"something": "else"}, folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    torch.save([1, 2, 3], folder / "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    torch.save({"module": None, "global_steps": "twenty"}, folder / "mp_rank_00_model_states.pt")
    (ckpt,) = read_dir(tmp_path).checkpoints
    assert ckpt.step == 20 and "no optimizer_state_dict" in ckpt.error


def test_deepspeed_shard_naming_another_global_is_refused_and_nothing_runs(tmp_path, ds_save):
    marker = tmp_path / "PWNED"
    folder = tmp_path / "run" / "global_step20"
    ds_checkpoint(ds_save, folder)
    shard = zero_shards(ds_model())[0]
    shard["evil"] = _CreatesFile(marker)
    ds_save(shard, folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    (ckpt,) = read_dir(tmp_path / "run").checkpoints
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt: refused" in ckpt.error and "system" in ckpt.error
    assert not marker.exists()


class _RunsOnLoad:
    """A class under a deepspeed. name whose unpickling would create the marker file, if it were ever used."""

    marker: Path

    def __init__(self):
        self.payload = 1  # some state, so that unpickling calls __setstate__

    def __setstate__(self, state):
        self.marker.touch()


def test_deepspeed_classes_are_never_imported_or_run(tmp_path, ds_save, monkeypatch):
    marker = tmp_path / "RAN"
    folder = tmp_path / "run" / "global_step20"
    ds_checkpoint(ds_save, folder)
    _RunsOnLoad.marker = marker
    shard = zero_shards(ds_model())[0]
    shard["optimizer_state_dict"]["extra"] = _RunsOnLoad()
    hostile = ("deepspeed.runtime.hostile", _RunsOnLoad)
    ds_save(shard, folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt", extra=(hostile,))
    # DeepSpeed's modules importable while reading, as on a machine with DeepSpeed installed:
    for name in ("deepspeed", "deepspeed.runtime", "deepspeed.runtime.hostile"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["deepspeed.runtime.hostile"]._RunsOnLoad = _RunsOnLoad
    (ckpt,) = read_dir(tmp_path / "run").checkpoints
    assert ckpt.error is None and not marker.exists()
    pickle.loads(pickle.dumps(_RunsOnLoad()))  # the class is live: plain unpickling runs it
    assert marker.exists()
