"""Plain-text logs: every real text log in ../shared/real_runs, the seed excerpts, crafted shapes and broken input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer.errors import InputError
from analyzer.ingest import textlog
from analyzer.run import build_run
from tests.conftest import FIXTURES, SAMPLE_RUNS, SEEDS

TEXT = FIXTURES / "text"


def points(result, name: str) -> dict[int, float]:
    frame = result.frame
    rows = frame[frame["name"] == name]
    return dict(zip(rows["step"].tolist(), rows["value"].tolist()))


def lines_of(result, name: str) -> dict[int, int]:
    frame = result.frame
    rows = frame[frame["name"] == name]
    return dict(zip(rows["step"].tolist(), rows["line"].tolist()))


def events(result, kind: str):
    return [e for e in result.events if e.kind == kind]


def real(real_runs: Path, case: str, name: str):
    path = real_runs / case / name
    return textlog.read_file(path, f"{case}/{name}")


def text(body: str | bytes, **kw):
    return textlog.read_text(body, **kw)


# --- real logs: BigScience chronicles (Megatron-DeepSpeed lines inside markdown) --------------------------------------

def test_bloom176b_spike_loss_and_grad_norm(real_runs):
    result = real(real_runs, "bloom176b_spike", "chronicles.md")
    loss, grad = points(result, "loss"), points(result, "grad_norm")
    assert loss[31214] == 2.198845 and loss[31219] == 5.098124 and loss[31250] == 2.215699
    assert grad[31214] == 0.242 and grad[31219] == 960.351 and grad[31250] == 0.267
    assert lines_of(result, "loss")[31219] == 207  # 1-based physical line of the iteration line


def test_bloom176b_every_iteration_line_once(real_runs):
    steps = sorted(points(real(real_runs, "bloom176b_spike", "chronicles.md"), "loss"))
    assert steps == [12695, *range(31214, 31223), 31250, 31251, *range(42780, 42785), 45000]


def test_bloom176b_wrapped_lines_read_whole(real_runs):
    result = real(real_runs, "bloom176b_spike", "chronicles.md")
    tflops = points(result, "tflops")
    assert [tflops[s] for s in range(42780, 42785)] == [149.10, 149.09, 147.58, 142.32, 141.09]
    assert points(result, "lr" if "lr" in set(result.frame["name"]) else "learning_rate")[42780] == 4.475e-05
    assert points(result, "nan_iterations")[42784] == 0  # `number of nan` + `iterations:` joined across the wrap
    assert lines_of(result, "loss")[42780] == 257


def test_bloom176b_validation_line(real_runs):
    result = real(real_runs, "bloom176b_spike", "chronicles.md")
    assert points(result, "eval_loss") == {45000: 2.327091}
    assert points(result, "eval_ppl") == {45000: 10.24808}


def test_bloom176b_steps_per_second_from_elapsed_time(real_runs):
    result = real(real_runs, "bloom176b_spike", "chronicles.md")
    assert points(result, "step_time_s")[31219] == 106.36
    assert points(result, "steps_per_s")[31219] == pytest.approx(1 / 106.36)


def test_bloom104b_wide_divergence_overlapping_restarts(real_runs):
    result = real(real_runs, "bloom104b_wide_divergence", "chronicles.md")
    loss = result.frame[result.frame["name"] == "loss"]
    assert loss["step"].diff().lt(0).any()  # experiments restart and overlap: steps go backwards in file order
    run = build_run(real_runs / "bloom104b_wide_divergence", [_piece(result)])
    assert run.events_of("restart")
    assert max(points(result, "grad_norm").values()) == pytest.approx(3.27e6, rel=0.01)


def test_bloom104b_wide_divergence_loss_jumps(real_runs):
    result = real(real_runs, "bloom104b_wide_divergence", "chronicles.md")
    frame = result.frame[result.frame["name"] == "loss"]
    pairs = list(zip(frame["step"], frame["value"].round(2)))
    for before, after in (((7000, 6.44), (7010, 11.42)), ((11447, 3.11), (11448, 7.71)), ((8740, 3.68), (8741, 7.27))):
        assert before in pairs and after in pairs


def test_bloom104b_line_without_lm_loss_is_no_nan(real_runs):
    result = real(real_runs, "bloom104b_wide_divergence", "chronicles.md")
    assert 9027 not in points(result, "loss")  # no lm loss, but no nan iterations either: nothing to infer
    assert points(result, "loss_scale")[9027] == 8192.0
    assert not events(result, "nan")


def test_bloom104b_overflow_six_events(real_runs):
    result = real(real_runs, "bloom104b_overflow", "chronicles.md")
    overflows = events(result, "overflow")
    assert len(overflows) == 6
    assert all(17061 < e.step <= 17068 for e in overflows)
    assert overflows[0].data == {"scale_from": 1048576.0, "scale_to": 1048576.0}
    assert overflows[-1].data == {"scale_from": 65536.0, "scale_to": 32768.0}
    assert overflows[0].line == 448 and "OVERFLOW! Rank 0 Skipping step" in overflows[0].text


def test_bloom104b_overflow_loss(real_runs):
    loss = points(real(real_runs, "bloom104b_overflow", "chronicles.md"), "loss")
    assert loss[17061] == 2.667121 and loss[17062] == 4.374269 and loss[17068] == 4.137348
    assert loss[13251] == 2.924229  # wrapped over three lines, cut mid-word


def test_bloom13b_loss_scale_falls(real_runs):
    result = real(real_runs, "bloom13b_spike", "chronicles.md")
    scale, loss = points(result, "loss_scale"), points(result, "loss")
    assert [scale[s] for s in (29040, 29050, 29060)] == [65536.0, 8192.0, 4096.0]
    assert [loss[s] for s in (29040, 29050, 29060, 29090)] == [2.768131, 7.343709, 8.715872, 6.849044]


def test_bloom13b_grad_norm_zero_lines(real_runs):
    grad = points(real(real_runs, "bloom13b_spike", "chronicles.md"), "grad_norm")
    assert grad.pop(43680) == 17224.723
    assert set(grad.values()) == {0.0} and len(grad) == 9


def test_bloom13b_tracebacks_are_error_events(real_runs):
    errors = events(real(real_runs, "bloom13b_spike", "chronicles.md"), "error")
    assert any(e.data.get("oom") for e in errors)
    assert any(e.text.startswith("Traceback") for e in errors)


# --- real logs: fairseq, DeepSpeed, build-nanogpt, OPT ----------------------------------------------------------------

def test_fairseq_two_runs_loss_and_gnorm(real_runs):
    result = real(real_runs, "fairseq_fsdp_overflow", "README.md")
    frame = result.frame
    loss = frame[frame["name"] == "loss"]
    first, second = loss.iloc[:10], loss.iloc[10:]
    assert first["step"].tolist() == list(range(1, 11)) == second["step"].tolist()
    assert first["value"].tolist()[1:3] == [16.446, 25.22]
    assert second["value"].tolist()[1:3] == [16.352, 23.682]
    gnorm = frame[frame["name"] == "gnorm"]["value"].tolist()
    assert gnorm[2] == 131.281 and gnorm[12] == 119.682


def test_fairseq_second_run_is_a_restart(real_runs):
    result = real(real_runs, "fairseq_fsdp_overflow", "README.md")
    run = build_run(real_runs / "fairseq_fsdp_overflow", [_piece(result)])
    restart = run.events_of("restart")
    assert restart and restart[0].line == 157
    assert run.series("loss")[3] == 23.682  # the newer segment wins
    assert run.series("eval_loss")[10] == 16.624


def test_fairseq_overflow_notes(real_runs):
    overflows = events(real(real_runs, "fairseq_fsdp_overflow", "README.md"), "overflow")
    assert [e.step for e in overflows] == [3, 3, 3, 3]
    assert [(e.data["scale_from"], e.data["scale_to"]) for e in overflows] == [(4.0, 2.0), (2.0, 1.0)] * 2


def test_fairseq_loss_base_two(real_runs):
    result = real(real_runs, "fairseq_fsdp_overflow", "README.md")
    assert [(name, value) for name, value, *_ in result.hparams] == [("loss_base", 2)]


def test_fairseq_epoch_summary_not_read_as_a_step(real_runs):
    result = real(real_runs, "fairseq_fsdp_overflow", "README.md")
    assert 19.351 not in points(result, "loss").values()  # `| train |` epoch average, not the loss at update 10


def test_deepspeed_seventeen_overflows_before_step_20(real_runs):
    overflows = events(real(real_runs, "deepspeed_bert_overflow", "train.log"), "overflow")
    assert len(overflows) == 17 and all(e.step <= 20 for e in overflows)
    assert overflows[0].data["scale_from"] == 2.0**32 and overflows[-1].data["scale_to"] == 32768.0


def test_deepspeed_loss_lines(real_runs):
    result = real(real_runs, "deepspeed_bert_overflow", "train.log")
    loss = points(result, "loss")
    assert loss[10] == 10.8719 and loss[90] == 9.9670
    assert sorted(loss) == list(range(10, 100, 10))
    assert points(result, "skipped")[20] == 17 and points(result, "skipped")[90] == 17


def test_deepspeed_user_warning(real_runs):
    warnings = events(real(real_runs, "deepspeed_bert_overflow", "train.log"), "warning")
    assert any("UserWarning" in e.text for e in warnings)


def test_nanogpt_log_txt(real_runs):
    result = real(real_runs, "nanogpt_no_warmup", "log.txt")
    loss, val = points(result, "loss"), points(result, "eval_loss")
    assert min(loss) == 0 and max(loss) == 19072 and len(loss) == 19073
    assert loss[0] == 10.955010 and loss[19072] == 3.181935
    assert val[0] == 10.9522 and val[19072] == 3.1681
    assert points(result, "eval_hellaswag_acc")[0] == 0.2487


def test_nanogpt_stdout_matches_its_log_txt(real_runs):
    out = real(real_runs, "nanogpt_no_warmup", "nanogpt-nowarmup-1816358.out")
    log = real(real_runs, "nanogpt_no_warmup", "log.txt")
    assert points(out, "eval_loss") == points(log, "eval_loss")  # `validation loss:` takes the next step line's step
    assert points(out, "loss") == points(log, "loss")
    assert points(out, "lr")[0] == 6.0e-4 and points(out, "norm")[0] == 15.3420
    assert points(out, "steps_per_s")[1] == pytest.approx(1000 / 394.95)


def test_nanogpt_generated_samples_give_nothing(real_runs):
    out = real(real_runs, "nanogpt_no_warmup", "nanogpt-nowarmup-1816358.out")
    assert set(out.frame["step"]) <= set(range(19073)) and not out.events


def test_nanogpt_run_dir_reads_each_point_once(real_runs):
    folder = real_runs / "nanogpt_no_warmup"
    paths = sorted(p for p in folder.iterdir() if textlog.sniff(p))
    assert [p.name for p in paths] == ["log.txt", "nanogpt-nowarmup-1816358.out"]  # the .err holds no log line
    run = build_run(folder, [textlog.read(paths, folder)])
    assert not run.events_of("restart")
    assert run.series("loss").index.tolist() == list(range(19073))


def test_nanogpt_baseline(real_runs):
    result = real(real_runs, "nanogpt_baseline", "nanogpt-train-1806877.out")
    loss, val = points(result, "loss"), points(result, "eval_loss")
    assert (min(loss), max(loss)) == (0, 19072) and loss[0] == 10.955010 and loss[19072] == 3.083290
    assert val[19072] == 3.0663 and points(result, "eval_hellaswag_acc")[19072] == 0.3058
    lr = points(result, "lr")
    assert lr[0] < lr[713] < lr[714] == 6.0e-4  # linear warm-up: (step + 1) / 715 of the peak


def test_opt175b_prose_gives_nothing(real_runs):
    for page in sorted((real_runs / "opt175b_chronicles").glob("*.md")):
        result = textlog.read_file(page)
        assert result.frame is None and not result.events


# --- seed 002 ---------------------------------------------------------------------------------------------------------

def test_seed002_write_up_log_lines():
    if not SEEDS.is_dir():
        pytest.skip("seeds not found")
    result = textlog.read_file(SEEDS / "002_99846a03ea38b68e.txt")
    assert points(result, "kd_raw") == {0: 38.0254, 100: 28.6117, 600: 38.3527}
    assert set(points(result, "temperature_squared").values()) == {9.0}
    assert "temperature" not in set(result.frame["name"])
    pairs = set(zip(result.frame["name"], result.frame["value"]))
    assert ("eval_loss", 28.4074) in pairs and ("eval_ppl", 485165195.41) in pairs


def test_seed002_excerpt_mojibake():
    result = textlog.read_file(TEXT / "seed002_excerpt.log")
    assert points(result, "kd_raw") == {0: 38.0254, 100: 28.6117, 600: 38.3527}
    assert points(result, "temperature_squared") == {0: 9.0, 100: 9.0, 600: 9.0}


def test_seed002_eval_and_capped_perplexity_warning():
    result = textlog.read_file(TEXT / "seed002_excerpt.log")
    assert points(result, "eval_loss") == {600: 28.4074} and points(result, "eval_ppl") == {600: 485165195.41}
    (warning,) = events(result, "warning")
    assert warning.data == {"cap": 20.0, "loss": 28.41} and warning.line == 5


def test_seed002_nan_clamp_at_step_436():
    result = textlog.read_file(TEXT / "seed002_step436.log")
    (clamp,) = events(result, "nan_clamp")
    assert clamp.step == 436 and clamp.line == 3
    assert clamp.data == {"metric": "lm_loss", "value": "nan"}
    assert clamp.text == "[Warning] lm_loss produced non-finite value (nan); clamping to zero."


@pytest.mark.parametrize("spelling", ["Temperature²", "Temperature¬≤", "TemperatureÂ²", "temperature ²"])
def test_squared_temperature_spellings(spelling):
    result = text(f"Step 5: KD Raw: 4.2, {spelling}: 9.0\n")
    names = set(result.frame["name"])
    assert "temperature_squared" in names and "temperature" not in names


def test_squared_temperature_in_latin1_bytes():
    result = text(b"Step 5: KD Raw: 4.2, Temperature\xb2: 9.0\n")
    assert points(result, "temperature_squared") == {5: 9.0}
    assert any("Latin-1" in n.message for n in result.notes)


# --- the reference trainer's train.log --------------------------------------------------------------------------------

TRAINER_LOG = """\
scenario kd: kd model, 42,880 parameters, vocab 256 (ln V = 5.5452)
[Eval] step 0 loss: 5.6434, ppl: 148.41
[Warning] Loss 5.64 too high for meaningful perplexity (capped at 5)
step 0 | loss 5.6488 | lm_loss 5.5662 | kd_raw 0.6316 | temperature 3.0000 | lr 3.00e-01 | loss_scale 65536
[fp16] overflow: skipping step, loss scale 65536 -> 32768
step 1 | loss 5.6531 | lm_loss 5.5259 | kd_raw 0.6344 | temperature 2.9996 | lr 3.00e-01 | loss_scale 32768
[Warning] lm_loss produced non-finite value (nan); clamping to zero.
step 2 | loss 2.8 | lm_loss 0.0000 | kd_raw 0.6283 | temperature 2.9992 | lr 3.00e-01 | loss_scale 32768
[Error] step 3: non-finite loss (nan); stopping (nan_policy=stop)
"""


def test_trainer_log_points_and_events():
    result = text(TRAINER_LOG)
    assert points(result, "eval_loss") == {0: 5.6434} and points(result, "kd_raw")[2] == 0.6283
    assert [(e.kind, e.step) for e in result.events] == [
        ("warning", 0), ("overflow", 1), ("nan_clamp", 2), ("nan", 3)]
    assert events(result, "overflow")[0].data == {"scale_from": 65536.0, "scale_to": 32768.0}


def test_trainer_log_beside_metrics_jsonl_gives_events_only(tmp_path):
    (tmp_path / "train.log").write_text(TRAINER_LOG)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 0, "loss": 5.6488}) + "\n")
    (tmp_path / "run.json").write_text("{}")
    piece = textlog.read([tmp_path / "train.log"], tmp_path)
    assert not piece.frames
    assert [e.kind for e in piece.events] == ["warning", "overflow", "nan_clamp", "nan"]


def test_sample_run_clamps_match_its_metrics():
    folder = SAMPLE_RUNS / "kd-temperature-blowup"
    if not (folder / "train.log").is_file():
        pytest.fail("sample run missing (bash sample_runs/regenerate.sh)")
    piece = textlog.read([folder / "train.log"], folder)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    clamped = [r["step"] for r in records if r.get("lm_loss") == 0.0]
    assert [e.step for e in piece.events if e.kind == "nan_clamp"] == clamped


# --- crafted shapes ---------------------------------------------------------------------------------------------------

def test_nanogpt_iter_and_eval_lines():
    result = text("step 0: train loss 10.9843, val loss 10.9810\niter 0: loss 10.9712, time 1204.15ms, mfu -100.00%\n"
                  "iter 1: loss 10.2, time 12.5ms, mfu 35.12%\n")
    assert points(result, "loss") == {0: 10.9712, 1: 10.2}  # the iter line is later in the file than the estimate
    assert points(result, "train_loss") == {0: 10.9843} and points(result, "val_loss") == {0: 10.9810}
    assert points(result, "time_ms")[1] == 12.5 and points(result, "steps_per_s")[1] == pytest.approx(80.0)
    assert points(result, "mfu") == {0: -100.0, 1: 35.12}


def test_generic_pipe_and_equals_lines():
    result = text("step 10 | loss 3.2 | lr 1e-4\nEpoch 3 Step 120: loss=2.31, lr=1.0e-04, grad_norm=0.93\n")
    assert points(result, "loss") == {10: 3.2, 120: 2.31}
    assert points(result, "epoch") == {120: 3.0} and points(result, "grad_norm") == {120: 0.93}


def test_nan_and_inf_values_are_points():
    result = text("step 1 | loss nan | grad_norm inf\nstep 2 | loss -inf | grad_norm 1.0\n")
    loss, grad = points(result, "loss"), points(result, "grad_norm")
    assert math.isnan(loss[1]) and loss[2] == -math.inf and grad[1] == math.inf


def test_hf_trainer_dicts_need_a_step():
    result = text("{'loss': 2.31, 'learning_rate': 1e-4, 'epoch': 0.5}\n{'loss': 2.1, 'step': 20}\n")
    assert points(result, "loss") == {20: 2.1}
    assert any("without a step" in n.message and n.count == 1 for n in result.notes)


def test_megatron_nan_iteration_without_loss_is_a_nan_loss():
    line = (" iteration      500/  1000 | consumed samples:  64000 | elapsed time per iteration (ms): 900.0 | "
            "learning rate: 1.000E-04 | global batch size:   128 | loss scale: 1024.0 | "
            "number of skipped iterations:   1 | number of nan iterations:   1 |\n")
    result = text(line)
    assert math.isnan(points(result, "loss")[500])
    assert [(e.kind, e.step, e.data.get("count")) for e in result.events] == [("skipped_step", 500, 1), ("nan", 500, 1)]


def test_megatron_validation_line():
    result = text(" validation loss at iteration 45000 | lm loss value: 2.13E+00 | lm loss PPL: 8.44E+00 |\n")
    assert points(result, "eval_loss") == {45000: 2.13} and points(result, "eval_ppl") == {45000: 8.44}


def test_megatron_wrapped_fixture():
    result = textlog.read_file(TEXT / "megatron_wrapped.log")
    assert points(result, "loss") == {42780: 2.117073, 42781: 2.116946, 42782: 2.110646, 42783: 2.12482,
                                      42784: 2.127643}
    assert lines_of(result, "loss") == {42780: 1, 42781: 4, 42782: 7, 42783: 10, 42784: 13}


@pytest.mark.parametrize("line, scale_from, scale_to", [
    ("[deepspeed] OVERFLOW! Rank 0 Skipping step. Attempted loss scale: 65536, reducing to 32768", 65536, 32768),
    ("[deepspeed] fp16 dynamic loss scale overflow! Skipping step. Attempted loss scale: 4096, reducing to 2048",
     4096, 2048),
    ("Gradient overflow.  Skipping step, loss scaler 0 reducing loss scale to 16384.0", None, 16384),
    ("2021 | WARNING | fairseq.trainer | NOTE: gradient overflow detected, ignoring gradient, setting loss scale to: "
     "2.0", None, 2),
    ("[fp16] overflow: skipping step, loss scale 65536 -> 32768", 65536, 32768),
])
def test_overflow_variants(line, scale_from, scale_to):
    result = text(f"step 4 | loss 2.0\n{line}\nstep 5 | loss 2.1\n")
    (overflow,) = events(result, "overflow")
    assert overflow.step == 5
    assert overflow.data.get("scale_from") == scale_from and overflow.data["scale_to"] == scale_to
    assert points(result, "loss_scale") == {5: scale_to}


def test_event_after_the_last_step_line_takes_that_step():
    result = text("step 7 | loss 2.0\nTraceback (most recent call last):\nRuntimeError: CUDA out of memory.\n")
    assert [(e.kind, e.step, e.line) for e in result.events] == [("error", 7, 2), ("error", 7, 3)]
    assert result.events[1].data == {"oom": True}


def test_warning_shapes():
    log = ("step 1 | loss 2.0\n"
           "2024-01-01 10:00:00 | WARNING | trainer | something odd\n"
           "/x/module.py:12: UserWarning: deprecated\n"
           "[WARNING] [comm.py:152] NCCL backend\n"
           "print(f'[Warning] not a log line, a line of code')\n"
           "step 2 | loss 1.9\n")
    assert [e.line for e in events(text(log), "warning")] == [2, 3, 4]


def test_prose_numbers_are_not_read():
    prose = ("We lost 7.3h of work at iteration 12 because the loss went to 5.\n"
             "At iteration 21680 switched from https://github.com/bigscience-workshop/Megatron-DeepSpeed/pull/272\n"
             "The loss: 3.2 was fine, lr 1e-4 too.\n")
    result = text(prose)
    assert result.frame is None


def test_markdown_reads_only_code_blocks():
    page = "step 1 | loss 9.0\n\n```\nstep 2 | loss 2.0\n```\nstep 3 | loss 3.0\n"
    assert points(text(page, markdown=True), "loss") == {2: 2.0}
    assert points(text(page), "loss") == {2: 2.0}  # two fences make any file a markdown page


def test_a_misfit_line_in_a_repeated_shape_is_read_on_its_own():
    lines = [f"step {i} | loss 1.{i}5\n" for i in range(10)] + ["step 10 | loss 12.5\n", "step 11 | loss .125\n"]
    loss = points(text("".join(lines)), "loss")
    assert loss[3] == 1.35 and loss[10] == 12.5 and loss[11] == 0.125 and len(loss) == 12


def test_progress_bar_redrawn_before_a_log_line():
    bar = "".join(f"\r{i:3d}%|{'#' * (i // 10):10s}| {i}/100 [00:0{i % 10}<00:10, 5.{i}it/s]" for i in range(100))
    result = text(f"step 1 | loss 3.0\n{bar}\rstep 2 | loss 2.5\n{bar}\r[Warning] slow data loader\nstep 3 | loss 2\n")
    assert points(result, "loss") == {1: 3.0, 2: 2.5, 3: 2.0}
    assert [(e.step, e.text) for e in result.events] == [(3, "[Warning] slow data loader")]


def test_chunked_read_equals_whole_read(monkeypatch, tmp_path):
    body = "".join(f"step {i} | loss {5 - i / 1000:.4f} | lr 1e-4\n" for i in range(3000))
    body += open(TEXT / "megatron_wrapped.log").read() + "[fp16] overflow: skipping step, loss scale 8 -> 4\n"
    whole = text(body)
    monkeypatch.setattr(textlog, "CHUNK_BYTES", 4096)
    (tmp_path / "train.log").write_text(body)
    for chunked in (text(body), textlog.read_file(tmp_path / "train.log")):  # the file is memory-mapped
        assert whole.frame.astype({"name": str}).equals(chunked.frame.astype({"name": str}))
        assert whole.events == chunked.events


# --- bad input --------------------------------------------------------------------------------------------------------

def test_truncated_last_line_keeps_its_complete_values():
    result = text("step 1 | loss 3.0 | lr 1e-4\nstep 2 | loss 2.9 | lr 2.5E-0")
    assert points(result, "loss") == {1: 3.0, 2: 2.9} and points(result, "lr") == {1: 1e-4}
    assert any("no line end" in n.message for n in result.notes)


def test_crlf_line_endings():
    result = text("step 1 | loss 3.0\r\nstep 2 | loss 2.0\r\n[Warning] odd\r\n")
    assert points(result, "loss") == {1: 3.0, 2: 2.0}
    assert result.events[0].text == "[Warning] odd"


def test_garbage_and_binary_lines_are_counted():
    result = text(b"step 1 | loss 3.0\n\x00\x01\x02\xff\xfe junk\nstep 2 | loss 2.0\n\x07bell 5\n")
    assert points(result, "loss") == {1: 3.0, 2: 2.0}
    (garbage,) = [n for n in result.notes if "binary" in n.message]
    assert garbage.count == 2 and garbage.line == 2


def test_a_point_two_files_log_is_read_once(tmp_path):
    for name in ("a.log", "b.log"):
        (tmp_path / name).write_text("step 1 | loss nan | lr 0.5\nstep 2 | loss 2.0\n")
    (tmp_path / "c.log").write_text("step 1 | loss 9.0\n")  # a different value at the same step: a restart
    piece = textlog.read([tmp_path / n for n in ("a.log", "b.log", "c.log")], tmp_path)
    assert [(file, len(frame)) for file, frame in piece.frames] == [("a.log", 3), ("c.log", 1)]
    assert build_run(tmp_path, [piece]).events_of("restart")


def test_empty_file(tmp_path):
    path = tmp_path / "train.log"
    path.write_bytes(b"")
    result = textlog.read_file(path)
    assert result.frame is None and [n.message for n in result.notes] == ["empty file"]


def test_huge_single_line_is_skipped(tmp_path):
    path = tmp_path / "train.log"
    path.write_bytes(b"step 1 | loss 2.0\n" + b"x" * (2 * textlog.MAX_LINE_CHARS) + b"\nstep 2 | loss 1.0\n")
    result = textlog.read_file(path)
    assert points(result, "loss") == {1: 2.0, 2: 1.0}
    assert any("longer than" in n.message and n.line == 2 for n in result.notes)


def test_unreadable_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError) as error:
        textlog.read_file(tmp_path)  # a directory cannot be read as a log
    assert str(tmp_path) in str(error.value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600) | st.text(max_size=600).map(str.encode))
def test_arbitrary_bytes_never_raise(data):
    result = textlog.read_text(data)
    if result.frame is not None:
        assert result.frame["step"].min() >= 0 and result.frame["line"].min() >= 1


LINE_PIECES = st.sampled_from(["step 3 | loss 2.5", "iteration 5/ 10 | lm loss: 1.0E+00 |", "[Eval] loss: 1.5",
                               "[fp16] overflow: skipping step, loss scale 4 -> 2", "```", "nan", "12", "{'loss': 1}",
                               "\r", " ", "|", "loss:", "Step 1: KD Raw: 2", "\xb2", "¬≤", "\x00"])


@settings(max_examples=150, deadline=None)
@given(st.lists(LINE_PIECES, max_size=40).map(lambda parts: "\n".join(parts)))
def test_arbitrary_mixes_of_log_shapes_never_raise(body):
    result = textlog.read_text(body)
    assert all(e.line >= 1 for e in result.events)


# --- sniffing ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, body, expected", [
    ("train.log", "step 1 | loss 2.0\n", True),
    ("slurm-123.out", "iter 1: loss 2.0, time 3.0ms, mfu 1.0%\n", True),
    ("stdout", "[fp16] overflow: skipping step, loss scale 4 -> 2\n", True),
    ("notes.txt", "We trained for a while and the loss went down.\n", False),
    ("metrics.json", "step 1 | loss 2.0\n", False),
    ("train.log", "\x00\x01step 1 | loss 2.0\n", False),
    ("README.md", "step 1 | loss 2.0\n", False),  # markdown: only code blocks count
    ("README.md", "text\n```\nstep 1 | loss 2.0\n```\n", True),
])
def test_sniff(tmp_path, name, body, expected):
    path = tmp_path / name
    path.write_text(body)
    assert textlog.sniff(path) is expected


def test_sniff_real_logs(real_runs):
    assert textlog.sniff(real_runs / "deepspeed_bert_overflow" / "train.log")
    assert textlog.sniff(real_runs / "bloom176b_spike" / "chronicles.md")
    assert not textlog.sniff(real_runs / "nanogpt_baseline" / "nanogpt-train-1806877.err")
    assert not textlog.sniff(real_runs / "opt175b_chronicles" / "10_percent_update.md")


def test_frame_shape_for_build_run():
    result = text("step 1 | loss 2.0\n")
    assert list(result.frame.columns) == ["step", "name", "value", "line"]
    assert result.frame["step"].dtype == np.int64 and result.frame["line"].dtype == np.int64


def _piece(result):
    from analyzer.run import Ingested

    piece = Ingested(textlog.FORMAT, events=list(result.events))
    piece.add_frame("log", result.frame)
    return piece


REPEATED_SHAPES = st.sampled_from([
    "step {i} | loss {v} | lr 1e-4", "iter {i}: loss {v}, time {v}ms, mfu {v}%",
    "Step {i}: KD Raw: {v}, Temperature²: 9.0",
    " iteration {i}/ 100 | lm loss: {v} | loss scale: 4.0 | number of nan iterations: 0 |", "{i} train {v}",
    "[Eval] loss: {v}, ppl: {v}", "validation loss: {v}", "[fp16] overflow: skipping step, loss scale {v} -> {v}",
    "[Warning] lm_loss produced non-finite value (nan); clamping to zero.", "x{v}y {i}", "step {i} | loss {v}-{v}",
    "\r {v}%|##| {i}/100 [00:01<00:02, {v}it/s]\rstep {i} | loss {v}"])
NUMBERS = st.sampled_from(["1", "2.5", "-0.5", "1e-4", "3.", ".25", "12E+3", "007", "nan", "1.2.3", "4-5"])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(REPEATED_SHAPES, st.integers(0, 50), NUMBERS), min_size=1, max_size=60))
def test_fast_path_equals_line_by_line(monkeypatch, rows):
    """The vectorised path (lines grouped by shape) reads exactly what parsing each line alone reads."""
    body = "".join(shape.format(i=i, v=v) + "\n" for shape, i, v in rows)
    fast = textlog.read_text(body)
    with monkeypatch.context() as patch:
        patch.setattr(textlog, "SMALL_GROUP", 10**9)
        slow = textlog.read_text(body)
    if fast.frame is None:
        assert slow.frame is None
    else:
        assert fast.frame.astype({"name": str}).equals(slow.frame.astype({"name": str}))
    assert fast.events == slow.events


def test_hf_end_of_training_summary_is_no_step_value():
    result = text("step 100 | loss 2.0\n***** train metrics *****\n  epoch                    =      1.875\n"
                  "  train_loss               =     3.5303\n")
    assert points(result, "loss") == {100: 2.0} and set(result.frame["name"]) == {"loss"}
