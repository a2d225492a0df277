"""Flags shared by ``raysweep.train`` and ``raysweep.prune`` (the reference project's, plus Ray's),
and the run they start."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from raysweep.config import RunConfig
from raysweep.trial.optim import LR_SCHEDULES
from raysweep.trial.precision import PRECISIONS


def str2bool(value: str) -> bool:
    """``--pretrained True`` as the reference project spells it, and plain ``--pretrained``."""
    if value.lower() in ("1", "true", "yes", "y"):
        return True
    if value.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


def milestones(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lr_decay_milestones takes comma-separated epochs like 40,70,90, got {value!r}") from None


def base_parser(prog: str, description: str, defaults: RunConfig) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    add = p.add_argument
    add("--data_root", default=defaults.data_root, help="folder holding the dataset in torchvision's layout (never downloaded)")
    add("--dataset_option", dest="dataset_options", action="append", type=key_value, default=None, metavar="KEY=VALUE",
        help="an option of the dataset, e.g. image_size=28 channels=1 for imagefolder, num_classes=5 for your own (repeatable)")
    add("--model", default=defaults.model, help="model name (see raysweep.models.list_models())")
    add("--dataset", default=defaults.dataset, help="digits (embedded), cifar10, cifar100, mnist, imagenet, imagefolder")
    add("--batch_size", type=int, default=defaults.batch_size, help="global batch size, split across workers")
    add("--epochs", type=int, default=defaults.epochs)
    add("--lr", type=float, default=defaults.lr)
    add("--wd", type=float, default=defaults.wd, help="weight decay")
    add("--lr_decay_milestones", type=milestones, default=defaults.lr_decay_milestones, help="e.g. 40,70,90 (gamma 0.1)")
    add("--lr_schedule", choices=sorted(LR_SCHEDULES), default=defaults.lr_schedule,
        help="multistep (gamma 0.1 at --lr_decay_milestones) or cosine (per batch to 0, after --warmup_epochs)")
    add("--warmup_epochs", type=float, default=defaults.warmup_epochs, help="cosine: linear warm-up epochs (fractions allowed)")
    add("--label_smoothing", type=float, default=defaults.label_smoothing, help="cross-entropy label smoothing in [0, 1)")
    add("--distill_alpha", type=float, default=defaults.distill_alpha,
        help="weight in [0, 1] of distillation from the --weight_file model (Hinton et al. 2015); 0: off")
    add("--distill_temperature", type=float, default=defaults.distill_temperature, help="softmax temperature of distillation")
    add("--precision", choices=list(PRECISIONS), default=defaults.precision, help="fp32, bf16 (autocast) or fp16 (autocast + GradScaler, CUDA only)")
    add("--channels_last", type=str2bool, nargs="?", const=True, default=defaults.channels_last, help="NHWC memory format (true/false)")
    add("--compile", type=str2bool, nargs="?", const=True, default=defaults.compile, help="torch.compile the model (true/false)")
    add("--print_freq", type=int, default=defaults.print_freq, help="log every N batches")
    add("--log_tag", default=defaults.log_tag, help="suffix of the run name")
    add("--seed", type=int, default=defaults.seed)
    add("--pretrained", type=str2bool, nargs="?", const=True, default=False, help="ImageNet models: torchvision weights from the local hub cache")
    add("--weight_file", default=None, help="starting weights (.pth state dict or a raysweep checkpoint)")
    add("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint (its saved config is used)")
    add("--workers", type=int, default=1, help="Ray Train workers = DDP processes")
    add("--cpus_per_worker", type=float, default=1.0)
    add("--use_gpu", action="store_true", help="train on CUDA GPUs, NCCL")
    add("--gpus_per_worker", type=float, default=defaults.gpus_per_worker, help="with --use_gpu: GPU share per worker (0.5: two workers per GPU)")
    add("--sync_bn", action="store_true", help="SyncBatchNorm across workers (GPU only)")
    add("--max_failures", type=int, default=defaults.max_failures, help="worker-group restarts from the last checkpoint")
    add("--output", default=defaults.output, help="parent folder of run directories")
    add("--name", default=None, help="run directory name (default: dataset-model-method[-tag])")
    add("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    add("-q", "--quiet", action="store_true", help="less logging")
    return p


def key_value(text: str) -> tuple[str, Any]:
    """``image_size=28`` -> ("image_size", 28); values are YAML (numbers, lists)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)


def absolute(path: Optional[str]) -> Optional[str]:
    """A path the user gave, against the working directory of the command (Ray's workers run
    elsewhere); None stays None."""
    return str(Path(path).expanduser().resolve()) if path else path


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        model=args.model, dataset=args.dataset, data_root=absolute(args.data_root), pretrained=args.pretrained,
        dataset_options=dict(args.dataset_options or []),
        weight_file=absolute(args.weight_file), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        wd=args.wd, lr_decay_milestones=list(args.lr_decay_milestones), seed=args.seed,
        workers=args.workers, use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker,
        sync_bn=args.sync_bn, max_failures=args.max_failures, print_freq=args.print_freq,
        log_tag=args.log_tag, output=absolute(args.output), name=args.name,
        lr_schedule=args.lr_schedule, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        distill_alpha=args.distill_alpha, distill_temperature=args.distill_temperature, precision=args.precision,
        channels_last=args.channels_last, compile=args.compile, gpus_per_worker=args.gpus_per_worker,
    )


def run_cli(args: argparse.Namespace, build: Callable[[argparse.Namespace], RunConfig], prog: str) -> int:
    """Check inputs before Ray, run, print where the results are. Exit 0 / 1 (run failed) / 2 (bad input)."""
    from raysweep.errors import RunInputError, check_name
    from raysweep.trial.runner import check_inputs, execute

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    resume = args.resume is not None
    try:
        if resume:
            cfg = resumed_config(args.resume)
            if args.epochs_given:  # continue for more epochs than first planned
                cfg.epochs = args.epochs
        else:
            cfg = build(args)
            if cfg.name is not None:
                check_name(cfg.name)
        check_inputs(cfg)
        result = execute(cfg, resume=resume, address=args.address)
    except (RunInputError, ValueError, FileNotFoundError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a failed run: Ray's TrainingFailedError and friends
        print(f"{prog}: run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    m = result.metrics
    print(f"accuracy {m.get('accuracy', float('nan')):.4f}  best {m.get('best_accuracy', float('nan')):.4f}  "
          f"sparsity {m.get('sparsity', 0.0):.4f}  epochs {m.get('epoch', -1) + 1}")
    print(f"run directory: {result.run_dir}")
    return 0


def resumed_config(run_dir: str) -> RunConfig:
    """The config a run was started with; its newest checkpoint must load before Ray starts."""
    from raysweep.trial.checkpoint import CheckpointFolder, read_checkpoint

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"--resume {run_dir}: no config.json there; pass a run directory made by raysweep")
    newest = CheckpointFolder(run_dir).newest_path()
    if newest is not None:
        read_checkpoint(newest)  # a CheckpointError (exit 2) names the file and torch's reason
    return RunConfig.load(path)


def main_with(parser: argparse.ArgumentParser, build, prog: str, argv: Optional[list[str]]) -> int:
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    args.epochs_given = any(a == "--epochs" or a.startswith("--epochs=") for a in given)
    return run_cli(args, build, prog)
