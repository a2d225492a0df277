"""A sweep over a user's own model and data -- from YAML by import path, and from Python with
callables -- read back through the Python API: the front, the best trial, the pruned model."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import raysweep
from helpers import write_space
from raysweep import search

pytestmark = pytest.mark.ray

METHODS = {"irregular": {"*": {"uniform": [0.3, 0.9]}}, "filter": {"*": {"uniform": [0.2, 0.5]}, "head.1.weight": 0.0}}


class NotebookNet(nn.Module):
    """A model defined where the sweep is started (a notebook, a script): shipped by value."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 24, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(24 * 64, num_classes))

    def forward(self, x):
        return self.head(self.body(x))


def notebook_data(root):
    from tests.user_code import digits_pair

    return digits_pair(root)


def _accuracy(model: nn.Module, val: TensorDataset) -> float:
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in DataLoader(val, batch_size=512))
    return hits / len(val)


def test_a_yaml_sweep_over_a_model_and_data_named_by_import_path(ray_local, tmp_path):
    space = {"name": "byname", "model": "tests.user_code:SmallNet", "dataset": "tests.user_code:digits_pair",
             "dense": "train", "dense_epochs": 4, "trials": 3, "search": "random", "seed": 3, "epochs": 1,
             "methods": {"irregular": {"*": {"uniform": [0.3, 0.9]}}}}  # fmt: skip
    assert search.main(["--space", str(write_space(tmp_path, space)), "--storage", str(tmp_path), "-q"]) == 0
    trials = pd.read_csv(tmp_path / "byname" / "trials.csv")
    assert (trials["status"] == "TERMINATED").all() and len(trials) == 3
    assert "ratio/depthwise.weight" in trials.columns  # the user's layers, by their own names
    assert {"config/lr", "config/epochs", "config/batch_size", "config/wd", "config/nm_permute"} <= set(trials.columns)
    assert (trials["accuracy_drop"] == trials["dense_accuracy"] - trials["accuracy"]).all()


def test_raysweep_run_with_callables_and_the_sweep_it_returns(ray_local, tmp_path):
    # speedup among the objectives: timed after the last epoch only, so the epochs before it report
    # it as NaN (Tune's searcher refuses a result that lacks an objective).
    space = {"name": "nb", "dense": "train", "dense_epochs": 4, "trials": 4, "search": "random", "seed": 4,
             "epochs": 2, "methods": METHODS, "objectives": {"accuracy": "max", "sparsity": "max", "speedup": "max"}}  # fmt: skip
    sweep = raysweep.run(space, model=NotebookNet, dataset=notebook_data, storage=tmp_path)
    trials = sweep.trials
    assert len(trials) == 4 and (trials["status"] == "TERMINATED").all(), trials[["status", "error"]].to_dict("records")
    assert (trials["speedup"] > 0).all() and sweep.objectives == space["objectives"]
    assert trials["config/lr"].notna().all() and set(trials["method"]) <= {"irregular", "filter"}

    # The front is the report's: pareto.csv's overall rows, the same trials.
    pareto = pd.read_csv(sweep.path / "pareto.csv")
    assert set(sweep.front()["trial_id"]) == set(pareto.loc[pareto["front"] == "all", "trial_id"])
    assert sweep.hypervolume() > 0 and 0.5 < sweep.dense["accuracy"] <= 1.0

    # best(): the most compressed trial within the drop; the most accurate one above a sparsity.
    drop = float(trials["accuracy_drop"].max())
    within = trials[trials["accuracy"] >= sweep.dense["accuracy"] - drop - 1e-9]
    assert sweep.best(max_drop=drop)["trial_id"] == within.sort_values("sparsity", ascending=False).iloc[0]["trial_id"]
    floor = float(trials["sparsity"].median())
    above = trials[trials["sparsity"] >= floor - 1e-9]
    assert sweep.best(min_sparsity=floor)["accuracy"] == above["accuracy"].max()
    with pytest.raises(LookupError):
        sweep.best(min_sparsity=1.01)

    # load_model(): the trial's pruned model, squashed, scores what the trial recorded.
    row = trials.iloc[0]
    model = sweep.load_model(row["trial_id"])
    _, val = notebook_data(None)
    assert abs(_accuracy(model, val) - row["accuracy"]) <= 1e-6
    assert not any("parametrizations" in name for name, _ in model.named_parameters())

    loaded = raysweep.load_sweep(sweep.path, model=NotebookNet, dataset=notebook_data)
    assert loaded.trials.equals(sweep.trials) and set(loaded.front()["trial_id"]) == set(sweep.front()["trial_id"])
