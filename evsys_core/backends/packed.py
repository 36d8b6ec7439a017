"""Decode-time linear layers on oneDNN with weights packed ahead of time (CPU only).

A decode step multiplies a few rows (one per sequence) by every weight matrix of the model.
MKL's sgemm runs these skinny products well below memory speed on the CPUs we measured;
oneDNN with each weight reordered once for the batch ran a whole model's linears ~2x faster
at 8 rows (bench/notes/sdft.md). So, for the decode loop only:

    with packed_linears(model, rows=8):
        ...  # every forward of `model` in here uses the packed weights

reorders every linear weight of the model once — a LoRA layer's with its active adapter merged
in, so decoding also skips the adapter's two small products per layer — and routes those
modules' `forward` through oneDNN until the block exits. The model's own tensors are never
written (no merge/unmerge drift); the cost is one transient copy of the weights, freed on exit.
Outside a CPU float32 model with oneDNN available it does nothing.

`EVSYS_DECODE_DTYPE=bf16` (off by default) packs the weights in bfloat16 instead, on a CPU
with native bf16 matmuls (avx512_bf16 / AMX): a decode step reads half the bytes. Each
linear's input is rounded to bf16 and its output returned in float32; everything else (norms,
attention, softmax) stays float32. The price: sampled logprobs no longer equal `forward`'s
float32 ones to 1e-4 (bench/RESULTS.md, AB, gives the measured gap), which matters to
importance-sampling and PPO ratios.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch


def available(model: Any) -> bool:
    p = next(model.parameters())
    return p.device.type == "cpu" and p.dtype == torch.float32 and torch.backends.mkldnn.is_available()


def decode_dtype() -> torch.dtype:
    """The packed weights' dtype: float32, or bfloat16 when EVSYS_DECODE_DTYPE=bf16 and the
    CPU multiplies bf16 natively."""
    want = os.environ.get("EVSYS_DECODE_DTYPE", "fp32").lower()
    if want not in ("fp32", "float32", "bf16", "bfloat16"):
        from evsys_core.errors import BackendError

        raise BackendError(f"EVSYS_DECODE_DTYPE is {want!r}; expected fp32 or bf16 (or leave it unset)")
    if want.startswith("bf") and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _effective_weight(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) that `module` applies right now, or None if it is not a plain linear map."""
    base = getattr(module, "base_layer", None)
    if isinstance(base, torch.nn.Linear) and hasattr(module, "lora_A"):  # a PEFT LoRA linear
        w = base.weight
        if module.disable_adapters or module.merged:
            return w, base.bias
        for name in module.active_adapters:
            if name not in module.lora_A:
                continue
            if name in module.lora_variant or module.fan_in_fan_out:
                return None  # not vanilla LoRA (DoRA, ...): leave it to PEFT's own forward
            # W + scaling * B @ A, as PEFT's merge computes it, into a new tensor
            w = torch.addmm(w, module.lora_B[name].weight, module.lora_A[name].weight,
                            alpha=module.scaling[name])
        return w, base.bias
    if type(module) is torch.nn.Linear:
        return module.weight, module.bias
    return None


def _targets(model: torch.nn.Module) -> Iterator[tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None]]:
    """The outermost linear maps of `model` (a LoRA wrapper, not the base layer inside it)."""
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        found = _effective_weight(module)
        if found is not None:
            inside.update(id(m) for m in module.modules())
            yield module, *found


@contextlib.contextmanager
def packed_linears(model: torch.nn.Module, rows: int) -> Iterator[None]:
    """Run `model`'s linear layers on packed oneDNN weights inside the block (see module doc)."""
    if not available(model):
        yield
        return
    patched = []
    try:
        dtype = decode_dtype()
        with torch.no_grad():
            for module, weight, bias in _targets(model):
                packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype), rows)
                module.forward = _packed_forward(packed, None if bias is None else bias.detach().to(dtype))
                patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward  # the class's forward again


def _packed_forward(packed: torch.Tensor, bias: torch.Tensor | None):
    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(packed.dtype)
        out = torch.ops.mkldnn._linear_pointwise(flat, packed, bias, "none", [], "")
        return out.to(x.dtype).reshape(*x.shape[:-1], out.shape[-1])
    return forward
