"""checkpoint-nonfinite (C001): NaN/Inf in checkpoint weights or optimizer state; the last good checkpoint."""

from analyzer.detectors import checkpoint_nonfinite
from analyzer.findings import Severity, Skipped
from analyzer.run import Checkpoint, CheckpointStats, TensorStats
from tests.conftest import make_run

DET = checkpoint_nonfinite.DETECTOR


def run_check(run):
    return DET.check(run, DET.params)


def tensor(name, nonfinite=0, numel=1000):
    return TensorStats(name, (numel,), "float32", numel, nonfinite, 1.0, 0.02, 0.1)


def ckpt(step, weights=(), optimizer=(), error=None):
    stats = None if error else CheckpointStats(tensors=tuple(weights), optimizer_tensors=tuple(optimizer))
    return Checkpoint(f"checkpoints/step_{step:06d}.pt", step, "torch", stats, error)


def test_names_first_bad_checkpoint_tensors_and_last_good():
    run = make_run({"loss": [3.0, 2.0]}, checkpoints=[
        ckpt(100, [tensor("wte.weight"), tensor("h.0.mlp.weight")]),
        ckpt(200, [tensor("wte.weight"), tensor("h.0.mlp.weight")]),
        ckpt(300, [tensor("wte.weight", 10), tensor("h.0.mlp.weight", 250)], [tensor("state.3.exp_avg_sq", 1000)]),
        ckpt(400, [tensor("wte.weight", 1000)]),
    ])
    [f] = run_check(run)
    assert f.severity is Severity.CRITICAL
    assert (f.first_step, f.last_step) == (300, 400)
    assert f.metrics["last_good_checkpoint"] == "checkpoints/step_000200.pt"
    assert f.metrics["nonfinite_values"] == 1260 and f.metrics["bad_checkpoints"] == 2
    assert f.message.index("state.3.exp_avg_sq") < f.message.index("h.0.mlp.weight") < f.message.index("wte.weight")
    assert "weights and optimizer state" in f.message


def test_optimizer_state_only():
    run = make_run({}, checkpoints=[ckpt(50, [tensor("w")], [tensor("exp_avg_sq", 3)])])
    [f] = run_check(run)
    assert "optimizer state only" in f.message
    assert f.metrics["last_good_checkpoint"] is None
    assert "restart from scratch" in f.message


def test_clean_checkpoints_give_nothing():
    assert run_check(make_run({}, checkpoints=[ckpt(10, [tensor("w")]), ckpt(20, [tensor("w")])])) == []


def test_unreadable_and_missing_checkpoints_are_skipped_with_reason():
    skipped = run_check(make_run({}, checkpoints=[ckpt(10, error="refused: needs arbitrary pickled objects")]))
    assert isinstance(skipped, Skipped) and "refused" in skipped.reason
    assert isinstance(run_check(make_run({"loss": [1.0]})), Skipped)


def test_unreadable_checkpoint_is_never_the_last_good_one():
    run = make_run({}, checkpoints=[ckpt(10, [tensor("w")]), ckpt(20, error="Git LFS pointer"),
                                    ckpt(30, [tensor("w", 1)])])
    [f] = run_check(run)
    assert f.metrics["last_good_step"] == 10


def test_sample_run_checkpoints_are_clean():
    from analyzer.ingest import read_run
    from tests.conftest import SAMPLE_RUNS

    run = read_run(SAMPLE_RUNS / "kd-temperature-blowup")
    assert run_check(run) == []
