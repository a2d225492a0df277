"""Search spaces: shipped files, Tune domains, trial configs, overrides and error reporting."""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import yaml

import pruners
from raysweep.config import RunConfig
from raysweep.space import (
    SPACE_KEYS,
    SearchSpace,
    SpaceError,
    flatten_config,
    list_spaces,
    load_space,
    override_path,
    to_mapping,
    to_tune,
    trial_run_config,
    trial_targets,
)
from raysweep.space_validate import build_model

SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"
REFERENCE = SPACES_DIR / "reference"
SEED = Path("/work/shared/seed/prune_config")
SHIPPED = ["cifar10_resnet56", "cifar10_vgg16", "digits", "imagenet_resnet18"]
DOCUMENTED_KEYS = {
    "name", "model", "dataset", "data_root", "dense", "dense_epochs", "dense_lr", "trials", "search",
    "sampler", "seed", "scheduler", "asha", "objectives", "resources", "epochs", "lr", "batch_size", "wd",
    "methods", "ratios", "schedules", "points",
}  # fmt: skip


def sample(domain_tree: dict, rng: random.Random) -> dict:
    """Resolve every Tune domain with its own ``.sample()`` (what a searcher would hand a trial)."""
    from ray.tune.search.sample import Domain

    def resolve(value):
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        return value.sample(random_state=rng.randrange(2**31)) if isinstance(value, Domain) else value

    return resolve(domain_tree)


def test_shipped_spaces_are_listed_and_documented_keys_exported():
    assert list_spaces() == SHIPPED
    assert set(SPACE_KEYS) == DOCUMENTED_KEYS


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_loads_validates_and_converts(name):
    space = load_space(name)
    assert isinstance(space, SearchSpace) and space.source == SPACES_DIR / f"{name}.yaml"
    assert space.methods and space.points and space.trials > 0
    param_space, points = to_tune(space)
    assert "point" not in param_space
    assert [p["point"] for p in points] == list(range(len(space.points)))
    model = build_model(space.model, space.dataset)
    for method in space.methods:  # every method, with sampled values, resolves on the model
        cfg = sample({**param_space, "method": method}, random.Random(0))
        run = trial_run_config(space, cfg, RunConfig())
        assert run.method == method and pruners.resolve_targets(model, run.targets)


def test_shipped_paths_resolve_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = load_space("cifar10_vgg16")  # neither data nor weights exist: checked by the sweep
    assert space.data_root == str(tmp_path / "data")
    assert space.dense == str(tmp_path / "checkpoints" / "cifar10_vgg16.pth") == space.dense_weights
    assert all(p.config_file.parent == REFERENCE for p in space.points)


def test_digits_param_space_keys_and_domain_types():
    from ray.tune.search.sample import Categorical, Float, LogUniform, Uniform

    space = load_space()
    assert (space.name, space.model, space.dataset, space.dense) == ("digits-default", "digits_cnn", "digits", "train")
    assert list(space.methods) == ["irregular", "filter", "stripe", "pattern", "nm"]
    param_space, points = to_tune(space)
    flat = flatten_config(param_space)
    assert {"method", "schedule", "epochs", "lr", "batch_size", "wd"} <= set(flat)
    for method, targets in space.methods.items():
        assert {f"{method}/{k}" for k in targets} <= set(flat)
    assert flat["schedule_params/agp/end_epoch"] == 2
    assert isinstance(flat["method"], Categorical) and flat["method"].categories == list(space.methods)
    assert isinstance(flat["schedule"], Categorical) and flat["schedule"].categories == ["oneshot", "agp"]
    assert isinstance(flat["irregular/features.3.weight"], Float)
    assert isinstance(flat["irregular/features.3.weight"].get_sampler(), Uniform)
    assert isinstance(flat["lr"].get_sampler(), LogUniform)
    assert isinstance(flat["nm/*"], Categorical) and "m4n2" in flat["nm/*"].categories
    assert flat["nm/features.0.weight"] == 0.0 and flat["epochs"] == 3
    assert len(points) == 5 and all(isinstance(p["lr"], float) for p in points)


