"""Export a pruned checkpoint as a standalone model file, physically compacted where exact.

    python -m raysweep.export runs/digits-digits_cnn-filter/final.pt --out digits.pt2 [--latency]

The checkpoint (``final.pt``/``best.pt`` of a run, a run directory, or a plain state dict with
``--model``) is restored into a fresh registry model with its masks, compacted by
``pruners.compact`` (dead channels removed, their constants folded; checked against the masked
model) and saved with ``torch.export`` (``torch.export.load(path).module()`` runs it with plain
torch, batch size free); a model ``torch.export`` cannot capture falls back to TorchScript
(``torch.jit.load(path)``), and the summary says which. Zeros that do not empty a whole channel
(irregular, pattern, N:M) stay in place: dense kernels gain no speed from them. For ``m4n2``
(2:4) masks on a CUDA GPU of compute capability >= 8.0, Linear layers are also timed with
``torch.sparse.to_sparse_semi_structured``; elsewhere that check is skipped with one message.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

import pruners
from pruners.compact import compact, squashed_copy, zero_weights

__all__ = [
    "ExportInputError",
    "export_checkpoint",
    "export_program",
    "is_2to4",
    "load_checkpoint",
    "load_exported",
    "main",
    "save_model",
    "semi_structured_check",
]

log = logging.getLogger("raysweep.export")

MAX_BATCH = 1 << 16  # the exported program accepts batches 1..MAX_BATCH


class ExportInputError(ValueError):
    """A checkpoint that cannot be exported; the CLI prints it and exits 2."""


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _head_classes(model: nn.Module, state: dict[str, Any]) -> int | None:
    """Output size of the model's last Linear as stored in ``state`` (the checkpoint's classes)."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return None
    for key in (f"{linears[-1]}.weight", f"{linears[-1]}.parametrizations.weight.original"):
        if isinstance(state.get(key), torch.Tensor):
            return int(state[key].shape[0])
    return None


def load_checkpoint(path: str | Path, model: str | None = None, dataset: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The masked model of a raysweep checkpoint, and ``{"model", "dataset", "input_size", "path"}``.

    ``path`` is a checkpoint file or a run directory (its ``final.pt``). The model name and
    dataset come from ``model``/``dataset`` if given, else the checkpoint's config, else the
    ``config.json`` beside it. Every problem is an ``ExportInputError``.
    """
    from raysweep.models import create_model, model_info

    path = Path(path)
    if path.is_dir():
        path = path / "final.pt"
    if not path.is_file():
        raise ExportInputError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- truncated, not a torch file, pickled code: all one message
        raise ExportInputError(f"cannot read checkpoint {path} (corrupt or not a torch weights file): {_first_line(exc)}") from None
    state = payload.get("model") if isinstance(payload, dict) and isinstance(payload.get("model"), dict) else payload
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportInputError(f"{path} holds no model state dict (expected a raysweep checkpoint or a state dict)")
    config = payload.get("config") if isinstance(payload, dict) and isinstance(payload.get("config"), dict) else None
    if config is None and (path.parent / "config.json").is_file():
        config = json.loads((path.parent / "config.json").read_text())
    config = config or {}
    name, dataset = model or config.get("model"), dataset or config.get("dataset")
    if not name:
        raise ExportInputError(f"cannot tell which model {path} holds: no config in it or beside it; pass --model (and --dataset)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        net = create_model(name, dataset=dataset)
        classes = _head_classes(net, state)
        if classes is not None and classes != _head_classes(net, net.state_dict()):
            net = create_model(name, num_classes=classes, dataset=dataset)
        input_size = tuple(model_info(name, dataset=dataset).input_size)
    except (ValueError, FileNotFoundError) as exc:
        raise ExportInputError(_first_line(exc)) from None
    try:
        pruners.load_masked_state_dict(net, state)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ExportInputError(f"checkpoint {path} does not fit model {name!r}: {_first_line(exc)}") from None
    return net.eval(), {"model": name, "dataset": dataset, "input_size": input_size, "path": str(path)}


def export_program(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` (eval) with a free batch dimension (1..MAX_BATCH)."""
    example = example[:1].expand(2, *example.shape[1:]).contiguous() if example.shape[0] < 2 else example
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))


