"""A user's own data: import paths and callables, image folders of any size, and a trial run again
from its row -- each problem told before Ray starts."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from raysweep import prune
from raysweep.config import RunConfig
from raysweep.data import DatasetSourceError, build_datasets
from raysweep.errors import RunInputError
from raysweep.trial.checkpoint import Checkpoint, CheckpointFolder

pytestmark = pytest.mark.usefixtures("no_ray")


def pair_of_floats(root):
    x = torch.randn(12, 3)
    return TensorDataset(x, torch.rand(12)), TensorDataset(x, torch.rand(12))


def only_one(root):
    return TensorDataset(torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long))


def broken(root):
    raise OSError(f"no files under {root}")


def five_classes(root):
    x = torch.randn(20, 2, 4, 4)
    y = torch.arange(20) % 5
    return TensorDataset(x, y), TensorDataset(x[:10], y[:10])


def test_a_dataset_by_import_path_infers_classes_and_input_size():
    train, val, info = build_datasets("tests.user_code:digits_pair")
    assert (info.num_classes, info.input_size, info.family) == (10, (1, 8, 8), "custom") and len(train) == 1437
    _, _, info = build_datasets("test_user_data:five_classes", "/data/x")
    assert (info.num_classes, info.input_size) == (5, (2, 4, 4))
    _, _, info = build_datasets(five_classes, options={"num_classes": 7, "input_size": [2, 4, 4]})  # a callable, options win
    assert (info.num_classes, info.input_size) == (7, (2, 4, 4))


@pytest.mark.parametrize("source,message", [
    ("test_user_dat:five_classes", "cannot import 'test_user_dat'"),
    ("test_user_data:five_clases", "has no attribute 'five_clases'; did you mean five_classes"),
    ("test_user_data:broken", "its factory raised OSError: no files under /d"),
    ("test_user_data:only_one", r"must return \(train, val\), two torch Datasets; it returned a TensorDataset"),
    ("test_user_data:pair_of_floats", r"a train sample must be \(tensor, int\); the first is \(Tensor, Tensor\)"),
])  # fmt: skip
def test_a_dataset_that_cannot_be_used_says_why(source, message):
    with pytest.raises(DatasetSourceError, match=message):
        build_datasets(source, "/d")


def test_bad_data_stops_a_prune_run_before_ray(capsys, tmp_path):
    assert prune.main(["--dataset", "test_user_data:broken", "--prune_type", "irregular", "--ratio", "0.5", "--output", str(tmp_path)]) == 2
    assert "its factory raised OSError" in capsys.readouterr().err


def _png_folder(root, size: int, per_class: int = 4) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for label in ("a", "b", "c"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = (torch.rand(size, size, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")


def test_a_folder_of_small_grayscale_pngs_with_its_own_statistics(tmp_path, monkeypatch):
    import raysweep.data.folders as folders

    monkeypatch.setattr(folders, "CACHE_DIR", tmp_path / "cache")
    _png_folder(tmp_path / "pngs", 28)
    train, val, info = build_datasets("imagefolder", tmp_path / "pngs", options={"image_size": 28, "channels": 1})
    assert (info.num_classes, info.input_size) == (3, (1, 28, 28)) and train[0][0].shape == (1, 28, 28)
    assert 0.4 < info.mean[0] < 0.6 and 0.2 < info.std[0] < 0.4  # uniform noise: 0.5 and 0.29
    cached = list((tmp_path / "cache" / "imagefolder_stats").glob("*.json"))
    assert len(cached) == 1
    monkeypatch.setattr(folders, "_transforms", lambda *a: pytest.fail("statistics computed again"))
    assert folders.folder_stats(tmp_path / "pngs", 28, 1) == (info.mean, info.std)  # read from the cache
    with pytest.raises(ValueError, match="takes no option 'image_size'"):
        build_datasets("digits", options={"image_size": 28})


def test_a_trial_runs_again_from_its_folder(tmp_path, monkeypatch):
    import raysweep.trial.runner as runner

    trial = RunConfig(method="irregular", targets={"*": 0.7}, lr=0.02, epochs=3, schedule="agp",
                      schedule_params={"start_epoch": 0, "end_epoch": 1, "frequency": 1}, weight_file="/dense/final.pt", name="abc")  # fmt: skip
    CheckpointFolder(tmp_path / "sw" / "trials" / "abc").save(Checkpoint(model={}, config=trial.to_dict(), epoch=2), 2)
    seen = {}

    def capture(cfg, **kwargs):
        seen["cfg"] = cfg
        raise RunInputError("stop here")

    monkeypatch.setattr(runner, "check_inputs", lambda cfg: None)
    monkeypatch.setattr(runner, "execute", capture)
    assert prune.main(["--from-trial", str(tmp_path / "sw" / "abc"), "--output", str(tmp_path / "runs")]) == 2
    cfg = seen["cfg"]
    assert (cfg.method, cfg.targets, cfg.lr, cfg.epochs, cfg.schedule, cfg.weight_file) == ("irregular", {"*": 0.7}, 0.02, 3, "agp", "/dense/final.pt")
    assert cfg.name == "sw-abc" and cfg.output == str(tmp_path / "runs")
