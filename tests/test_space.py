"""Search spaces: shipped files, Tune domains, trial configs, overrides and error reporting."""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import torch
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
    trial_allocation,
    trial_run_config,
    trial_targets,
)
from raysweep.space.schema import Dist
from raysweep.space.targets import build_model
from raysweep.sweep.driver import tune_config

SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"
REFERENCE = SPACES_DIR / "reference"
SEED = Path("/work/shared/seed/prune_config")
SHIPPED = ["cifar10_resnet56", "cifar10_vgg16", "digits", "digits_allocation", "digits_layerwise", "imagenet_resnet18"]
DOCUMENTED_KEYS = {
    "name", "model", "dataset", "dataset_options", "data_root", "dense", "dense_epochs", "dense_lr", "trials", "search",
    "sampler", "seed", "scheduler", "asha", "objectives", "resources", "epochs", "lr", "batch_size", "wd",
    "nm_permute", "measure_latency", "methods", "ratios", "schedules", "points", "tracking",
    "precision", "channels_last", "compile", "lr_schedule", "warmup_epochs", "label_smoothing", "distill",
}  # fmt: skip


def real_model(name: str, dataset: str):
    """The model with real (random) weights: what weight-based allocation families rank."""
    from raysweep.models import create_model

    torch.manual_seed(0)
    return create_model(name, dataset=dataset)


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
        assert run.method == method and (pruners.resolve_targets(model, run.targets) or method in space.allocations)
        if method in space.allocations:  # allocation families resolve with the dense weights
            targets = trial_targets(space, cfg, real_model(space.model, space.dataset))
            assert run.allocation and set(targets) == set(pruners.prunable_parameters(model))


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
    assert list(space.methods) == ["irregular", "filter", "stripe", "channel", "pattern", "nm"]
    param_space, points = to_tune(space)
    flat = flatten_config(param_space)
    assert {"method", "schedule", "epochs", "lr", "batch_size", "wd"} <= set(flat)
    for method, targets in space.methods.items():
        assert {f"{method}/{k}" for k in targets} <= set(flat)
    assert flat["schedule_params/agp/end_epoch"] == 2
    assert isinstance(flat["method"], Categorical) and flat["method"].categories == list(space.methods)
    assert isinstance(flat["schedule"], Categorical) and flat["schedule"].categories == ["oneshot", "agp"]
    assert isinstance(flat["pattern/features.*"], Float)
    assert isinstance(flat["pattern/features.*"].get_sampler(), Uniform)
    assert isinstance(flat["irregular/allocation/target"].get_sampler(), Uniform)
    assert space.allocations["irregular"].family == "lamp"
    assert isinstance(flat["lr"].get_sampler(), LogUniform)
    assert isinstance(flat["nm/*"], Categorical) and "m4n2" in flat["nm/*"].categories
    assert isinstance(flat["nm_permute"], Categorical) and flat["nm_permute"].categories == [True, False]
    assert flat["nm/features.0.weight"] == 0.0 and flat["epochs"] == 3
    assert len(points) == 22 and all(isinstance(p["lr"], float) for p in points)
    assert {p["method"] for p in points} == set(space.methods)


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
    index = next(i for i, p in enumerate(points) if p["method"] == "nm")
    run = trial_run_config(space, {**dict.fromkeys(param_space), **points[index]}, RunConfig())
    assert run.method == "nm" and run.targets == {"*": "m4n2", "features.0.weight": 0.0} and run.nm_permute is True
    cfg = {**sample(param_space, random.Random(3)), "method": "pattern", "point": -1}
    run = trial_run_config(space, cfg, RunConfig())
    assert run.method == "pattern" and run.targets["features.*"] == cfg["pattern"]["features.*"]


@pytest.mark.skipif(not SEED.is_dir(), reason="reference project not present")
def test_reference_copies_are_unchanged():
    for path in SEED.glob("*.yaml"):
        assert (REFERENCE / path.name).read_bytes() == path.read_bytes()