def save_model(model: nn.Module, example: torch.Tensor, out: str | Path) -> str:
    """Save ``model`` to ``out`` with ``torch.export``, else TorchScript; returns the format used.

    The fallback scripts the model (control flow kept); only if scripting fails too does it
    trace, which freezes data-dependent branches to the example's path (logged).
    """
    try:
        torch.export.save(export_program(model, example), str(out))
        return "torch.export"
    except Exception as exc:  # noqa: BLE001 -- any capture failure falls back to TorchScript
        log.warning("torch.export failed (%s); saving TorchScript instead", _first_line(exc))
    try:
        scripted = torch.jit.script(model.eval())
    except Exception as exc:  # noqa: BLE001 -- unscriptable Python: trace instead
        log.warning("torch.jit.script failed (%s); tracing: data-dependent branches follow the example", _first_line(exc))
        with torch.no_grad():
            scripted = torch.jit.trace(model.eval(), example)
    torch.jit.save(scripted, str(out))
    return "torchscript"


def load_exported(path: str | Path) -> nn.Module:
    """The runnable module of an exported file, whichever format ``save_model`` chose."""
    try:
        return torch.export.load(str(path)).module()
    except Exception:  # noqa: BLE001 -- not a torch.export archive: the TorchScript fallback
        return torch.jit.load(str(path))


