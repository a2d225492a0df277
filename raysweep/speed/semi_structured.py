"""NVIDIA's 2:4 sparse kernels (``torch.sparse.to_sparse_semi_structured``) timed against dense,
where a CUDA GPU of compute capability >= 8.0 has them; elsewhere one line says why not."""
from __future__ import annotations

import copy
import statistics
from typing import Any

import torch
from torch import nn

from pruners.compact import squashed_copy
from raysweep.errors import first_line


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
            refused[name] = first_line(exc)
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
