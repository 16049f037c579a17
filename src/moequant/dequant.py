"""Source formats -> float: one function per format, picked by a table keyed on the config's
`quantization_config.quant_method`. Runs on one group of lazily loaded tensors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx

from .checkpoint import TensorInfo, mlx_quantization
from .errors import CheckpointError, LayoutError
from .formats import Quant

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


# ModelOpt NVFP4 aux tensors -> MLX nvfp4 names (None: dropped; input scales are for activations)
MODELOPT_AUX = {".weight_scale": ".scales", ".weight_scale_2": ".global_scale", ".input_scale": None}
NVFP4_GLOBAL = 6.0 * 448.0  # mlx's nvfp4 global_scale g dequantizes as e2m1 · e4m3 · (g / 2688)


def mlx_global_scale(weight_scale_2: mx.array) -> mx.array:
    """mlx's global_scale for ModelOpt's weight_scale_2, chosen so that mlx's g / 2688 in float32
    gives weight_scale_2 back. ModelOpt computes weight_scale_2 = amax / 2688 in float32, so such a g
    (amax itself) exists and the repack is bit-exact; for any other value the nearest is taken
    (within an ulp of the scale)."""
    import numpy as np  # here: only NVFP4 sources need it (a plain conversion's main process imports no numpy)

    ws2 = np.asarray(weight_scale_2, dtype=np.float32).reshape(())
    g = np.float32(ws2 * np.float32(NVFP4_GLOBAL))
    candidates = [g]
    for direction in (np.float32(np.inf), np.float32(-np.inf)):
        c = g
        for _ in range(4):
            c = np.nextafter(c, direction)
            candidates.append(c)
    best = min(candidates, key=lambda c: abs(float(np.float32(c / np.float32(NVFP4_GLOBAL))) - float(ws2)))
    return mx.array(best)


def _modelopt_to_mlx(weights: dict[str, mx.array], ctx: SourceContext) -> dict[str, mx.array]:
    """ModelOpt NVFP4 (two e2m1 per uint8, low nibble first; e4m3 block scales of 16; a float32
    tensor scale) repacked into MLX nvfp4 — the same element and block-scale bytes, so no value
    changes. Modules ModelOpt excluded (no weight_scale_2) pass through as float."""
    out = {}
    for key, value in weights.items():
        suffix = next((s for s in MODELOPT_AUX if key.endswith(s)), None)
        if suffix is not None:
            if MODELOPT_AUX[suffix] == ".scales" and key[: -len(suffix)] + ".weight_scale_2" not in weights:
                raise LayoutError(f"{key}: block scales without a weight_scale_2 beside them; expected both (NVFP4)")
            if MODELOPT_AUX[suffix] and suffix != ".weight_scale":
                out[key[: -len(suffix)] + MODELOPT_AUX[suffix]] = mlx_global_scale(value)
            continue
        base = key[: -len(".weight")] if key.endswith(".weight") else None
        if base is None or f"{base}.weight_scale_2" not in weights:
            out[key] = value
            continue
        scales = weights.get(f"{base}.weight_scale")
        n_out, half = value.shape[-2:]
        if ctx.infos[key].dtype != "U8" or scales is None or tuple(scales.shape) != (*value.shape[:-1], half * 2 // 16):
            got = f"scales {tuple(scales.shape)}" if scales is not None else "no weight_scale"
            raise LayoutError(f"{key}: {ctx.infos[key].dtype} {tuple(value.shape)} with {got}; expected uint8 "
                              f"[out, in/2] and F8_E4M3 weight_scale [out, in/16] (NVFP4, group 16)")
        out[key] = value.view(mx.uint32)
        out[f"{base}.scales"] = scales
    return out


def _mxfp4_blocks_to_mlx(weights: dict[str, mx.array], ctx: SourceContext) -> dict[str, mx.array]:
    """OpenAI gpt-oss MXFP4: `P_blocks` uint8 [..., out, in/32, 16] (32 e2m1 values in 16 bytes)
    and `P_scales` uint8 [..., out, in/32] (e8m0) are MLX's mxfp4 packing byte for byte: renamed to
    `P.weight` (viewed as uint32 [..., out, in/8]) and `P.scales`, so no value changes."""
    out = {}
    for key, value in weights.items():
        if key.endswith("_blocks"):
            base = key[: -len("_blocks")]
            scales = weights.get(f"{base}_scales")
            if ctx.infos[key].dtype != "U8" or scales is None or value.ndim < 3 or value.shape[-1] != 16 \
                    or tuple(scales.shape) != tuple(value.shape[:-1]):
                got = f"scales {tuple(scales.shape)}" if scales is not None else f"no {base}_scales"
                raise LayoutError(f"{key}: {ctx.infos[key].dtype} {tuple(value.shape)} with {got}; expected uint8 "
                                  "[..., out, in/32, 16] and uint8 _scales [..., out, in/32] (MXFP4)")
            out[f"{base}.weight"] = value.view(mx.uint32).flatten(-2)
        elif key.endswith("_scales") and f"{key[: -len('_scales')]}_blocks" in weights:
            out[f"{key[: -len('_scales')]}.scales"] = value
        else:
            out[key] = value
    return out


def _pack_quantized_to_mlx(weights: dict[str, mx.array], ctx: SourceContext) -> dict[str, mx.array]:
    """compressed-tensors pack-quantized (symmetric int, group scales; moonshotai/Kimi-K2.5's experts):
    `P.weight_packed` int32 [out, in·bits/32] holds unsigned q = value + 2^(bits-1), value j of a row at bits
    bits·(j mod 32/bits) of word j·bits/32 (compressed_tensors pack_to_int32): MLX affine's packing bit for bit.
    With `P.weight_scale` s [out, in/group], value·s = q·s - 2^(bits-1)·s, so it is renamed to `P.weight`
    (viewed as uint32), `P.scales` = s and `P.biases` = -2^(bits-1)·s (exact: a power of two times s), and
    no value changes; both in float32 (mx.dequantize computes in the scales' dtype: bfloat16 scales would round
    q·s + biases). Modules the release left out of its config_groups (no weight_packed) pass through."""
    import numpy as np  # here: only these sources need it

    out = {}
    for key, value in weights.items():
        base, _, name = key.rpartition(".")
        if name in ("weight_zero_point", "weight_g_idx"):
            raise LayoutError(f"{key}: an asymmetric or reordered (act-order) compressed-tensors weight; expected "
                              "symmetric weights without g_idx (pack-quantized as Kimi-K2.5)")
        if name in ("weight_scale", "weight_shape") and f"{base}.weight_packed" in weights:
            continue  # consumed with weight_packed below
        if name != "weight_packed":
            out[key] = value
            continue
        scale, shape = weights.get(f"{base}.weight_scale"), weights.get(f"{base}.weight_shape")
        n_out, n_in = (int(n) for n in np.asarray(shape).tolist()) if shape is not None else (-1, -1)
        bits = 32 * value.shape[-1] // n_in if n_in > 0 else 0
        if ctx.infos[key].dtype != "I32" or scale is None or bits not in (4, 8) or value.shape[-2] != n_out \
                or 32 * value.shape[-1] != bits * n_in or scale.shape[-2] != n_out or n_in % scale.shape[-1] \
                or n_in // scale.shape[-1] not in (32, 64, 128):
            got = f"weight_scale {tuple(scale.shape)}" if scale is not None else "no weight_scale"
            raise LayoutError(f"{key}: {ctx.infos[key].dtype} {tuple(value.shape)} with {got} and weight_shape "
                              f"{(n_out, n_in)}; expected int32 [out, in·bits/32] (bits 4 or 8) and scales [out, "
                              "in/group] (group 32, 64 or 128)")
        out[f"{base}.weight"] = value.view(mx.uint32)
        out[f"{base}.scales"] = scale.astype(mx.float32)
        out[f"{base}.biases"] = scale.astype(mx.float32) * -(2 ** (bits - 1))
    return out


def dequantize_packed(weights: dict[str, mx.array], ctx: SourceContext) -> dict[str, mx.array]:
    """Each packed module dequantized with its own (mode, bits, group_size, global scale), read
    from its tensors (and, for MLX sources, checked against config.json) — except modules copied
    as stored. Runs on the target's names, after experts are stacked."""
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
            if gs is not None and gs.ndim == 0:  # one tensor scale for the module
                out[key] = mx.dequantize(value, scales, None, global_scale=gs, **args)
            elif gs is not None:  # one tensor scale per expert
                out[key] = mx.stack([mx.dequantize(value[e], scales[e], None, global_scale=gs[e], **args)
                                     for e in range(value.shape[0])])
            else:
                out[key] = mx.dequantize(value, scales, biases, **args)
        elif name not in ("scales", "biases", "global_scale"):
            out[key] = value  # a layer's own bias stays as it is
    return out


@dataclass(frozen=True)
class SourceFormat:
    """How a source format's tensors become float or MLX-packed tensors (per SRC tensor name, before
    experts are stacked); packed modules are then dequantized by `dequantize_packed` as needed."""

    name: str
    unpack: Callable[[dict[str, mx.array], SourceContext], dict[str, mx.array]]
    packed: bool = False  # may hold packed modules


MLX = SourceFormat("mlx", lambda weights, ctx: weights, packed=True)  # MLX `quantization` (bits, group_size)

# quant_method (config.json quantization_config) -> how to read it; no quantization_config: float
SOURCE_FORMATS: dict[str | None, SourceFormat] = {
    None: SourceFormat("float", lambda weights, ctx: weights),
    "fp8": SourceFormat("fp8", _fp8_blocks),  # DeepSeek-V3, Qwen3-*-FP8: fmt e4m3, weight_block_size
    "modelopt": SourceFormat("nvfp4", _modelopt_to_mlx, packed=True),  # NVIDIA ModelOpt NVFP4 exports
    "mxfp4": SourceFormat("mxfp4", _mxfp4_blocks_to_mlx, packed=True),  # openai/gpt-oss: expert _blocks/_scales
    # moonshotai/Kimi-K2.5: routed experts in compressed-tensors' pack-quantized int4 (group 32)
    "compressed-tensors": SourceFormat("compressed-tensors", _pack_quantized_to_mlx, packed=True),
}


def source_format(config: dict) -> tuple[SourceFormat, dict]:
    """The source format of a checkpoint and its quantization settings."""
    if (quantization := mlx_quantization(config)) is not None:
        return MLX, quantization
    qconfig = config.get("quantization_config") or config.get("text_config", {}).get("quantization_config") or {}
    method = qconfig.get("quant_method")
    if method == "modelopt" and (algo := qconfig.get("quantization", qconfig).get("quant_algo")) != "NVFP4":
        raise CheckpointError(f"quantization_config: ModelOpt quant_algo {algo!r}; expected 'NVFP4'")
    if method == "compressed-tensors" and (fmt := qconfig.get("format")) != "pack-quantized":
        raise CheckpointError(f"quantization_config: compressed-tensors format {fmt!r}; expected 'pack-quantized'")
    if method not in SOURCE_FORMATS:
        raise CheckpointError(
            f"config.json: quantization_config.quant_method {method!r}; expected one of "
            f"{', '.join(repr(m) for m in SOURCE_FORMATS if m)} (or none, for float weights)"
        )
    return SOURCE_FORMATS[method], qconfig