def test_overrides():
    space = load_space("digits", ["trials=3", "resources.workers_per_trial=2", "methods=[pattern]", "lr=1e-3", "points=[]"])
    assert space.trials == 3 and space.resources.workers_per_trial == 2 and space.lr == 0.001
    assert list(space.methods) == ["pattern"]
    assert space.methods["pattern"] == load_space("digits").methods["pattern"]  # targets kept
    space = load_space("digits", ["methods.pattern.features.*=0.7", 'methods.nm."classifier.0.weight"=m8n2'])
    assert space.methods["pattern"]["features.*"] == 0.7 and space.methods["nm"]["classifier.0.weight"] == "m8n2"
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
    ({"resources": {"executor": "poool"}}, "unknown executor 'poool'; did you mean 'pool'?"),
    ({"resources": {"workers_per_trial": 2, "executor": "inprocess"}}, "inprocess trains one rank in the trial's own process"),
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
    assert tune_config(space, [], concurrency=2).num_samples == 1  # what Tune receives: the grid once


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


# ------------------------------------------------------------------------- allocation sections
ALLOCATION_SPACE = {
    "trials": 2,
    "methods": {
        "irregular": {
            "allocation": {
                "family": {"choice": ["erk", "lamp", "uniform"]},
                "target": {"uniform": [0.5, 0.95]},
                "perturb": {"features.*": {"uniform": [-0.1, 0.1]}},
            },
            "features.0.weight": 0.0,
        },
        "nm": {"*": "m4n2", "features.0.weight": 0.0},
    },
}  # fmt: skip
DIGITS_SIZES = {"features.0.weight": 144, "features.3.weight": 4608, "features.7.weight": 18432, "classifier.0.weight": 16384, "classifier.2.weight": 640}


def removed(targets: dict) -> int:
    return sum(pruners.selection.count_for_ratio(r, DIGITS_SIZES[n]) for n, r in targets.items())


def real_digits_model():
    return real_model("digits_cnn", "digits")


def test_allocation_space_tune_domains_and_trials():
    from ray.tune.search.sample import Categorical, Float

    space = load_space(ALLOCATION_SPACE)
    assert space.methods["irregular"] == {"features.0.weight": 0.0} and list(space.allocations) == ["irregular"]
    param_space, _ = to_tune(space)
    flat = flatten_config(param_space)
    assert isinstance(flat["irregular/allocation/family"], Categorical)
    assert flat["irregular/allocation/family"].categories == ["erk", "lamp", "uniform"]
    assert isinstance(flat["irregular/allocation/target"], Float) and isinstance(flat["irregular/allocation/perturb/features.*"], Float)
    rng, model = random.Random(0), real_digits_model()
    seen = set()
    for _ in range(12):
        cfg = {**sample(param_space, rng), "method": "irregular"}
        spec = trial_allocation(space, cfg)
        alloc = cfg["irregular"]["allocation"]
        assert spec == {"family": alloc["family"], "target": alloc["target"], "perturb": {"features.*": alloc["perturb"]["features.*"]}, "mode": "add"}
        run = trial_run_config(space, cfg, RunConfig())
        assert run.method == "irregular" and run.targets == {"features.0.weight": 0.0} and run.allocation == spec
        targets = trial_targets(space, cfg, model)
        assert targets["features.0.weight"] == 0.0 and removed(targets) == pruners.selection.count_for_ratio(spec["target"], 40208)
        seen.add(spec["family"])
    assert seen == {"erk", "lamp", "uniform"}
    nm_cfg = {**sample(param_space, rng), "method": "nm"}
    assert trial_allocation(space, nm_cfg) is None and trial_targets(space, nm_cfg)["features.3.weight"] == "m4n2"
    assert RunConfig().allocation == {}  # a per-layer trial leaves the base's (empty) allocation


def test_weight_families_need_real_weights_and_erk_does_not():
    space = load_space(ALLOCATION_SPACE)
    cfg = {"method": "irregular", "irregular": {"allocation": {"family": "lamp", "target": 0.8, "perturb": {"features.*": 0.0}}}}
    with pytest.raises(ValueError, match="dense weights"):
        trial_targets(space, cfg)  # the space's model on the meta device has no values
    cfg["irregular"]["allocation"]["family"] = "erk"
    assert removed(trial_targets(space, cfg)) == pruners.selection.count_for_ratio(0.8, 40208)


