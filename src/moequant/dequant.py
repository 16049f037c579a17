"""Source formats -> float: one function per format, picked by a table keyed on the config's
`quantization_config.quant_method`. Runs on one group of lazily loaded tensors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx

from .checkpoint import TensorInfo, mlx_quantization
from .errors import CheckpointError, LayoutError
from .plan import Quant

FP8_MAX_BLOCK = (128, 128)  # weight_block_size when the config omits it (DeepSeek-V3, Qwen3-FP8)


def _fp8_to_float(key: str, info: TensorInfo, value: mx.array) -> mx.array:
    if info.dtype != "F8_E4M3":
        raise LayoutError(f"{key}: dtype {info.dtype} beside a weight_scale_inv; expected F8_E4M3")
    return mx.from_fp8(value, dtype=mx.float32)


@dataclass(frozen=True)
class SourceContext:
    """What a format function may need beside the tensors of one group."""

    infos: dict[str, TensorInfo]  # every SRC tensor's header entry
    qconfig: dict  # SRC's quantization_config (or MLX quantization entry)
    stored: dict[str, Quant] = field(default_factory=dict)  # MLX sources: module path -> stored quantization
    as_stored: frozenset[str] = frozenset()  # module paths copied packed, as stored (no double rounding)


def _fp8_blocks(weights: dict[str, mx.array], ctx: SourceContext) -> dict[str, mx.array]:
    """FP8 e4m3 weights times their inverse block scales (partial edge blocks included), or a
    per-tensor / per-channel `weight_scale`."""
    infos = ctx.infos
    b0, b1 = ctx.qconfig.get("weight_block_size") or FP8_MAX_BLOCK
    out = {}
    for key, value in weights.items():
        if key.endswith((".weight_scale_inv", ".weight_scale", ".input_scale")):
            continue  # consumed with their weight below (input scales are for activations: unused)
        base = key[: -len("weight")] if key.endswith(".weight") else None
        if base is not None and f"{base}weight_scale_inv" in weights:
            scale = weights[f"{base}weight_scale_inv"]
            n_out, n_in = value.shape
            want = (math.ceil(n_out / b0), math.ceil(n_in / b1))
            if tuple(scale.shape) != want:
                raise LayoutError(
                    f"{base}weight_scale_inv: shape {tuple(scale.shape)}; expected {want} for weight "
                    f"{(n_out, n_in)} in {b0}×{b1} blocks (weight_block_size)"
                )
            w = _fp8_to_float(key, infos[key], value)
            s = mx.repeat(mx.repeat(scale.astype(mx.float32), b0, axis=0), b1, axis=1)[:n_out, :n_in]
            out[key] = w * s
        elif base is not None and f"{base}weight_scale" in weights:
            scale = weights[f"{base}weight_scale"].astype(mx.float32)
            if scale.size not in (1, value.shape[0]):
                raise LayoutError(f"{base}weight_scale: shape {tuple(scale.shape)}; expected a scalar or "
                                  f"one scale per output row ({value.shape[0]})")
            out[key] = _fp8_to_float(key, infos[key], value) * scale.reshape(-1, 1)
        elif infos.get(key) is not None and infos[key].dtype.startswith("F8"):
            raise LayoutError(f"{key}: {infos[key].dtype} with no weight_scale_inv or weight_scale; expected one")
        else:
            out[key] = value
    return out


def _mlx_dequantize(weights: dict[str, mx.array], ctx: SourceContext) -> dict[str, mx.array]:
    """Each packed module dequantized with its own (mode, bits, group_size), read from its tensors
    and checked against config.json beforehand — except modules copied as stored."""
    out = {}
    for key, value in weights.items():
        path, _, name = key.rpartition(".")
        q = ctx.stored.get(path)
        if q is None or path in ctx.as_stored:
            out[key] = value
        elif name == "weight":
            scales, biases = weights[f"{path}.scales"], weights.get(f"{path}.biases")
            gs = weights.get(f"{path}.global_scale")
            args = dict(group_size=q.group_size, bits=q.bits, mode=q.mode.value, dtype=mx.float32)
            if gs is not None:  # one tensor scale per expert
                out[key] = mx.stack([mx.dequantize(value[e], scales[e], None, global_scale=gs[e], **args)
                                     for e in range(value.shape[0])])
            else:
                out[key] = mx.dequantize(value, scales, biases, **args)
        elif name not in ("scales", "biases", "global_scale"):
            out[key] = value  # a layer's own bias stays as it is
    return out


@dataclass(frozen=True)
class SourceFormat:
    name: str
    to_float: Callable[[dict[str, mx.array], SourceContext], dict[str, mx.array]]


MLX = SourceFormat("mlx", _mlx_dequantize)  # any config with MLX `quantization` (bits, group_size)

# quant_method (config.json quantization_config) -> how to read it; no quantization_config: float
SOURCE_FORMATS: dict[str | None, SourceFormat] = {
    None: SourceFormat("float", lambda weights, ctx: weights),
    "fp8": SourceFormat("fp8", _fp8_blocks),  # DeepSeek-V3, Qwen3-*-FP8: fmt e4m3, weight_block_size
}


def source_format(config: dict) -> tuple[SourceFormat, dict]:
    """The source format of a checkpoint and its quantization settings."""
    if (quantization := mlx_quantization(config)) is not None:
        return MLX, quantization
    qconfig = config.get("quantization_config") or config.get("text_config", {}).get("quantization_config") or {}
    method = qconfig.get("quant_method")
    if method not in SOURCE_FORMATS:
        raise CheckpointError(
            f"config.json: quantization_config.quant_method {method!r}; expected one of "
            f"{', '.join(repr(m) for m in SOURCE_FORMATS if m)} (or none, for float weights)"
        )
    return SOURCE_FORMATS[method], qconfig
