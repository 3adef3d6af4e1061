"""Memory of big runs: the Run's text columns are categoricals across files; the allocator settings are harmless."""

from __future__ import annotations

import pandas as pd

from analyzer import prefetch
from analyzer.ingest import read_run


def test_text_columns_are_categoricals_with_sorted_categories_across_files(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"step": 1, "loss": 2.0, "lr": 0.1}\n{"step": 2, "loss": 1.5, "lr": 0.1}\n')
    (tmp_path / "b.csv").write_text("step,grad_norm,eval_loss\n1,0.5,\n2,0.4,1.9\n")
    run = read_run(tmp_path)
    for column in ("metric", "split", "name"):
        dtype = run.scalars[column].dtype
        assert isinstance(dtype, pd.CategoricalDtype)
        assert list(dtype.categories) == sorted(dtype.categories)
    assert run.metrics == ("eval_loss", "grad_norm", "loss", "lr")
    assert run.series("loss").to_dict() == {1: 2.0, 2: 1.5}
    assert run.series("eval_loss").to_dict() == {2: 1.9}
    assert set(run.scalars.loc[run.scalars["metric"] == "eval_loss", "split"]) == {"eval"}


def test_returning_freed_memory_to_the_system_never_raises():
    prefetch._return_freed_memory()
    prefetch._return_freed_memory()