def test_allocation_problems_are_reported_at_once():
    bad = {
        "trials": 2,
        "methods": {
            "irregular": {
                "allocation": {"family": {"choice": ["erk", "lampp"]}, "target": {"uniform": [0.5, 1.2]}, "perturb": {"feature.*": 0.1}, "mode": "scale"},
                "features.0.weight": 0.0,
            },
            "filter": {"allocation": {"family": "uniform", "target": 1.0, "perturb": {"features.3.weight": 2}}, "features.0.weight": 0.0},
            "stripe": {"allocation": {"family": "sensitivity", "target": 0.5, "tabel": "x.csv"}},
            "nm": {"allocation": {"family": "erk", "target": 0.5}},
            "pattern": {"allocation": {"family": "erk", "target": 0.5}},
        },
    }  # fmt: skip
    with pytest.raises(SpaceError) as info:
        load_space(bad)
    assert info.value.problems == [
        "methods.irregular.allocation.mode: unknown perturb mode 'scale' (known: add, mul)",
        ("methods.irregular.allocation.family: unknown allocation family 'lampp'; did you mean 'lamp'? "
         "(known: uniform, erk, global_magnitude, lamp, sensitivity)"),
        "methods.irregular.allocation.target: the global target is a fraction of prunable weights removed in [0, 1], got 1.2",
        "methods.filter.allocation.perturb.features.3.weight: an offset (mode add) must be a number in [-1, 1], got 2",
        "methods.stripe.allocation: unknown key 'tabel'; did you mean 'table'?",
        "methods.stripe.allocation.table: the 'sensitivity' family needs a table: the sensitivity.csv written by python -m raysweep.sensitivity",
        ("methods.nm.allocation: allocation families set a ratio per layer; method 'nm' has no free per-layer ratio "
         "(allocation works with irregular, filter, stripe, channel): give nm's targets per layer"),
        ("methods.pattern.allocation: allocation families set a ratio per layer; method 'pattern' has no free per-layer ratio "
         "(allocation works with irregular, filter, stripe, channel): give pattern's targets per layer"),
        "methods.irregular.allocation.perturb: 'feature.*' matches no prunable parameter; closest: features.7.weight, features.3.weight, features.0.weight",
        "methods.filter.allocation.target: 1.0 cannot be met: the fixed layers keep at least 144 of the 40208 prunable weights (at most 0.9964)",
    ]  # fmt: skip


def write_table(path: Path, layers=tuple(DIGITS_SIZES)) -> Path:
    rows = ["layer,ratio,accuracy,accuracy_drop,dense_accuracy"]
    for i, layer in enumerate(layers):
        rows += [f"{layer},{r},{0.98 - d},{d},0.98" for r, d in ((0.5, 0.01 * i), (0.9, 0.05 * (i + 1)))]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_sensitivity_family_table_relative_to_the_space_file_and_inline(tmp_path, monkeypatch):
    folder = tmp_path / "spaces"
    folder.mkdir()
    write_table(folder / "sensitivity.csv")
    (folder / "sens.yaml").write_text(yaml.safe_dump({
        "trials": 1,
        "methods": {"irregular": {"allocation": {"family": "sensitivity", "target": {"uniform": [0.4, 0.8]}, "table": "sensitivity.csv"}}},
    }))  # fmt: skip
    monkeypatch.chdir(tmp_path)
    space = load_space(folder / "sens.yaml")
    alloc = space.allocations["irregular"]
    assert alloc.table == str(folder / "sensitivity.csv") and set(alloc.table_data["curves"]) == set(DIGITS_SIZES)
    cfg = {"method": "irregular", "irregular": {"allocation": {"target": 0.6}}}
    spec = trial_allocation(space, cfg)
    assert spec["table"] == alloc.table_data  # inline: workers need no file
    targets = trial_targets(space, cfg)
    assert removed(targets) == pruners.selection.count_for_ratio(0.6, 40208)
    assert targets["features.0.weight"] > targets["classifier.2.weight"]  # the least sensitive layer prunes most
    assert dataclasses.replace(load_space(to_mapping(space)), source=space.source) == space
    write_table(folder / "sensitivity.csv", layers=("features.0.weight", "features.3.weight"))
    with pytest.raises(SpaceError, match=r"has no rows for features\.7\.weight, classifier\.0\.weight, classifier\.2\.weight"):
        load_space(folder / "sens.yaml")


