"""write_reports / print_front_table on a small sweep-shaped frame with a failed trial."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from raysweep.results.pareto import hypervolume, pareto_front
from raysweep.results.reports import failed_mask, finished_mask, print_front_table, write_reports

ERROR_TEXT = "RuntimeError: CUDA out of memory in trial t07"


def brute_force_ids(df: pd.DataFrame) -> set[str]:
    """Trial ids no other row dominates in (accuracy, sparsity), by plain loops."""
    pts = list(zip(df["trial_id"], df["accuracy"], df["sparsity"]))
    return {t for t, a, s in pts
            if not any(a2 >= a and s2 >= s and (a2 > a or s2 > s) for _, a2, s2 in pts)}


@pytest.fixture
def trials() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 12
    sparsity = np.round(rng.uniform(0.4, 0.97, n), 4)
    accuracy = np.round(0.95 - 0.3 * sparsity ** 3 + rng.normal(0, 0.02, n), 4)
    df = pd.DataFrame({
        "trial_id": [f"t{i:02d}" for i in range(n)],
        "status": ["TERMINATED"] * n,
        "error": [None] * n,
        "method": ["filter", "nm"] * (n // 2),
        "schedule": ["oneshot"] * n,
        "ratio/block2.6.weight": np.round(rng.uniform(0, 1, n), 3),
        "accuracy": accuracy,
        "sparsity": sparsity,
        "flops_ratio": np.round(1 - 0.8 * sparsity, 4),
        "epochs": [3] * n,
        "wall_s": np.round(rng.uniform(5, 30, n), 2),
    })
    # a failed trial with metrics that would top the front if it were counted
    df.loc[7, ["status", "error", "accuracy", "sparsity"]] = ["ERROR", ERROR_TEXT, 0.99, 0.99]
    return df


def test_masks(trials):
    assert finished_mask(trials).sum() == len(trials) - 1
    assert failed_mask(trials).tolist() == [i == 7 for i in range(len(trials))]
    assert finished_mask(trials.drop(columns="status")).all()


def test_write_reports(tmp_path, trials):
    paths = write_reports(trials, tmp_path / "out", title="unit sweep")
    assert set(paths) == {"trials", "pareto", "markdown", "html", "plot"}
    names = {p.name for p in paths.values()}
    assert names == {"trials.csv", "pareto.csv", "report.md", "report.html", "pareto.png"}
    assert all(p.is_file() and p.parent == tmp_path / "out" for p in paths.values())

    back = pd.read_csv(paths["trials"])  # empty error cells come back as NaN
    pd.testing.assert_frame_equal(back.fillna({"error": ""}), trials.fillna({"error": ""}),
                                  check_dtype=False)

    pareto = pd.read_csv(paths["pareto"])
    assert pareto.columns[0] == "front"
    assert set(pareto["front"]) == {"all", "filter", "nm"}
    assert "t07" not in set(pareto["trial_id"])
    done = trials[trials["status"] == "TERMINATED"]
    all_rows = pareto[pareto["front"] == "all"].drop(columns="front")
    assert set(all_rows["trial_id"]) == brute_force_ids(done)
    expected = back.set_index("trial_id").loc[all_rows["trial_id"]].reset_index()
    pd.testing.assert_frame_equal(all_rows.reset_index(drop=True), expected, check_dtype=False)
    for method in ("filter", "nm"):
        ids = set(pareto.loc[pareto["front"] == method, "trial_id"])
        assert ids == brute_force_ids(done[done["method"] == method])

    md = paths["markdown"].read_text()
    assert "# unit sweep" in md
    assert ERROR_TEXT in md
    assert "Hypervolume" in md
    assert f"{hypervolume(done):.4f}" in md
    assert "Trials: 12 · finished: 11 · failed: 1" in md
    assert "Knee point" in md and "sparsity ≥ 0.95" in md

    page = paths["html"].read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page
    assert ERROR_TEXT in page and "<table" in page

    png = paths["plot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 5_000


def test_write_reports_minimal_columns_and_min_objective(tmp_path):
    df = pd.DataFrame({"accuracy": [0.9, 0.8, 0.7], "flops_ratio": [0.6, 0.4, 0.5]})
    objectives = {"accuracy": "max", "flops_ratio": "min"}
    paths = write_reports(df, tmp_path, objectives=objectives, reference={"flops_ratio": 0.9})
    pareto = pd.read_csv(paths["pareto"])
    assert pareto["front"].tolist() == ["all", "all"]
    assert "flops_ratio = 0.9" in paths["markdown"].read_text()
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"


def test_write_reports_nothing_finished(tmp_path):
    df = pd.DataFrame({"trial_id": ["a"], "status": ["ERROR"], "error": ["boom"],
                       "method": ["nm"], "accuracy": [np.nan], "sparsity": [np.nan]})
    paths = write_reports(df, tmp_path)
    assert all(p.is_file() for p in paths.values())
    assert pd.read_csv(paths["pareto"]).empty
    assert "boom" in paths["markdown"].read_text()


def test_bad_objective_fails_before_writing(tmp_path, trials):
    with pytest.raises(ValueError, match="accuracy"):
        write_reports(trials, tmp_path / "x", objectives={"acc": "max"})
    assert not (tmp_path / "x").exists()


def test_print_front_table(trials):
    text = print_front_table(trials)
    assert text.startswith("Pareto front (accuracy max, sparsity max):")
    front = pareto_front(trials[trials["status"] == "TERMINATED"])
    assert f"{len(front)} of 11 finished trials" in text
    assert all(t in text for t in front["trial_id"])
    assert "t07" not in text


def test_a_latency_objective_gets_its_own_front_plot(tmp_path):
    frame = pd.DataFrame({
        "trial_id": ["a", "b", "c"], "status": "TERMINATED", "method": ["irregular", "filter", "filter"],
        "accuracy": [0.99, 0.97, 0.95], "sparsity": [0.5, 0.6, 0.7], "latency_ms_b64": [3.0, 2.0, 2.5],
    })
    paths = write_reports(frame, tmp_path, {"accuracy": "max", "sparsity": "max", "latency_ms_b64": "min"})
    assert paths["plot"] == tmp_path / "pareto.png" and paths["plot"].is_file()
    assert paths["plot_latency_ms_b64"] == tmp_path / "pareto_latency_ms_b64.png"
    assert paths["plot_latency_ms_b64"].stat().st_size > 1000
    front = pd.read_csv(paths["pareto"])
    assert set(front.loc[front["front"] == "all", "trial_id"]) == {"a", "b", "c"}  # c: sparsest