def test_sampled_config_gives_int_fields_and_resolvable_targets():
    space = load_space({
        "trials": 2,
        "epochs": {"quniform": [3, 6, 1]},
        "batch_size": {"choice": [32, 64]},
        "methods": {"irre_prune": {"*": {"uniform": [0.2, 0.8]}, "features.0.weight": 0.0}},
        "schedules": {"agp": {"end_epoch": {"quniform": [1, 2, 1]}, "frequency": 1}},
    })  # fmt: skip
    assert list(space.methods) == ["irregular"]
    param_space, _ = to_tune(space)
    rng = random.Random(1)
    for _ in range(5):
        cfg = sample(param_space, rng)
        run = trial_run_config(space, cfg, RunConfig(name="kept"))
        assert run.name == "kept" and run.schedule == "agp"
        assert type(run.epochs) is int and type(run.batch_size) is int
        assert type(run.schedule_params["end_epoch"]) is int
        pruners.get_schedule(run.schedule, **run.schedule_params)
        targets = trial_targets(space, cfg)
        assert targets["features.0.weight"] == 0.0
        assert targets["features.3.weight"] == targets["classifier.2.weight"] == pytest.approx(cfg["irregular"]["*"])


@pytest.mark.parametrize("method,stem", [
    ("irregular", "vgg16_cifar10_irre"), ("filter", "vgg16_cifar10_filter"), ("stripe", "vgg16_cifar10_stripe"),
    ("pattern", "vgg16_cifar10_pat"), ("nm", "vgg16_cifar10_mn"),
])  # fmt: skip
def test_vgg16_points_reproduce_the_reference_files(method, stem):
    space = load_space("cifar10_vgg16")
    index, point = next((i, p) for i, p in enumerate(space.points) if p.label == stem)
    expected = pruners.load_ratio_config(REFERENCE / f"{stem}.yaml")
    assert point.method == method and point.targets == expected
    _, points = to_tune(space)
    run = trial_run_config(space, points[index], RunConfig())
    assert run.targets == expected and run.schedule == "regrow" and run.schedule_params == {"prune_freq": 5, "retrain_epoch": 15}
    assert trial_targets(space, points[index]) == expected
    assert trial_run_config(space, {"point": index}, RunConfig()) == run  # the index alone is enough


def test_point_index_is_authoritative_and_minus_one_means_searched():
    space = load_space("digits")
    param_space, points = to_tune(space)
    # the sweep driver sends points as {every param_space key: None, **point}
    run = trial_run_config(space, {**dict.fromkeys(param_space), **points[4]}, RunConfig())
    assert run.method == "nm" and run.targets == {"*": "m4n2", "features.0.weight": 0.0}
    cfg = {**sample(param_space, random.Random(3)), "method": "irregular", "point": -1}
    run = trial_run_config(space, cfg, RunConfig())
    assert run.method == "irregular" and run.targets["features.3.weight"] == cfg["irregular"]["features.3.weight"]


@pytest.mark.skipif(not SEED.is_dir(), reason="reference project not present")
def test_reference_copies_are_unchanged():
    for path in SEED.glob("*.yaml"):
        assert (REFERENCE / path.name).read_bytes() == path.read_bytes()


def test_overrides():
    space = load_space("digits", ["trials=3", "resources.workers_per_trial=2", "methods=[irregular]", "lr=1e-3"])
    assert space.trials == 3 and space.resources.workers_per_trial == 2 and space.lr == 0.001
    assert list(space.methods) == ["irregular"]
    assert space.methods["irregular"] == load_space("digits").methods["irregular"]  # targets kept
    space = load_space("digits", ["methods.irregular.features.*=0.4", 'methods.nm."classifier.0.weight"=m8n2'])
    assert space.methods["irregular"]["features.*"] == 0.4 and space.methods["nm"]["classifier.0.weight"] == "m8n2"
    assert override_path("ratios.layer1.0.conv1.weight") == ["ratios", "layer1.0.conv1.weight"]
    assert override_path("points.0.ratios.block0.3.weight") == ["points", "0", "ratios", "block0.3.weight"]
    with pytest.raises(SpaceError, match="did you mean 'trials'"):
        load_space("digits", ["trails=3"])


def test_every_problem_is_reported_at_once():
    bad = {
        "trails": 5,
        "methods": {
            "irregular": {"*": 1.2, "feature.*": 0.5},
            "nm": {"*": "m4n2"},
            "irregularr": {"*": 0.5},
        },
    }  # fmt: skip
    with pytest.raises(SpaceError) as info:
        load_space(bad)
    text = str(info.value)
    assert "unknown key 'trails'; did you mean 'trials'?" in text
    assert "prune ratio 1.2 is outside [0, 1]" in text
    assert "'feature.*' matches no prunable parameter" in text
    assert "'m4n2' cannot prune features.0.weight" in text and "set 'features.0.weight' to 0.0" in text
    assert "unknown prune method 'irregularr'; did you mean 'irregular'?" in text
    assert len(info.value.problems) == 5 and all(p in text.splitlines()[i + 1] for i, p in enumerate(info.value.problems))