def test_allocation_overrides_points_and_round_trip():
    overrides = [
        "methods.irregular.allocation.family=lamp",
        "methods.irregular.allocation.perturb.classifier.0.weight=0.05",
        'methods.irregular.allocation.perturb."features.*"={choice: [-0.1, 0.1]}',
    ]  # fmt: skip
    space = load_space({**ALLOCATION_SPACE, "points": [
        {"method": "filter", "allocation": {"family": "erk", "target": 0.4}, "ratios": {"classifier.2.weight": 0.0}, "label": "erk-filter"},
    ]}, overrides)  # fmt: skip
    alloc = space.allocations["irregular"]
    assert alloc.family == "lamp" and alloc.perturb == {"features.*": Dist("choice", (-0.1, 0.1)), "classifier.0.weight": 0.05}
    point = space.points[0]
    assert point.targets == {"classifier.2.weight": 0.0} and point.allocation.family == "erk"
    _, points = to_tune(space)
    spec = {"family": "erk", "target": 0.4, "perturb": {}, "mode": "add"}
    assert trial_allocation(space, points[0]) == spec
    run = trial_run_config(space, points[0], RunConfig())
    assert (run.method, run.targets, run.allocation) == ("filter", {"classifier.2.weight": 0.0}, spec)
    targets = trial_targets(space, points[0])
    assert targets["classifier.2.weight"] == 0.0 and removed(targets) == pruners.selection.count_for_ratio(0.4, 40208)
    assert dataclasses.replace(load_space(yaml.safe_load(yaml.safe_dump(to_mapping(space)))), source=None) == space


def test_allocation_grid_and_point_rules():
    grid = {"search": "grid", "trials": 1, "methods": {"irregular": {"allocation": {"family": {"choice": ["erk", "uniform"]}, "target": {"uniform": [0.5, 0.9]}}}}}
    with pytest.raises(SpaceError, match=r"found uniform at methods\.irregular\.allocation\.target"):
        load_space(grid)
    grid["methods"]["irregular"]["allocation"]["target"] = {"choice": [0.5, 0.9]}
    param_space, _ = to_tune(load_space(grid))
    assert param_space["irregular"]["allocation"] == {"family": {"grid_search": ["erk", "uniform"]}, "target": {"grid_search": [0.5, 0.9]}}
    with pytest.raises(SpaceError, match="not a 'config_file'"):
        load_space({"trials": 0, "points": [{"method": "irregular", "allocation": {"family": "erk", "target": 0.5}, "config_file": str(REFERENCE / "vgg16_cifar10_irre.yaml")}]})


def test_searched_trials_with_nothing_to_search_is_a_space_error():
    fixed = {"trials": 2, "search": "random", "methods": {"irregular": {"*": 0.5}}, "schedules": {"oneshot": {}}}
    with pytest.raises(SpaceError, match="nothing to search"):
        load_space(fixed)
    load_space({**fixed, "trials": 0, "points": [{"method": "irregular", "ratios": {"*": 0.5}}]})  # points only: fine
    load_space({**fixed, "methods": {"irregular": {"*": 0.5}, "filter": {"*": 0.3}}})  # the method is searched


def test_every_space_key_has_its_parser():
    from raysweep.space.parse import HPARAM_CHECKS, SCALAR_CHECKS, SECTIONS
    from raysweep.space.schema import HPARAM_TYPES

    assert set(SPACE_KEYS) == {*SCALAR_CHECKS, *HPARAM_CHECKS, *SECTIONS}
    assert set(HPARAM_CHECKS) == set(HPARAM_TYPES)


@pytest.mark.parametrize("resources,executor,tune_cpu,slots", [
    ({}, "inprocess", 1.0, 2),  # one worker: the trial function is the worker
    ({"workers_per_trial": 2, "cpus_per_worker": 1.0}, "pool", 0, 1),  # exactly fills 2 CPUs
    ({"workers_per_trial": 2, "cpus_per_worker": 0.5, "executor": "trainer"}, "trainer", 0, 2),
    ({"cpus_per_worker": 0.5, "executor": "pool"}, "pool", 0, 4),
])  # fmt: skip
def test_the_executor_is_decided_once_and_says_what_tune_reserves(resources, executor, tune_cpu, slots):
    """What Ray Tune receives per trial, and how many trials fit a 2-CPU cluster."""
    from raysweep.sweep.driver import EXECUTORS  # noqa: F401 -- registers the pool executor
    from raysweep.sweep.executors import get_executor, max_concurrent_trials

    chosen = get_executor(load_space({"trials": 0, "points": [{"method": "irregular", "ratios": {"*": 0.5}}], "resources": resources}))
    assert chosen.name == executor and chosen.trial_resources()["CPU"] == tune_cpu
    assert max_concurrent_trials(chosen, {"CPU": 2.0}) == slots
    assert chosen.callbacks() == []  # the pool's callback exists only once a pool has started