def is_2to4(weight: torch.Tensor) -> bool:
    """At most 2 non-zeros in every 4 consecutive weights along the input dim (NVIDIA's 2:4)."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.detach() != 0).reshape(weight.shape[0], -1, 4).sum(-1) <= 2).all())


def _semi_structured_unavailable() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU here (torch.sparse.to_sparse_semi_structured needs compute capability >= 8.0)"
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 0):
        return f"{torch.cuda.get_device_name()} has compute capability {major}.{minor}; 2:4 kernels need >= 8.0"
    return None


def _cuda_ms(model: nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> float:
    times = []
    for i in range(warmup + repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(x)
        end.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    return statistics.median(times)


@torch.no_grad()
def semi_structured_check(
    model: nn.Module, input_shape: tuple[int, ...], batch_size: int = 4096, warmup: int = 10, repeats: int = 50
) -> dict[str, Any]:
    """Time the model in fp16 on CUDA with its 2:4 Linear weights as semi-structured sparse tensors.

    Returns ``{"status": "ok", "layers", "dense_ms", "sparse_ms", "speedup", "max_abs_diff"}``,
    or ``{"status": "skipped", "reason"}`` (no suitable GPU, no 2:4 Linear layer). Conv layers
    keep dense kernels: torch's semi-structured kernels are matmuls.
    """
    from torch.sparse import to_sparse_semi_structured

    reason = _semi_structured_unavailable()
    candidates = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and is_2to4(m.weight)]
    if reason is None and not candidates:
        reason = "no Linear layer has a 2:4 weight"
    if reason is not None:
        return {"status": "skipped", "reason": reason}
    dense = squashed_copy(model).cuda().half().eval()
    sparse = copy.deepcopy(dense)
    layers, refused = [], {}
    for name in candidates:
        layer = sparse.get_submodule(name)
        try:
            layer.weight = nn.Parameter(to_sparse_semi_structured(layer.weight.detach().contiguous()), requires_grad=False)
            layers.append(name)
        except RuntimeError as exc:  # shape not a multiple of the kernel's tile
            refused[name] = _first_line(exc)
    if not layers:
        return {"status": "skipped", "reason": f"no 2:4 Linear layer of a supported shape: {refused}"}
    x = torch.randn((batch_size, *input_shape), device="cuda", dtype=torch.half)
    dense_ms, sparse_ms = _cuda_ms(dense, x, warmup, repeats), _cuda_ms(sparse, x, warmup, repeats)
    diff = float((dense(x).float() - sparse(x).float()).abs().max())
    return {
        "status": "ok", "layers": layers, "refused": refused, "batch_size": batch_size, "dense_ms": dense_ms,
        "sparse_ms": sparse_ms, "speedup": dense_ms / sparse_ms, "max_abs_diff": diff,
        "device": torch.cuda.get_device_name(),
    }  # fmt: skip


def _nm_targets(model: nn.Module) -> set[str]:
    return {str(wm.target) for wm in pruners.masked_parameters(model).values() if wm.method == "nm"}


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    model: str | None = None,
    dataset: str | None = None,
    do_compact: bool = True,
    fold_borders: bool = False,
    latency: bool = False,
    threads: int = 1,
) -> dict[str, Any]:
    """Load, compact, export, reload and check; returns the summary the CLI prints."""
    net, info = load_checkpoint(checkpoint, model, dataset)
    example = torch.randn((2, *info["input_size"]), generator=torch.Generator().manual_seed(0))
    nm = _nm_targets(net)
    masked = net
    report = None
    if do_compact:
        try:
            small, report = compact(net, example, fold_borders=fold_borders)
        except ValueError as exc:  # an untraceable model is still exported, zeros in place
            log.warning("%s; exporting without compaction", exc)
    if report is None:
        small = squashed_copy(net)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = save_model(small, example, out)
    loaded = load_exported(out)
    with torch.no_grad():
        diff = float((loaded(example) - masked(example)).abs().max())
    total = sum(m.weight.numel() for m in small.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)))
    summary: dict[str, Any] = {
        **info, "out": str(out), "format": fmt, "max_abs_diff": diff,
        "params_masked_remaining": pruners.sparsity_report(masked)["params_remaining"],
        "params_before": sum(p.numel() for p in masked.parameters()),
        "params_after": sum(p.numel() for p in small.parameters()),
        "channels_removed": report.channels_removed if report else 0,
        "channels_dead": report.channels_dead if report else 0,
        "kept_dead": report.kept_dead if report else {},
        "bias_maps": report.bias_maps if report else [],
        "zeros_in_place": zero_weights(small), "weights_in_place": total,
    }  # fmt: skip
    if nm:
        summary["semi_structured"] = semi_structured_check(masked, info["input_size"]) if "m4n2" in nm else {
            "status": "skipped", "reason": f"N:M {sorted(nm)} is not 2:4 (m4n2), the only sparse GPU kernel"}
    if latency:
        from raysweep.latency import measure_pair

        dense = squashed_copy(masked)
        figures = measure_pair({"dense": dense, "exported": loaded}, info["input_size"], threads=threads)
        summary["latency"] = figures
        summary["speedup"] = figures["dense"]["latency_ms_b64"] / figures["exported"]["latency_ms_b64"]
    return summary


def _print_summary(s: dict[str, Any]) -> None:
    print(f"exported {s['model']} ({s['path']}) -> {s['out']} [{s['format']}]")
    load = "torch.export.load(path).module()" if s["format"] == "torch.export" else "torch.jit.load(path)"
    print(f"  load with plain torch: {load}")
    print(f"  parameters: {s['params_before']} -> {s['params_after']} "
          f"(masked model's non-zero parameters: {s['params_masked_remaining']})")
    print(f"  channels removed: {s['channels_removed']} of {s['channels_dead']} dead")
    for reason, n in sorted(s["kept_dead"].items()):
        print(f"    kept {n} dead channel(s): {reason}")
    if s["bias_maps"]:
        print(f"  {len(s['bias_maps'])} conv(s) carry a per-position bias map (--fold-borders): "
              f"the file runs at input size {tuple(s['input_size'])} only")
    print(f"  max |exported - masked| on a random batch: {s['max_abs_diff']:.3g}")
    if s["zeros_in_place"]:
        share = s["zeros_in_place"] / max(1, s["weights_in_place"])
        print(f"  {s['zeros_in_place']} zero weights ({share:.1%} of conv/linear weights) stay in place inside "
              "dense kernels: no speed gain from them")
    ss = s.get("semi_structured")
    if ss and ss["status"] == "skipped":
        print(f"  2:4 sparse kernels skipped: {ss['reason']}")
    elif ss:
        print(f"  2:4 sparse Linear ({', '.join(ss['layers'])}) on {ss['device']}, fp16 batch {ss['batch_size']}: "
              f"{ss['dense_ms']:.3f} ms dense -> {ss['sparse_ms']:.3f} ms sparse, speedup {ss['speedup']:.2f}x")
    if "latency" in s:
        d, e = s["latency"]["dense"], s["latency"]["exported"]
        print(f"  CPU latency ms (b1 / b64): dense {d['latency_ms_b1']:.3f} / {d['latency_ms_b64']:.3f}, "
              f"exported {e['latency_ms_b1']:.3f} / {e['latency_ms_b64']:.3f}, speedup b64 {s['speedup']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raysweep.export", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="final.pt / best.pt of a run, a run directory, or a state dict (with --model)")
    parser.add_argument("--out", required=True, help="output file (.pt2)")
    parser.add_argument("--model", help="registry model name (default: from the checkpoint's config)")
    parser.add_argument("--dataset", help="dataset name, picks the model family (default: from the config)")
    parser.add_argument("--no-compact", dest="do_compact", action="store_false", help="keep every channel (zeros in place)")
    parser.add_argument("--fold-borders", action="store_true",
                        help="also remove dead channels whose constant a padded conv sees differently at the borders "
                             "(per-position bias maps; the file then runs at the model's input size only)")
    parser.add_argument("--latency", action="store_true", help="time dense vs exported on CPU (batch 1 and 64)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for --latency (default 1)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if Path(args.out).is_dir():
        print(f"error: --out {args.out} is a directory; give a file name", file=sys.stderr)
        return 2
    try:
        summary = export_checkpoint(args.checkpoint, args.out, model=args.model, dataset=args.dataset,
                                    do_compact=args.do_compact, fold_borders=args.fold_borders,
                                    latency=args.latency, threads=args.threads)
    except ExportInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