@pytest.mark.parametrize("space,needle", [
    ({"search": "grid", "lr": {"uniform": [0.01, 0.1]}}, "grid takes only {choice: [...]} distributions; found uniform at lr"),
    ({"lr": {"loguniform": [0, 0.1]}}, "loguniform needs lo > 0"),
    ({"lr": {"uniform": [0.1, 0.01]}}, "uniform needs lo < hi"),
    ({"batch_size": {"choice": []}}, "choice needs a non-empty list"),
    ({"lr": {"unifrom": [0.1, 0.2]}}, "did you mean 'uniform'"),
    ({"methods": {"filter": {"*": "m4n2"}}}, "belong to method 'nm'"),
    ({"methods": {"nm": {"*": {"uniform": [0.1, 0.5]}}}}, "method 'nm' takes an 'mXnY' target"),
    ({"trials": 0}, "nothing to run"),
    ({"trials": -1}, "trials: must be an int >= 0"),
    ({"resources": {"workers_per_trial": 0}}, "workers_per_trial: must be an int >= 1"),
    ({"scheduler": "ashaa"}, "did you mean 'asha'"),
    ({"model": "vgg61", "dataset": "cifar10"}, "unknown model 'vgg61'"),
    ({"dataset": "cifar11"}, "unknown dataset 'cifar11'"),
    ({"schedules": {"agp": {"end_epoch": 9}}}, "reaches final sparsity at epoch 9"),
    ({"points": [{"method": "irregular", "config_file": "missing.yaml"}]}, "file not found"),
])  # fmt: skip
def test_single_problems(space, needle):
    base = {"trials": 1, "methods": {"irregular": {"*": 0.5}}}
    with pytest.raises(SpaceError, match=None) as info:
        load_space({**base, **space})
    assert needle in str(info.value)


def test_grid_turns_choices_into_grid_search():
    space = load_space({"search": "grid", "trials": 5, "methods": {"irregular": {"*": {"choice": [0.5, 0.7]}}, "filter": {"*": 0.3}}})
    param_space, _ = to_tune(space)
    assert param_space["method"] == {"grid_search": ["irregular", "filter"]}
    assert param_space["irregular"]["*"] == {"grid_search": [0.5, 0.7]}
    assert space.num_samples == 1


def test_reference_yaml_as_spec():
    path = REFERENCE / "vgg16_cifar10_filter.yaml"
    space = load_space(path, ["method=filter_prune", "epochs=2"])
    assert (space.trials, space.model, space.dataset, space.epochs) == (0, "vgg16", "cifar10", 2)
    assert len(space.points) == 1 and space.points[0].method == "filter"
    assert space.points[0].targets == pruners.load_ratio_config(path)
    _, points = to_tune(space)
    assert trial_run_config(space, points[0], RunConfig()).targets == pruners.load_ratio_config(path)
    assert load_space(REFERENCE / "vgg16_cifar10_mn.yaml").points[0].method == "nm"  # inferred
    resnet = load_space(REFERENCE / "resnet18_imagenet_irre.yaml", ["model=resnet18", "dataset=imagenet"])
    assert resnet.points[0].method == "irregular" and len(resnet.points[0].targets) == 20


def test_user_file_paths_are_relative_to_the_file(tmp_path, monkeypatch):
    folder = tmp_path / "spaces"
    folder.mkdir()
    (folder / "mine.yaml").write_text(
        "trials: 0\ndense: weights/dense.pth\nwd: 5e-4\n"
        "points:\n  - {method: irregular, config_file: ratios.yaml}\n"
    )  # fmt: skip
    (folder / "ratios.yaml").write_text("prune_ratio:\n  module.features.3.weight: 0.5\n")
    monkeypatch.chdir(tmp_path)
    space = load_space(folder / "mine.yaml")
    assert space.name == "mine" and space.wd == 5e-4
    assert space.dense == str(folder / "weights" / "dense.pth")
    assert space.points[0].targets == {"features.3.weight": 0.5}


def test_to_mapping_round_trips():
    space = load_space("digits")
    again = load_space(yaml.safe_load(yaml.safe_dump(to_mapping(space))))
    assert dataclasses.replace(again, source=space.source) == space
