"""``python -m raysweep.sensitivity``: input errors before Ray, and a real table on digits_cnn."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml

import pruners
from raysweep.data import build_datasets
from raysweep.models import create_model
from raysweep.sensitivity import build_parser, main, resolve_job
from raysweep.space.sensitivity import COLUMNS, Job

LAYERS = ["features.0.weight", "features.3.weight", "features.7.weight", "classifier.0.weight", "classifier.2.weight"]


@pytest.fixture(scope="module")
def dense_file(dense_digits):
    return dense_digits / "final.pt"


def top1(model, val) -> float:
    model.eval()
    with torch.no_grad():
        x = torch.stack([val[i][0] for i in range(len(val))])
        y = torch.tensor([val[i][1] for i in range(len(val))])
        return int((model(x).argmax(1) == y).sum()) / len(y)


def test_bad_input_exits_2_before_ray(no_ray, capsys, dense_file, tmp_path):
    (tmp_path / "file").write_text("x")
    cases = [
        ([], "dense weights are required"),
        (["--weight_file", str(tmp_path / "missing.pt")], "weight file not found"),
        (["--weight_file", str(tmp_path / "file")], "cannot load weight file"),
        (["--weight_file", str(dense_file), "--ratios", "0.1,x"], "--ratios takes comma-separated numbers"),
        (["--weight_file", str(dense_file), "--ratios", "0.5,1.5"], "--ratios must be in (0, 1]"),
        (["--weight_file", str(dense_file), "--method", "nm"], "--method nm: the ladder is made of --ratios"),
        (["--weight_file", str(dense_file), "--method", "irregulr"], "did you mean 'irregular'"),
        (["--weight_file", str(dense_file), "--model", "digits_cn"], "did you mean digits_cnn"),
        (["--weight_file", str(dense_file), "--out", str(tmp_path / "file")], "is a file, not a folder"),
        (["--space", "digits"], "trains its dense weights during a sweep (dense: train); pass --weight_file"),
        (["--space", "digits", "--model", "vgg16", "--weight_file", str(dense_file)], "drop --model"),
        (["--space", "digitz"], "did you mean 'digits'"),
    ]  # fmt: skip
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") >= 1, (argv, err)


def test_space_gives_model_dataset_and_weights(tmp_path, dense_file):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"model": "digits_cnn", "dataset": "digits", "dense": str(dense_file), "trials": 0,
                                     "points": [{"method": "irregular", "ratios": {"*": 0.5}}]}))  # fmt: skip
    job = resolve_job(build_parser().parse_args(["--space", str(space), "--method", "pattern", "--ratios", "0.9,0.6"]))
    # pattern prunes the 3x3 convs only: the Linear layers are not measured
    assert job == Job("digits_cnn", "digits", None, str(dense_file), "pattern", [0.6, 0.9], LAYERS[:3], 10)


@pytest.mark.ray
def test_table_on_ray_matches_direct_pruning_and_drives_the_family(ray_local, dense_file, tmp_path):
    out = tmp_path / "sens"
    assert main(["--weight_file", str(dense_file), "--ratios", "0.9,0.5", "--out", str(out), "-q"]) == 0
    table = pd.read_csv(out / "sensitivity.csv")
    assert list(table.columns) == COLUMNS
    assert list(zip(table.layer, table.ratio)) == [(layer, r) for layer in LAYERS for r in (0.5, 0.9)]
    _, val, _ = build_datasets("digits", augment=False)
    state = torch.load(dense_file, weights_only=True)["model"]
    model = create_model("digits_cnn", dataset="digits")
    model.load_state_dict(state)
    dense = top1(model, val)
    assert (table.dense_accuracy == dense).all()
    assert (table.accuracy_drop == table.dense_accuracy - table.accuracy).all()
    for layer in ("features.3.weight", "classifier.0.weight"):  # one layer alone, from the dense weights each time
        for ratio in (0.5, 0.9):
            model.load_state_dict(state)
            pruners.prepare(model, {layer: ratio}, "irregular")
            row = table[(table.layer == layer) & (table.ratio == ratio)]
            assert row.accuracy.item() == top1(model, val)
            pruners.squash(model)
    assert (out / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads((out / "sensitivity.json").read_text())
    assert info["layers"] == LAYERS and info["ratios"] == [0.5, 0.9] and info["method"] == "irregular"

    from raysweep.space import load_space, trial_targets

    space = load_space({"trials": 0, "points": [{
        "method": "irregular", "ratios": {"features.0.weight": 0.0},
        "allocation": {"family": "sensitivity", "target": 0.7, "table": str(out / "sensitivity.csv")},
    }]})  # fmt: skip
    targets = trial_targets(space, {"point": 0})
    sizes = {n: create_model("digits_cnn", dataset="digits").get_parameter(n).numel() for n in LAYERS}
    assert sum(pruners.selection.count_for_ratio(r, sizes[n]) for n, r in targets.items()) == pruners.selection.count_for_ratio(0.7, 40208)
