"""Load a checkpoint with the real mlx-lm and compare its logits with a reference.

mlx on a Linux CPU runs the MoE expert matmul (gather_mm) in float32 only, and quantized expert
matmuls are much slower than float ones there; so models are dequantized and cast to float32
before the forward pass, which computes the same function.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map, tree_unflatten

from .registry import CANVAS, NEEDS_CACHE
from .surgery import expert_stack_types


def dequantized(module: nn.Module) -> mx.array:
    """The float32 weight of a quantized module, per-expert global scales included (mlx-lm's own
    dequantize_model ignores them, and mlx's CPU gather_qmm refuses them)."""
    args = dict(group_size=module.group_size, bits=module.bits, mode=module.mode, dtype=mx.float32)
    global_scale = module.get("global_scale")
    if global_scale is not None:
        return mx.stack([mx.dequantize(module.weight[e], module.scales[e], None, global_scale=global_scale[e], **args)
                         for e in range(module.weight.shape[0])])
    return mx.dequantize(module.weight, module.scales, module.get("biases"), **args)


def dequantize_model(model: nn.Module) -> nn.Module:
    """Every quantized Linear, Embedding and SwitchLinear (mlx-lm's or mlx-vlm's) replaced by its
    float32 counterpart."""
    stacks = expert_stack_types(model)  # (SwitchLinear, QuantizedSwitchLinear) of mlx-lm, then of mlx-vlm
    kinds = {nn.QuantizedLinear: nn.Linear, nn.QuantizedEmbedding: nn.Embedding, **dict(zip(stacks[1::2], stacks[::2]))}
    replacements = []
    for name, module in model.named_modules():
        kind = kinds.get(type(module))
        if kind is None:
            continue
        weight = dequantized(module)
        bias = "bias" in module
        new = kind(*weight.shape[::-1]) if kind is nn.Embedding else kind(*weight.shape[::-1], bias=bias)
        new.weight = weight
        if bias:
            new.bias = module.bias
        replacements.append((name, new))
    if replacements:
        model.update_modules(tree_unflatten(replacements))
    return model


def load_float32(path: str | Path) -> nn.Module:
    """`mlx_lm.utils.load_model(path)` — or mlx-vlm's `load_model` for a vision-language checkpoint
    when mlx-vlm is installed (target.runner_of) — dequantized, every parameter in float32. Called
    on token ids, the model returns logits (mlx-vlm's output object is unwrapped)."""
    import json

    from .target import MLX_VLM, mlx_vlm_installed, runner_of

    path = Path(path)
    if runner_of(json.loads((path / "config.json").read_text())) == MLX_VLM and mlx_vlm_installed():
        from mlx_vlm.utils import load_model as load_vlm

        model = _Logits(load_vlm(path))
    else:
        from mlx_lm.utils import load_model

        model, _ = load_model(path)
    model = dequantize_model(model)
    model.update(tree_map(lambda a: a.astype(mx.float32) if mx.issubdtype(a.dtype, mx.floating) else a,
                          model.parameters()))
    model.eval()
    return model


class _Logits(nn.Module):
    """An mlx-vlm model called as mlx-lm's are: token ids in, logits out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def __call__(self, inputs: mx.array, **kwargs) -> mx.array:
        return text_logits(self.model, inputs, **kwargs)


def text_logits(model: nn.Module, inputs: mx.array, **kwargs) -> mx.array:
    """An mlx-lm or mlx-vlm model's logits for token ids alone (no image); with a fresh cache of its own
    where the model computes its function only with one (registry.NEEDS_CACHE); a block-diffusion model's
    over the prompt's own tokens as its canvas (registry.CANVAS)."""
    if "pixel_values" in inspect.signature(model.__call__).parameters:
        kwargs.setdefault("pixel_values", None)  # text only (llama4's Model requires the argument)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in NEEDS_CACHE:
        kwargs.setdefault("cache", model.make_cache())
    if model_type in CANVAS:
        kwargs.setdefault(CANVAS[model_type][1], inputs)
    out = model(inputs, **kwargs)
    return getattr(out, "logits", out)


def free_memory() -> int | None:
    """Bytes of memory available now, if the system says."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def fixed_tokens(vocab_size: int, batch: int = 2, length: int = 32, seed: int = 0) -> mx.array:
    return mx.random.randint(0, vocab_size, (batch, length), key=mx.random.key(seed))


@dataclass(frozen=True)
class Closeness:
    max_abs: float  # largest |logit difference|
    rel_rms: float  # rms(difference) / rms(reference logits)
    cosine: float  # mean cosine similarity of logit vectors
    kl: float  # mean KL(reference || other), nats per token
    top1: float  # fraction of tokens whose argmax agrees

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"top-1 agreement {self.top1:.3f}, KL {self.kl:.5f} nats/token, cosine {self.cosine:.5f}, "
                f"relative RMS error {self.rel_rms:.4f}")


def token_kl(reference: mx.array, other: mx.array) -> mx.array:
    """KL(reference ‖ other) of each token's next-token distribution, in nats (the logits' shape
    without the vocabulary axis)."""
    reference, other = reference.astype(mx.float32), other.astype(mx.float32)
    p_log = reference - mx.logsumexp(reference, axis=-1, keepdims=True)
    q_log = other - mx.logsumexp(other, axis=-1, keepdims=True)
    return (mx.exp(p_log) * (p_log - q_log)).sum(-1)


def compare_logits(reference: mx.array, other: mx.array) -> Closeness:
    reference, other = reference.astype(mx.float32), other.astype(mx.float32)
    diff = other - reference
    kl = token_kl(reference, other).mean()
    cos = ((reference * other).sum(-1) / (mx.linalg.norm(reference, axis=-1) * mx.linalg.norm(other, axis=-1))).mean()
    return Closeness(
        max_abs=mx.abs(diff).max().item(),
        rel_rms=(mx.sqrt((diff * diff).mean()) / mx.sqrt((reference * reference).mean())).item(),
        cosine=cos.item(),
        kl=max(kl.item(), 0.0),
        top1=(reference.argmax(-1) == other.argmax(-1)).astype(mx.float32).mean().item(),
    )
