"""The dense model's figures, measured as a trial's are (val top-1/top-5 over the whole val
set, parameters and MACs by pruners' accounting): every report's baseline."""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

BASELINE_FIGURES = ("accuracy", "top5", "params_total", "macs_dense")


def measure_dense(cfg_dict: dict[str, Any]) -> dict[str, float]:
    """``accuracy``, ``top5``, ``params_total``, ``macs_dense`` of ``cfg.weight_file`` loaded
    into ``cfg.model`` (a Ray task near the data, or this process)."""
    import pruners
    from raysweep.config import RunConfig
    from raysweep.data import build_datasets
    from raysweep.models import create_model
    from raysweep.trial.checkpoint import load_weights
    from raysweep.trial.epoch import count_correct

    cfg = RunConfig.from_dict(cfg_dict)
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    _, val, info = build_datasets(cfg.dataset, cfg.data_root, augment=False, options=cfg.dataset_options)
    model = create_model(cfg.model, num_classes=info.num_classes, input_size=tuple(info.input_size), dataset=cfg.dataset)
    load_weights(model, cfg.weight_file)
    correct1, correct5, _, count = count_correct(model, DataLoader(val, batch_size=256), torch.device("cpu"))
    figures = pruners.sparsity_report(model, torch.zeros((1, *info.input_size)))
    return {"accuracy": correct1 / count, "top5": correct5 / count,
            "params_total": float(figures["params_total"]), "macs_dense": float(figures.get("macs_dense", float("nan")))}  # fmt: skip
