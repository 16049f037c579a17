"""Tiny random checkpoints exactly as published ones look: config keys, tensor names, shards, index.

`write_tiny_checkpoint(dst, "mixtral")` writes a few-MB Hugging Face checkpoint (per-expert
experts, seeded) that moequant's tests convert and load with the real mlx-lm. Each tensor is drawn
from a generator seeded by its own name, so the same weights come out whatever the sharding,
dtype or config style.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlx.core as mx
import numpy as np

from .checkpoint import DTYPE_TAGS, INDEX_FILE, encode_header, tensor_bytes
from .experts import FUSED_SPLITTERS
from .registry import REGISTRY, Family

# Shared tiny dimensions (hidden 128 divides every group size; expert intermediate 64 does not
# divide 128, so a group-128 plan has something to keep for "indivisible").
H, HEADS, KV_HEADS, HEAD_DIM, E, TOP_K, I_MOE, I_DENSE, V, LAYERS = 128, 4, 2, 32, 4, 2, 64, 256, 256, 2
ROPE_THETA = 10000.0  # differs from mlx-lm's 1e6 default for mixtral/qwen2_moe: a missed alias shows

Tensors = dict[str, tuple[int, ...]]  # name -> shape ("kind" is read from the name)


def _attention(p: str, bias: bool = False, qk_norm: bool = False) -> Tensors:
    t = {
        f"{p}.self_attn.q_proj.weight": (HEADS * HEAD_DIM, H),
        f"{p}.self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, H),
        f"{p}.self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, H),
        f"{p}.self_attn.o_proj.weight": (H, HEADS * HEAD_DIM),
        f"{p}.input_layernorm.weight": (H,),
        f"{p}.post_attention_layernorm.weight": (H,),
    }
    if bias:
        t.update({f"{p}.self_attn.{n}_proj.bias": (s,) for n, s in
                  (("q", HEADS * HEAD_DIM), ("k", KV_HEADS * HEAD_DIM), ("v", KV_HEADS * HEAD_DIM))})
    if qk_norm:
        t.update({f"{p}.self_attn.q_norm.weight": (HEAD_DIM,), f"{p}.self_attn.k_norm.weight": (HEAD_DIM,)})
    return t


def _glu(p: str, inter: int, names=("gate_proj", "up_proj", "down_proj")) -> Tensors:
    gate, up, down = names
    return {f"{p}.{gate}.weight": (inter, H), f"{p}.{up}.weight": (inter, H), f"{p}.{down}.weight": (H, inter)}


def _experts(p: str, names=("gate_proj", "up_proj", "down_proj")) -> Tensors:
    t: Tensors = {}
    for e in range(E):
        t.update(_glu(f"{p}.{e}", I_MOE, names))
    return t


def _outer(tie: bool = False) -> Tensors:
    t = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    if not tie:
        t["lm_head.weight"] = (V, H)
    return t


def _qwen3_moe() -> Tensors:
    t = _outer()
    for l in range(LAYERS):
        p = f"model.layers.{l}"
        t |= _attention(p, qk_norm=True) | {f"{p}.mlp.gate.weight": (E, H)} | _experts(f"{p}.mlp.experts")
    return t


def _qwen2_moe() -> Tensors:
    t = _outer()
    for l in range(LAYERS):
        p = f"model.layers.{l}"
        t |= _attention(p, bias=True) | {f"{p}.mlp.gate.weight": (E, H), f"{p}.mlp.shared_expert_gate.weight": (1, H)}
        t |= _experts(f"{p}.mlp.experts") | _glu(f"{p}.mlp.shared_expert", I_DENSE)
    return t


def _mixtral() -> Tensors:
    t = _outer()
    for l in range(LAYERS):
        p = f"model.layers.{l}"
        t |= _attention(p) | {f"{p}.block_sparse_moe.gate.weight": (E, H)}
        t |= _experts(f"{p}.block_sparse_moe.experts", ("w1", "w3", "w2"))
    return t


# DeepSeek-V3 MLA dims: kv_b_proj splits into embed_q/unembed_out whose inputs (64) divide group 64
Q_LORA, KV_LORA, NOPE, ROPE, V_HEAD, DS_HEADS = 64, 64, 64, 32, 64, 2


def _deepseek_v3() -> Tensors:
    t = _outer()
    for l in range(LAYERS):
        p = f"model.layers.{l}"
        t |= {
            f"{p}.self_attn.q_a_proj.weight": (Q_LORA, H),
            f"{p}.self_attn.q_a_layernorm.weight": (Q_LORA,),
            f"{p}.self_attn.q_b_proj.weight": (DS_HEADS * (NOPE + ROPE), Q_LORA),
            f"{p}.self_attn.kv_a_proj_with_mqa.weight": (KV_LORA + ROPE, H),
            f"{p}.self_attn.kv_a_layernorm.weight": (KV_LORA,),
            f"{p}.self_attn.kv_b_proj.weight": (DS_HEADS * (NOPE + V_HEAD), KV_LORA),
            f"{p}.self_attn.o_proj.weight": (H, DS_HEADS * V_HEAD),
            f"{p}.input_layernorm.weight": (H,),
            f"{p}.post_attention_layernorm.weight": (H,),
        }
        if l < 1:  # first_k_dense_replace = 1
            t |= _glu(f"{p}.mlp", I_DENSE)
        else:
            t |= {f"{p}.mlp.gate.weight": (E, H), f"{p}.mlp.gate.e_score_correction_bias": (E,)}
            t |= _experts(f"{p}.mlp.experts") | _glu(f"{p}.mlp.shared_experts", I_MOE)
    return t


def _rope(style: str) -> dict:
    if style == "legacy":
        return {"rope_theta": ROPE_THETA}
    return {"rope_parameters": {"rope_theta": ROPE_THETA, "rope_type": "default"}}


_COMMON = {
    "hidden_act": "silu", "hidden_size": H, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS, "vocab_size": V, "max_position_embeddings": 1024, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False, "initializer_range": 0.02, "attention_dropout": 0.0, "use_cache": True,
    "bos_token_id": None, "eos_token_id": None,
}


def _config_qwen3_moe(style: str) -> dict:
    experts = {"num_experts": E} if style == "legacy" else {"num_local_experts": E}
    return {**_COMMON, **_rope(style), **experts, "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
            "head_dim": HEAD_DIM, "intermediate_size": I_DENSE, "moe_intermediate_size": I_MOE,
            "num_experts_per_tok": TOP_K, "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True,
            "attention_bias": False, "output_router_logits": False, "router_aux_loss_coef": 0.001,
            "sliding_window": None, "use_sliding_window": False}


def _config_qwen2_moe(style: str) -> dict:
    return {**_COMMON, **_rope(style), "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe",
            "intermediate_size": I_DENSE, "moe_intermediate_size": I_MOE, "shared_expert_intermediate_size": I_DENSE,
            "num_experts": E, "num_experts_per_tok": TOP_K, "decoder_sparse_step": 1, "mlp_only_layers": [],
            "norm_topk_prob": False, "qkv_bias": True, "output_router_logits": False, "router_aux_loss_coef": 0.001,
            "sliding_window": None, "use_sliding_window": False, "max_window_layers": LAYERS}


def _config_mixtral(style: str) -> dict:
    return {**_COMMON, **_rope(style), "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
            "intermediate_size": I_MOE, "num_local_experts": E, "num_experts_per_tok": TOP_K, "head_dim": None,
            "router_aux_loss_coef": 0.001, "router_jitter_noise": 0.0, "sliding_window": None,
            "output_router_logits": False}


def _config_deepseek_v3(style: str) -> dict:
    # DeepSeek-V3's published config.json (custom code era) keeps rope_theta at the top level
    return {**_COMMON, "rope_theta": ROPE_THETA, "architectures": ["DeepseekV3ForCausalLM"],
            "model_type": "deepseek_v3", "num_attention_heads": DS_HEADS, "num_key_value_heads": DS_HEADS,
            "intermediate_size": I_DENSE, "moe_intermediate_size": I_MOE, "n_routed_experts": E, "n_shared_experts": 1,
            "num_experts_per_tok": TOP_K, "first_k_dense_replace": 1, "moe_layer_freq": 1, "n_group": 1,
            "topk_group": 1, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
            "routed_scaling_factor": 2.5, "q_lora_rank": Q_LORA, "kv_lora_rank": KV_LORA,
            "qk_nope_head_dim": NOPE, "qk_rope_head_dim": ROPE, "v_head_dim": V_HEAD,
            "num_nextn_predict_layers": 0, "attention_bias": False, "rope_scaling": None}


@dataclass(frozen=True)
class TinyArch:
    """One tiny architecture: its tensors (name -> shape) and config.json, as the release has them.

    `tensors=None` derives them from mlx-lm itself (`published_tensors`): the model class is built
    from the tiny config, its parameter names and shapes are taken, and mlx-lm's sanitize is
    inverted — experts unstacked with the registry row's family, then `renames` and `fixes` — so only the
    config (in the key names the real release's config.json carries) is per-arch data."""

    tensors: Callable[[], Tensors] | None
    config: Callable[[str], dict]  # style -> config.json
    about: str
    renames: tuple[tuple[str, str], ...] = ()  # (regex on mlx-lm's parameter name, published name)
    fixes: tuple[str, ...] = ()  # keys of SHAPE_FIXES: what sanitize reshapes or drops, undone
    values: tuple[tuple[str, float, float], ...] = ()  # (regex on a published name, mean, std) instead
    # of tiny_tensor's defaults, e.g. tied embeddings at 1/sqrt(H) so the logits stay O(1)
    pack: str | None = None  # a key of PACKERS: how the release stores some tensors quantized
    runner: str = "mlx-lm"  # whose model the tensors are derived from: mlx-lm, or mlx-vlm (vision tower too)
    files: Callable[[], dict[str, dict]] | None = None  # extra JSON files the release ships (processor)


ARCHS: dict[str, TinyArch] = {
    "qwen3_moe": TinyArch(_qwen3_moe, _config_qwen3_moe, "Qwen3-MoE, transformers 5 config (num_local_experts, rope_parameters)"),
    "qwen2_moe": TinyArch(_qwen2_moe, _config_qwen2_moe, "Qwen2-MoE with shared expert and shared_expert_gate"),
    "mixtral": TinyArch(_mixtral, _config_mixtral, "Mixtral, block_sparse_moe.experts.{e}.w1/w2/w3"),
    "deepseek_v3": TinyArch(_deepseek_v3, _config_deepseek_v3,
                            "DeepSeek-V3: MLA, first dense layer, shared experts, e_score_correction_bias"),
}


def _mla_kv_b(shapes: Tensors, config: dict) -> Tensors:
    """mlx-lm splits MLA's kv_b_proj [heads·(nope + v), kv_lora] into embed_q and unembed_out."""
    out = {}
    for key, shape in shapes.items():
        if key.endswith(".embed_q.weight"):
            heads, kv_lora, nope = shape
            v_head = shapes[key.replace(".embed_q.", ".unembed_out.")][1]
            out[key.replace(".embed_q.", ".kv_b_proj.")] = (heads * (nope + v_head), kv_lora)
        elif not key.endswith(".unembed_out.weight"):
            out[key] = shape
    return out


def _conv1d_channels_first(shapes: Tensors, config: dict) -> Tensors:
    """Depthwise conv weights: mlx [C, K, 1]; PyTorch releases [C, 1, K] (sanitize moves the axis)."""
    return {k: (s[0], s[2], s[1]) if len(s) == 3 and re.search(r"conv1d\.weight$|conv\.weight$", k) else s
            for k, s in shapes.items()}


def _ernie_moe_statics(shapes: Tensors, config: dict) -> Tensors:
    """ERNIE-4.5 releases carry the router's correction bias as mlp.moe_statics.e_score_correction_bias
    [1, E] (float32); mlx-lm's sanitize drops it (transformers adds it before top-k: zero here)."""
    out = dict(shapes)
    for key, shape in shapes.items():
        if key.endswith(".mlp.gate.weight"):
            out[key.replace(".gate.weight", ".moe_statics.e_score_correction_bias")] = (1, shape[0])
    return out


# Shape changes mlx-lm's sanitize makes, undone: name -> function(shapes, config) -> shapes
def _dbrx_fused_experts(shapes: Tensors, config: dict) -> Tensors:
    """mlx-lm splits DBRX's ffn.experts.mlp.w1 / v1 / w2, each [E·I, H], into per-expert Linear modules."""
    out = {}
    for key, shape in shapes.items():
        if m := re.match(r"^(?P<ffn>.+\.ffn\.experts)\.(?P<e>\d+)\.(?P<w>w1|v1|w2)\.weight$", key):
            rows, cols = (shape[1], shape[0]) if m["w"] == "w2" else shape
            fused = f"{m['ffn']}.mlp.{m['w']}"
            out[fused] = (out.get(fused, (0,))[0] + rows, cols)
        else:
            out[key] = shape
    return out


SHAPE_FIXES: dict[str, Callable[[Tensors, dict], Tensors]] = {
    "dbrx_fused_experts": _dbrx_fused_experts,
    "mla_kv_b": _mla_kv_b,
    "conv1d_channels_first": _conv1d_channels_first,
    "ernie_moe_statics": _ernie_moe_statics,
}


def _conv3d_channels_first(shapes: Tensors, config: dict) -> Tensors:
    """Patch-embedding Conv3d weights: mlx [out, t, h, w, in]; PyTorch releases [out, in, t, h, w]."""
    return {k: (s[0], s[4], s[1], s[2], s[3]) if len(s) == 5 and k.endswith("patch_embed.proj.weight") else s
            for k, s in shapes.items()}


SHAPE_FIXES["conv3d_channels_first"] = _conv3d_channels_first


def _conv2d_channels_first(shapes: Tensors, config: dict) -> Tensors:
    """Patch-embedding Conv2d weights: mlx [out, h, w, in]; PyTorch releases [out, in, h, w]."""
    return {k: (s[0], s[3], s[1], s[2]) if len(s) == 4 and k.endswith("patch_embed.proj.weight") else s
            for k, s in shapes.items()}


SHAPE_FIXES["conv2d_channels_first"] = _conv2d_channels_first


def _downsample_channels_first(shapes: Tensors, config: dict) -> Tensors:
    """GLM-4.5V's vision downsample Conv2d: mlx [out, h, w, in]; PyTorch releases [out, in, h, w]."""
    return {k: (s[0], s[3], s[1], s[2]) if len(s) == 4 and k.endswith("downsample.weight") else s
            for k, s in shapes.items()}


SHAPE_FIXES["downsample_channels_first"] = _downsample_channels_first


def mlx_lm_shapes(config: dict, runner: str = "mlx-lm") -> Tensors:
    """Every parameter of the runner's model for `config` (its names after sanitize, experts stacked)."""
    from mlx.utils import tree_flatten

    from .target import build_model, resolve_config

    model = build_model(resolve_config(config, runner)[0])
    return {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}


def published_tensors(spec: TinyArch, family: Family, config: dict) -> Tensors:
    """The release's per-expert tensor names and shapes, from the runner's model with sanitize undone."""
    shapes = mlx_lm_shapes(config, spec.runner)
    for fix in spec.fixes:
        shapes = SHAPE_FIXES[fix](shapes, config)
    for pattern, replacement in spec.renames:
        shapes = {re.sub(pattern, replacement, k): s for k, s in shapes.items()}
    source_name = {stacked: source for source, stacked in family.projections.items()}
    stacked = re.compile(rf"^(?P<layer>.+)\.{re.escape(family.stacked)}\.(?P<proj>\w+)\.(?P<suffix>\w+)$")
    out: Tensors = {}
    for key, shape in shapes.items():
        m = stacked.match(key)
        if m is None or m["proj"] not in source_name:
            out[key] = shape
            continue
        for e in range(shape[0]):
            out[f"{m['layer']}.{family.experts}.{e}.{source_name[m['proj']]}.{m['suffix']}"] = shape[1:]
    return out


# Float32 in the source wherever real releases keep it so (DeepSeek's correction bias)
_FLOAT32_SUFFIXES = ("e_score_correction_bias",)


def tiny_tensor(name: str, shape: tuple[int, ...], seed: int, mean: float | None = None,
                std: float | None = None) -> np.ndarray:
    """Deterministic values for one tensor, from its name: norms near 1, weights ~ 1/sqrt(in)
    (or `mean` + `std`·N(0, 1) when given)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if mean is not None:
        return (mean + std * rng.standard_normal(shape)).astype(np.float32)
    if len(shape) == 1:
        base = 1.0 if "norm" in name else 0.0
        return (base + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    scale = 1.0 if "embed_tokens" in name else 1.0 / math.sqrt(shape[-1])
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def byte_tokenizer() -> dict:
    """tokenizer.json of a byte-level BPE with no merges: token id = byte value (vocab 256)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", **byte_level}, "post_processor": None,
            "decoder": {"type": "ByteLevel", **byte_level},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": {chars[b]: b for b in range(256)}, "merges": []}}


LAYOUTS = ("per_expert", "fused", "stacked")
SOURCES = ("float", "fp8", "nvfp4")


def _to_layout(tensors: dict[str, mx.array], family: Family, layout: str) -> dict[str, mx.array]:
    """Per-expert tensors rewritten as fused (the family's two fused tensors, e.g.
    `experts.gate_up_proj` [E, 2I, H] gate rows first + `experts.down_proj`, oriented as
    FUSED_SPLITTERS[family.fused] says, and its fused biases) or stacked
    (`switch_mlp.{proj}.weight` [E, out, in])."""
    if layout == "per_expert":
        return tensors
    experts = re.escape(family.experts)
    pattern = re.compile(rf"^(?P<layer>.+)\.{experts}\.(?P<e>\d+)\.(?P<proj>\w+)\.(?P<suffix>weight|bias)$")
    out, stacks = {}, {}
    for key, value in tensors.items():
        if m := pattern.match(key):
            stacks.setdefault((m["layer"], family.projections[m["proj"]], m["suffix"]), {})[int(m["e"])] = value
        else:
            out[key] = value
    for (layer, proj, suffix), by_expert in stacks.items():
        out[f"{layer}.{family.stacked}.{proj}.{suffix}"] = mx.stack([by_expert[e] for e in sorted(by_expert)])
    if layout == "fused":
        fused = FUSED_SPLITTERS[family.fused]
        for layer, _, suffix in {(layer, None, suffix) for layer, _, suffix in stacks}:
            stacked, experts = f"{layer}.{family.stacked}", f"{layer}.{family.experts}"
            gate, up = out.pop(f"{stacked}.gate_proj.{suffix}"), out.pop(f"{stacked}.up_proj.{suffix}")
            down = out.pop(f"{stacked}.down_proj.{suffix}")
            if suffix == "weight":
                out[f"{experts}.{family.fused_names[0]}"] = fused.join(gate, up)
                out[f"{experts}.{family.fused_names[1]}"] = fused.store_down(down)
            else:
                out[f"{experts}.{family.fused_bias_names[0]}"] = fused.join_rows(gate, up)
                out[f"{experts}.{family.fused_bias_names[1]}"] = down
    return out


_FP8_KEEP = ("embed_tokens", "lm_head", "norm", ".gate.", "shared_expert_gate")  # stay float, as releases do


def _to_fp8(tensors: dict[str, mx.array], block: tuple[int, int]) -> dict[str, tuple[str, mx.array]]:
    """2-D linear weights as F8_E4M3 with float32 inverse block scales (`weight_scale_inv`)."""
    b0, b1 = block
    out = {}
    for key, value in tensors.items():
        if not (key.endswith(".weight") and value.ndim == 2) or any(k in key for k in _FP8_KEEP):
            out[key] = (DTYPE_TAGS[value.dtype], value)
            continue
        n_out, n_in = value.shape
        w = value.astype(mx.float32)
        pad = mx.pad(w, ((0, -n_out % b0), (0, -n_in % b1)))
        blocks = pad.reshape(pad.shape[0] // b0, b0, pad.shape[1] // b1, b1)
        scale = mx.maximum(mx.abs(blocks).max(axis=(1, 3)), 1e-12) / 448.0
        full = mx.repeat(mx.repeat(scale, b0, axis=0), b1, axis=1)[:n_out, :n_in]
        out[key] = ("F8_E4M3", mx.to_fp8(w / full))
        out[key[: -len("weight")] + "weight_scale_inv"] = ("F32", scale)
    return out


def _to_modelopt_nvfp4(tensors: dict[str, mx.array]) -> dict[str, tuple[str, mx.array]]:
    """2-D linear weights as NVIDIA ModelOpt writes NVFP4: uint8 [out, in/2] (two e2m1, low nibble
    first), F8_E4M3 `weight_scale` [out, in/16], float32 scalar `weight_scale_2` (amax / 2688)
    and `input_scale`; gates, embeddings, lm_head and norms stay as they are (exclude_modules)."""
    out = {}
    for key, value in tensors.items():
        if not (key.endswith(".weight") and value.ndim == 2) or any(k in key for k in _FP8_KEEP):
            out[key] = (DTYPE_TAGS[value.dtype], value)
            continue
        w = value.astype(mx.float32)
        amax = mx.abs(w).max()
        packed, scales = mx.quantize(w, 16, 4, mode="nvfp4", global_scale=amax)
        base = key[: -len("weight")]
        out[key] = ("U8", packed.view(mx.uint8))
        out[base + "weight_scale"] = ("F8_E4M3", scales)
        out[base + "weight_scale_2"] = ("F32", (amax / (6.0 * 448.0)).reshape(()))
        out[base + "input_scale"] = ("F32", mx.array(1.0))
    return out


def _gpt_oss_mxfp4(tagged: dict[str, tuple[str, mx.array]]) -> tuple[dict[str, tuple[str, mx.array]], dict]:
    """openai/gpt-oss-20b: every fused expert tensor as MXFP4, `P_blocks` uint8 [E, out, in/32, 16]
    (two e2m1 per byte) and `P_scales` uint8 (e8m0) [E, out, in/32] — MLX's mxfp4 packing viewed as
    bytes — and quantization_config {"quant_method": "mxfp4"}; biases, router, attention,
    embeddings and lm_head stay bf16."""
    out = {}
    for key, (tag, value) in tagged.items():
        if key.endswith((".experts.gate_up_proj.weight", ".experts.down_proj.weight")):
            base = key[: -len(".weight")]
            packed, scales = mx.quantize(value.astype(mx.float32), group_size=32, bits=4, mode="mxfp4")
            out[f"{base}_blocks"] = ("U8", packed.view(mx.uint8).reshape(*packed.shape[:-1], -1, 16))
            out[f"{base}_scales"] = ("U8", scales)
        else:
            out[key] = (tag, value)
    return out, {"quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}}


# How a release stores some tensors quantized: name -> function(tagged tensors) -> (tagged, config keys)
PACKERS: dict[str, Callable[[dict[str, tuple[str, mx.array]]], tuple[dict[str, tuple[str, mx.array]], dict]]] = {
    "gpt_oss_mxfp4": _gpt_oss_mxfp4,
}


def save_safetensors(path: Path, tensors: dict[str, tuple[str, mx.array]]) -> None:
    """A safetensors file with the dtype tags releases use (mlx itself writes fp8 as U8)."""
    entries = [(key, tag, tuple(value.shape)) for key, (tag, value) in tensors.items()]
    blobs = [tensor_bytes(value) for _, value in tensors.values()]  # all read before `path` is replaced
    with open(path, "wb") as f:
        f.write(encode_header(entries, {"format": "pt"}))
        for blob in blobs:
            f.write(blob)


def write_tiny_checkpoint(dst: str | Path, arch: str, *, dtype: str = "bfloat16", shards: int = 1,
                          seed: int = 0, style: str = "published", layout: str | None = None,
                          source: str = "float", block_size: tuple[int, int] = (128, 128),
                          vision: bool = False) -> Path:
    """Write a tiny `arch` checkpoint into dst (created). `style="legacy"` writes the config keys
    mlx-lm was written against (rope_theta, num_experts) instead of what the release carries;
    `layout` picks per-expert, fused or stacked experts (default: what the release publishes);
    `source="fp8"` writes FP8 block-scaled linear weights (`weight_block_size` = block_size) as
    DeepSeek-V3 and Qwen3-FP8 releases do. `vision=True` writes a vision-language release whole
    (VLM_ARCHS: vision tower, vision_config, processor files) instead of its language model only."""
    family = REGISTRY[arch].family if arch in REGISTRY else None
    layout = layout or (family.layout if family else "per_expert")
    archs = VLM_ARCHS if vision else ALL_ARCHS
    if arch not in archs or layout not in LAYOUTS or source not in SOURCES:
        raise ValueError(f"arch {arch!r}, layout {layout!r}, source {source!r}; expected one of "
                         f"{', '.join(archs)}; {', '.join(LAYOUTS)}; {', '.join(SOURCES)}")
    spec = archs[arch]
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    mx_dtype = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}[dtype]
    tensors = {}
    shapes = spec.tensors() if spec.tensors else published_tensors(spec, family, spec.config("published"))
    for name, shape in sorted(shapes.items()):
        mean_std = next((v[1:] for v in spec.values if re.search(v[0], name)), ())
        value = mx.array(tiny_tensor(name, shape, seed, *mean_std))
        tensors[name] = value if name.endswith(_FLOAT32_SUFFIXES) else value.astype(mx_dtype)
    tensors = _to_layout(tensors, family, layout)
    if source == "fp8":
        tagged = _to_fp8(tensors, block_size)
    elif source == "nvfp4":
        tagged = _to_modelopt_nvfp4(tensors)
    else:
        tagged = {k: (DTYPE_TAGS[v.dtype], v) for k, v in tensors.items()}
    packed_config = {}
    if spec.pack and layout == family.layout and source == "float":
        tagged, packed_config = PACKERS[spec.pack](tagged)
    names = sorted(tagged)
    per = math.ceil(len(names) / shards)
    parts = [names[i * per:(i + 1) * per] for i in range(shards)]
    files = ["model.safetensors"] if shards == 1 else [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    for part, file in zip(parts, files):
        save_safetensors(dst / file, {k: tagged[k] for k in part})
    if shards > 1:
        index = {"metadata": {"total_size": sum(v.nbytes for _, v in tagged.values())},
                 "weight_map": {k: f for part, f in zip(parts, files) for k in part}}
        (dst / INDEX_FILE).write_text(json.dumps(index, indent=2))
    config = {**spec.config(style), **packed_config, "dtype" if style == "published" else "torch_dtype": dtype}
    if source == "fp8":
        config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                         "weight_block_size": list(block_size)}
    if source == "nvfp4":  # ModelOpt keeps its settings beside config.json
        excluded = sorted({k[: -len(".weight")] for k, (tag, _) in tagged.items()
                           if k.endswith(".weight") and tag != "U8" and tagged[k][1].ndim == 2})
        (dst / "hf_quant_config.json").write_text(json.dumps({
            "producer": {"name": "modelopt", "version": "0.29.0"},
            "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": 16,
                             "exclude_modules": excluded}}, indent=2))
    config["transformers_version"] = "5.23.0" if style == "published" else "4.57.0"
    (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    (dst / "generation_config.json").write_text(json.dumps({"_from_model_config": True, "use_cache": True}))
    (dst / "tokenizer.json").write_text(json.dumps(byte_tokenizer()))
    (dst / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1024}))
    for name, content in (spec.files() if spec.files else {}).items():
        if isinstance(content, bytes):  # a binary file (a SentencePiece model)
            (dst / name).write_bytes(content)
        else:
            (dst / name).write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
    return dst


# ---- Architectures whose tensors are derived from mlx-lm (published_tensors): the config is the
# per-arch data, in the key names the release's config.json carries (each row names its source).

def _release(drop: tuple[str, ...] = (), **keys) -> Callable[[str], dict]:
    """A config.json with shared tiny dims (minus `drop`); these releases' keys are what mlx-lm
    reads, so the "legacy" style is the same file."""
    config = {"hidden_act": "silu", "hidden_size": H, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
              "num_key_value_heads": KV_HEADS, "vocab_size": V, "max_position_embeddings": 1024,
              "rms_norm_eps": 1e-6, "rope_theta": ROPE_THETA, "rope_scaling": None, "tie_word_embeddings": False,
              "initializer_range": 0.02, "attention_dropout": 0.0, "use_cache": True, "bos_token_id": None,
              "eos_token_id": None, **keys}
    config = {k: v for k, v in config.items() if k not in drop}
    return lambda style: json.loads(json.dumps(config))


def _gemma4_text() -> dict:
    """The text_config of google/gemma-4-26B-A4B-it, at tiny dims (and a Gemma4ForCausalLM config.json)."""
    return {"model_type": "gemma4_text", "hidden_size": H, "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
            "global_head_dim": 2 * HEAD_DIM, "num_global_key_value_heads": 1, "attention_k_eq_v": True,
            "intermediate_size": I_DENSE, "moe_intermediate_size": I_MOE, "num_experts": E,
            "top_k_experts": TOP_K, "enable_moe_block": True, "use_double_wide_mlp": False,
            "hidden_size_per_layer_input": 0, "num_kv_shared_layers": 0, "vocab_size": V,
            "vocab_size_per_layer_input": V, "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": 1024, "rms_norm_eps": 1e-6, "sliding_window": 16,
            "layer_types": ["sliding_attention", "full_attention"], "final_logit_softcapping": 30.0,
            "attention_bias": False, "attention_dropout": 0.0, "tie_word_embeddings": True,
            "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 1, "initializer_range": 0.02,
            "rope_parameters": {
                "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0,
                                   "rope_type": "proportional"},
                "sliding_attention": {"rope_theta": ROPE_THETA, "rope_type": "default"}}}


# Qwen3-Next / Qwen3.5 RMSNorms (not the gated norm inside linear_attn) store w for a (1 + w) scale
_ZERO_CENTERED_NORMS = ((r"(input_layernorm|post_attention_layernorm|q_norm|k_norm)\.weight$"
                         r"|^model\.(language_model\.)?norm\.weight$", 0.0, 0.1),)
_TIED = ((r"embed_tokens\.weight$", 0.0, 1 / math.sqrt(H)),)  # tied embeddings: logits O(1), not O(sqrt(H))


GENERATED: dict[str, TinyArch] = {
    # allenai/OLMoE-1B-7B-0924: intermediate_size is the expert size; q_norm/k_norm over all heads
    "olmoe": TinyArch(None, _release(
        architectures=["OlmoeForCausalLM"], model_type="olmoe", intermediate_size=I_MOE, num_experts=E,
        num_experts_per_tok=TOP_K, norm_topk_prob=False, attention_bias=False, clip_qkv=None,
        output_router_logits=False, router_aux_loss_coef=0.01, rms_norm_eps=1e-5),
        "OLMoE: mlp.experts.{e}.*, q_norm/k_norm over all heads"),
    # microsoft/Phi-3.5-MoE-instruct: LayerNorms with bias, attention and lm_head biases, longrope
    "phimoe": TinyArch(None, _release(
        architectures=["PhiMoEForCausalLM"], model_type="phimoe", intermediate_size=I_MOE, num_local_experts=E,
        num_experts_per_tok=TOP_K, attention_bias=True, lm_head_bias=True, hidden_dropout=0.0,
        input_jitter_noise=0.01, router_jitter_noise=0.01, router_aux_loss_coef=0.0, output_router_logits=False,
        sliding_window=131072, max_position_embeddings=131072, original_max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_scaling={"type": "longrope", "short_factor": [1.0 + i / 64 for i in range(HEAD_DIM // 2)],
                      "long_factor": [1.0 + i / 8 for i in range(HEAD_DIM // 2)], "short_mscale": 1.1,
                      "long_mscale": 1.243, "original_max_position_embeddings": 4096}),
        "PhiMoE: block_sparse_moe.experts.{e}.w1/w2/w3, LayerNorm, longrope"),
    # MiniMaxAI/MiniMax-M2: sigmoid router with e_score_correction_bias, per-layer qk norm, partial rotary
    "minimax_m2": TinyArch(None, _release(
        architectures=["MiniMaxM2ForCausalLM"], model_type="minimax_m2", intermediate_size=I_MOE,
        num_local_experts=E, num_experts_per_tok=TOP_K, shared_intermediate_size=0, head_dim=HEAD_DIM,
        rotary_dim=HEAD_DIM // 2, use_qk_norm=True, qk_norm_type="per_layer", scoring_func="sigmoid",
        use_routing_bias=True, use_mtp=False, num_mtp_modules=0, attn_type_list=[1] * LAYERS),
        "MiniMax-M2: block_sparse_moe.experts.{e}.w1/w2/w3, e_score_correction_bias, qk norm"),
    # Kwai-Klear/Klear-46B-A2.5B: experts stacked in place (mlp.experts.{proj}), shared experts,
    # a 2-way coefficient mixing routed and shared outputs
    "Klear": TinyArch(None, _release(
        architectures=["KlearForCausalLM"], model_type="Klear", intermediate_size=I_DENSE, moe_intermediate_size=I_MOE,
        num_experts=E, num_experts_per_tok=TOP_K, n_shared_experts=1, decoder_sparse_step=1, mlp_only_layers=[0],
        norm_topk_prob=True, attention_bias=False),
        "Klear: dense first layer, sigmoid router + expert_bias, shared experts, coefficient"),
    # JetBrains Mellum MoE (transformers 5 era): per-layer-type rope_parameters, sliding window
    "mellum": TinyArch(None, _release(
        architectures=["MellumForCausalLM"], model_type="mellum", intermediate_size=I_DENSE,
        moe_intermediate_size=I_MOE, num_experts=E, num_experts_per_tok=TOP_K, head_dim=HEAD_DIM, norm_topk_prob=True,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"], drop=("rope_theta", "rope_scaling"),
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": ROPE_THETA},
                         "sliding_attention": {"rope_type": "default", "rope_theta": ROPE_THETA}}),
        "Mellum: sliding and full attention layers, qk norm"),
    # rednote-hilab/dots.llm1.inst: dense first layer, shared experts, noaux_tc router; mlx-lm keeps
    # the stacked experts at mlp.experts.{proj}
    "dots1": TinyArch(None, _release(
        architectures=["Dots1ForCausalLM"], model_type="dots1", intermediate_size=I_DENSE, moe_intermediate_size=I_MOE,
        head_dim=HEAD_DIM, first_k_dense_replace=1, moe_layer_freq=1, n_routed_experts=E, n_shared_experts=1,
        num_experts_per_tok=TOP_K, norm_topk_prob=True, routed_scaling_factor=2.5, scoring_func="noaux_tc",
        n_group=1, topk_group=1, attention_bias=False, sliding_window=None, use_sliding_window=False,
        max_window_layers=LAYERS),
        "dots.llm1: dense first layer, shared experts, e_score_correction_bias"),
    # zai-org/GLM-4.5-Air: partial rotary, attention bias, dense first layer, shared experts
    "glm4_moe": TinyArch(None, _release(
        architectures=["Glm4MoeForCausalLM"], model_type="glm4_moe", intermediate_size=I_DENSE,
        moe_intermediate_size=I_MOE, head_dim=HEAD_DIM, partial_rotary_factor=0.5, attention_bias=True,
        first_k_dense_replace=1, n_routed_experts=E, n_shared_experts=1, num_experts_per_tok=TOP_K,
        norm_topk_prob=True, routed_scaling_factor=1.0, n_group=1, topk_group=1, use_qk_norm=False,
        num_nextn_predict_layers=0),
        "GLM-4.5: partial rotary, dense first layer, shared experts, e_score_correction_bias"),
    # baidu/ERNIE-4.5-21B-A3B-PT: moe_* keys, first MoE layer at moe_layer_start_index, shared experts
    "ernie4_5_moe": TinyArch(None, _release(
        architectures=["Ernie4_5_MoeForCausalLM"], model_type="ernie4_5_moe", intermediate_size=I_DENSE,
        moe_intermediate_size=I_MOE, moe_num_experts=E, moe_num_shared_experts=1, moe_layer_start_index=1,
        moe_layer_interval=1, moe_k=TOP_K, moe_capacity=[E, E, E], moe_gate="topk", moe_use_aux_free=False,
        use_bias=False, head_dim=HEAD_DIM),
        "ERNIE-4.5-MoE: dense first layer, shared experts, moe_statics (dropped by mlx-lm)",
        fixes=("ernie_moe_statics",), values=((r"moe_statics", 0.0, 0.0),)),
    # ibm-granite/granite-3.1-3b-a800m: experts fused as input_linear [E, 2I, H] and output_linear,
    # router at block_sparse_moe.router.layer; tied embeddings and muP-style multipliers
    "granitemoe": TinyArch(None, _release(
        architectures=["GraniteMoeForCausalLM"], model_type="granitemoe", intermediate_size=I_MOE,
        num_local_experts=E, num_experts_per_tok=TOP_K, attention_bias=False, attention_multiplier=1 / HEAD_DIM,
        embedding_multiplier=2.0, residual_multiplier=0.5, logits_scaling=1.25, tie_word_embeddings=True,
        output_router_logits=False, router_aux_loss_coef=0.001),
        "GraniteMoE: fused input_linear/output_linear experts, router.layer", values=_TIED),
    # tencent/Tencent-Hunyuan-Large: cross-layer attention (odd layers reuse the KV of the layer
    # before), router at mlp.gate.wg, shared_mlp, NTK-alpha rope, embeddings tied in mlx-lm
    "hunyuan": TinyArch(None, _release(
        architectures=["HunYuanForCausalLM"], model_type="hunyuan", intermediate_size=I_MOE, num_experts=E,
        moe_topk=TOP_K, num_shared_expert=1, use_mixed_mlp_moe=True, use_qk_norm=True, use_cla=True, cla_share_factor=2,
        attention_bias=False, mlp_bias=False, attention_head_dim=HEAD_DIM, pretraining_tp=1, tie_word_embeddings=True,
        rope_scaling={"alpha": 1000.0, "beta_fast": 32, "beta_slow": 1, "factor": 1.0, "mscale": 1.0,
                      "mscale_all_dim": 1.0, "type": "dynamic"}),
        "Hunyuan-Large: cross-layer KV sharing, mlp.gate.wg, shared_mlp", values=_TIED),
    # inclusionAI/Ling-mini-2.0: word_embeddings, fused query_key_value, router weight at mlp.gate.weight
    # (+ expert_bias), sigmoid group routing, shared experts, dense first layer
    "bailing_moe": TinyArch(None, _release(
        architectures=["BailingMoeV2ForCausalLM"], model_type="bailing_moe", intermediate_size=I_DENSE,
        moe_intermediate_size=I_MOE, num_experts=E, num_shared_experts=1, num_experts_per_tok=TOP_K,
        norm_topk_prob=True, first_k_dense_replace=1, head_dim=HEAD_DIM, use_qk_norm=True, partial_rotary_factor=0.5,
        use_bias=False, use_qkv_bias=False, norm_head=False, norm_softmax=False, moe_router_enable_expert_bias=True,
        routed_scaling_factor=2.5, score_function="sigmoid", n_group=2, topk_group=1,
        moe_shared_expert_intermediate_size=I_MOE, output_dropout=0.0, embedding_dropout=0.0),
        "Ling 2.0: query_key_value, mlp.gate.weight + expert_bias, group routing",
        renames=((r"\.mlp\.gate\.gate_proj\.", ".mlp.gate."),)),
    # inclusionAI/Ring-mini-linear-2.0: Ling 2.0's MoE with linear-attention layers (query_key_value,
    # g_proj, g_norm over group_norm_size groups) and a full-attention layer closing each
    # layer_group_size group
    "bailing_moe_linear": TinyArch(None, _release(
        architectures=["BailingMoeLinearV2ForCausalLM"], model_type="bailing_moe_linear", intermediate_size=I_DENSE,
        moe_intermediate_size=I_MOE, num_experts=E, num_shared_experts=1, num_experts_per_tok=TOP_K,
        norm_topk_prob=True, first_k_dense_replace=1, head_dim=HEAD_DIM, use_qk_norm=True, partial_rotary_factor=0.5,
        use_bias=False, use_qkv_bias=False, norm_head=False, norm_softmax=False, moe_router_enable_expert_bias=True,
        routed_scaling_factor=2.5, score_function="sigmoid", n_group=2, topk_group=1, layer_group_size=2,
        group_norm_size=2, moe_shared_expert_intermediate_size=I_MOE, use_rmsnorm=True, output_dropout=0.0,
        embedding_dropout=0.0),
        "Ring-linear 2.0: linear + full attention layers, query_key_value, mlp.gate.weight + expert_bias",
        renames=((r"\.mlp\.gate\.gate_proj\.", ".mlp.gate."),)),
    # inclusionAI/Ling-3.0-Flash (transformers' bailing_hybrid; mlx-lm's bailing_moe_v3 module, picked by
    # architectures BailingMoeV3ForCausalLM): Kimi Delta Attention layers (q/k/v_conv1d [C, 1, K], f_proj,
    # A_log, dt_bias, b_proj, g_proj, o_norm, o_proj) and an MLA layer (q_proj, kv_b_proj, dense, g_proj) closing
    # each layer_group_size group; word_embeddings; router mlp.gate.weight + expert_bias; dense first layer
    "bailing_moe_v3": TinyArch(None, _release(
        architectures=["BailingMoeV3ForCausalLM"], model_type="bailing_hybrid", num_attention_heads=DS_HEADS,
        num_key_value_heads=DS_HEADS, intermediate_size=I_DENSE, moe_intermediate_size=I_MOE, num_experts=E,
        num_experts_per_tok=TOP_K, num_shared_experts=1, first_k_dense_replace=1, head_dim=HEAD_DIM,
        moe_shared_expert_intermediate_size=I_MOE, n_group=2, topk_group=1, routed_scaling_factor=2.5,
        layer_group_size=2, q_lora_rank=None, kv_lora_rank=KV_LORA, qk_nope_head_dim=NOPE, qk_rope_head_dim=ROPE,
        v_head_dim=V_HEAD, short_conv_kernel_size=4, kda_lower_bound=-5.0, kda_safe_gate=True, no_kda_lora=True,
        rope_interleave=True, num_nextn_predict_layers=0, norm_topk_prob=True, pad_token_id=None),
        "Ling 3.0 (BailingMoeV3): KDA + MLA layers, word_embeddings, mlp.gate.weight + expert_bias",
        fixes=("mla_kv_b", "conv1d_channels_first")),
    # inclusionAI Ling 2.5 (model_type bailing_hybrid, BailingMoeV2_5ForCausalLM; mlx-lm's bailing_hybrid
    # module): Ring-linear's linear-attention layers (query_key_value, g_proj, g_norm) and an MLA layer
    # (q_lora, kv_b_proj, dense) closing each layer_group_size group; router mlp.gate.weight + expert_bias
    "bailing_hybrid": TinyArch(None, _release(
        architectures=["BailingMoeV2_5ForCausalLM"], model_type="bailing_hybrid", num_attention_heads=DS_HEADS,
        num_key_value_heads=DS_HEADS, intermediate_size=I_DENSE, moe_intermediate_size=I_MOE, num_experts=E,
        num_experts_per_tok=TOP_K, num_shared_experts=1, first_k_dense_replace=1, head_dim=HEAD_DIM,
        moe_shared_expert_intermediate_size=I_MOE, n_group=2, topk_group=1, routed_scaling_factor=2.5,
        layer_group_size=2, group_norm_size=2, q_lora_rank=Q_LORA, kv_lora_rank=KV_LORA, qk_nope_head_dim=NOPE,
        qk_rope_head_dim=ROPE, v_head_dim=V_HEAD, rope_interleave=True, partial_rotary_factor=0.5, use_qk_norm=True,
        score_function="sigmoid", moe_router_enable_expert_bias=True, norm_topk_prob=True,
        num_nextn_predict_layers=0),
        "Ling 2.5: linear-attention + MLA layers, word_embeddings, mlp.gate.weight + expert_bias",
        fixes=("mla_kv_b",), renames=((r"\.mlp\.gate\.gate_proj\.", ".mlp.gate."),)),
    # XiaomiMiMo/MiMo-V2-Flash: full and sliding layers (hybrid_layer_pattern, 1 = sliding) with their own
    # kv heads and rope theta, attention sinks on sliding layers (self_attn.attention_sink_bias), q/k head
    # dim != v head dim, partial rotary; dense first layer (moe_layer_freq), sigmoid router + correction bias
    "mimo_v2_flash": TinyArch(None, _release(
        architectures=["MiMoV2FlashForCausalLM"], model_type="mimo_v2_flash", intermediate_size=I_DENSE,
        moe_intermediate_size=I_MOE, n_routed_experts=E, n_shared_experts=None, num_experts_per_tok=TOP_K,
        hybrid_layer_pattern=[0, 1], moe_layer_freq=[0, 1], add_swa_attention_sink_bias=True,
        add_full_attention_sink_bias=False, sliding_window_size=16, layernorm_epsilon=1e-5, rms_norm_eps=1e-5,
        rope_theta=5000000.0, swa_rope_theta=ROPE_THETA, swa_num_attention_heads=HEADS,
        swa_num_key_value_heads=2 * KV_HEADS, head_dim=48, v_head_dim=32, swa_head_dim=48, swa_v_head_dim=32,
        partial_rotary_factor=0.334, attention_value_scale=0.707, topk_method="noaux_tc", scoring_func="sigmoid",
        norm_topk_prob=True, n_group=1, topk_group=1, routed_scaling_factor=None, attention_bias=False,
        drop=("rope_scaling",)),
        "MiMo-V2-Flash: sliding layers with sinks, asymmetric head dims, sigmoid router + correction bias"),
    # stepfun-ai/Step-3.5-Flash: experts stacked as moe.{gate,up,down}_proj.weight, router moe.gate.weight +
    # moe.router_bias, share_expert beside moe; zero-centred norms (sanitize adds 1); full and sliding
    # layers with their own head counts (attention_other_setting), per-layer rope theta and partial
    # rotary, head-wise attention gate (g_proj), clamped SwiGLU (swiglu_limits), MoE layers from moe_layers_enum
    "step3p5": TinyArch(None, _release(
        architectures=["Step3p5ForCausalLM"], model_type="step3p5", num_attention_groups=KV_HEADS,
        head_dim=HEAD_DIM, intermediate_size=I_DENSE, rope_theta=[5000000.0, ROPE_THETA], sliding_window=16,
        layer_types=["full_attention", "sliding_attention"], partial_rotary_factors=[0.5, 1.0],
        attention_other_setting={"num_attention_heads": 2 * HEADS, "num_attention_groups": KV_HEADS},
        use_head_wise_attn_gate=True, moe_num_experts=E, moe_top_k=TOP_K, moe_intermediate_size=I_MOE,
        share_expert_dim=I_MOE, moe_layers_enum="1", moe_router_activation="sigmoid", moe_router_scaling_factor=3.0,
        norm_expert_weight=True, use_moe_router_bias=True, swiglu_limits=[0.0, 7.0], swiglu_limits_shared=[0.0, 16.0],
        rms_norm_eps=1e-5, drop=("num_key_value_heads",)),
        "Step-3.5-Flash: stacked moe.* experts, router_bias, share_expert, zero-centred norms, sliding layers",
        renames=((r"\.mlp\.switch_mlp\.", ".moe."), (r"\.mlp\.gate\.gate\.", ".moe.gate."),
                 (r"\.mlp\.gate\.router_bias$", ".moe.router_bias"), (r"\.mlp\.share_expert\.", ".share_expert.")),
        values=((r"norm\.weight$", 0.0, 0.1), (r"router_bias$", 0.0, 0.1))),
    # meituan-longcat/LongCat-Flash-Chat: two MLA blocks and two dense MLPs per layer (self_attn.{0,1},
    # mlps.{0,1}, input/post_attention_layernorm.{0,1}) around a shortcut MoE; the router
    # (mlp.router.classifier + e_score_correction_bias) also scores zero_expert_num identity experts
    "longcat_flash": TinyArch(None, _release(
        architectures=["LongcatFlashForCausalLM"], model_type="longcat_flash", attention_method="MLA",
        zero_expert_type="identity", ffn_hidden_size=I_DENSE, moe_topk=TOP_K, expert_ffn_hidden_size=I_MOE,
        n_routed_experts=E, zero_expert_num=2, num_layers=LAYERS, num_attention_heads=DS_HEADS,
        num_key_value_heads=DS_HEADS, kv_lora_rank=KV_LORA, q_lora_rank=Q_LORA, qk_rope_head_dim=ROPE,
        qk_nope_head_dim=NOPE, v_head_dim=V_HEAD, routed_scaling_factor=6.0, mla_scale_q_lora=True,
        mla_scale_kv_lora=True, attention_bias=False, norm_topk_prob=False, router_bias=False, rms_norm_eps=1e-5,
        drop=("num_hidden_layers",)),
        "LongCat-Flash: two MLA blocks per layer, shortcut MoE with zero experts, router.classifier",
        fixes=("mla_kv_b",)),
    # meituan-longcat LongCat-Flash n-gram variant: LongCat-Flash's layers, with n-gram embeddings beside
    # model.embed_tokens (renamed by sanitize): model.ngram_embeddings.{embedders, post_projs}.{i}
    "longcat_flash_ngram": TinyArch(None, lambda style: {
        **GENERATED["longcat_flash"].config(style), "architectures": ["LongcatFlashNgramForCausalLM"],
        "model_type": "longcat_flash_ngram", "ngram_vocab_size_ratio": 2, "emb_neighbor_num": 2, "emb_split_num": 2},
        "LongCat-Flash n-gram: LongCat-Flash + n-gram embedders and their projections",
        fixes=("mla_kv_b",), renames=((r"^model\.ngram_embeddings\.word_embeddings\.", "model.embed_tokens."),)),
    # Mistral Small 4's language model (transformers' Mistral4ForCausalLM, model_type mistral4): MLA with
    # q_lora (kv_b_proj), interleaved rope, fused experts (mlp.experts.gate_up_proj [E, 2I, H]), router
    # mlp.gate.weight + e_score_correction_bias, shared experts; transformers 5 config (rope_parameters)
    "mistral4": TinyArch(None, _release(
        architectures=["Mistral4ForCausalLM"], model_type="mistral4", num_attention_heads=DS_HEADS,
        num_key_value_heads=DS_HEADS, intermediate_size=I_DENSE, moe_intermediate_size=I_MOE, n_routed_experts=E,
        n_shared_experts=1, num_experts_per_tok=TOP_K, first_k_dense_replace=0, n_group=1, topk_group=1,
        norm_topk_prob=True, routed_scaling_factor=1.0, q_lora_rank=Q_LORA, kv_lora_rank=KV_LORA,
        qk_nope_head_dim=NOPE, qk_rope_head_dim=ROPE, v_head_dim=V_HEAD, head_dim=NOPE + ROPE,
        rope_interleave=True, attention_bias=False, pad_token_id=None,
        max_position_embeddings=1048576,
        rope_parameters={"rope_type": "yarn", "rope_theta": ROPE_THETA, "factor": 128.0,
                         "original_max_position_embeddings": 8192, "beta_fast": 32.0, "beta_slow": 1.0,
                         "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1},
        drop=("rope_theta", "rope_scaling")),
        "Mistral 4: MLA, YaRN + Llama-4 attention scaling, fused experts, correction bias, shared experts",
        fixes=("mla_kv_b",)),
    # arcee-ai/Trinity-Mini: router at mlp.router.gate, expert_bias, gated attention, sliding and
    # full layers, pre/post MLP norms, muP embedding scale (embeddings drawn at 1/sqrt(H))
    "afmoe": TinyArch(None, _release(
        architectures=["AfmoeForCausalLM"], model_type="afmoe", intermediate_size=I_DENSE, moe_intermediate_size=I_MOE,
        num_dense_layers=1, head_dim=HEAD_DIM, num_experts=E, num_experts_per_tok=TOP_K, num_shared_experts=1,
        route_norm=True, route_scale=2.826, score_func="sigmoid", n_group=1, topk_group=1,
        layer_types=["sliding_attention", "full_attention"], sliding_window=16, global_attn_every_n_layers=2,
        mup_enabled=True, attention_bias=False),
        "AFMoE (Trinity): mlp.router.gate, expert_bias, gated attention, muP",
        values=((r"embed_tokens\.weight$", 0.0, 1 / math.sqrt(H)),)),
    # LGAI-EXAONE/K-EXAONE: MoEGate with a bare weight (no to_quantized) and the correction bias
    # published at mlp.e_score_correction_bias; dense first layer; sliding and global layers
    "exaone_moe": TinyArch(None, _release(
        architectures=["ExaoneMoEForCausalLM"], model_type="exaone_moe", intermediate_size=I_DENSE,
        moe_intermediate_size=I_MOE, head_dim=HEAD_DIM, num_experts=E, num_experts_per_tok=TOP_K, num_shared_experts=1,
        is_moe_layer=[False, True], first_k_dense_replace=1, layer_types=["sliding_attention", "full_attention"],
        sliding_window=16, sliding_window_pattern=2, n_group=1, topk_group=1, routed_scaling_factor=2.5,
        norm_topk_prob=True, scoring_func="sigmoid", topk_method="noaux_tc"),
        "EXAONE-MoE: bare-weight MoEGate, mlp.e_score_correction_bias, sliding window",
        renames=((r"\.mlp\.gate\.e_score_correction_bias$", ".mlp.e_score_correction_bias"),)),
    # poolside Laguna (transformers 5 era): router at mlp.gate.weight, correction bias at
    # mlp.experts.e_score_correction_bias, per-head attention gate g_proj, per-layer-type rope
    "laguna": TinyArch(None, _release(
        architectures=["LagunaForCausalLM"], model_type="laguna", intermediate_size=I_DENSE,
        moe_intermediate_size=I_MOE, shared_expert_intermediate_size=I_MOE, head_dim=HEAD_DIM, num_experts=E,
        num_experts_per_tok=TOP_K,
        layer_types=["sliding_attention", "full_attention"], mlp_layer_types=["dense", "sparse"], sliding_window=16,
        gating=True, attention_bias=False, moe_routed_scaling_factor=1.0, moe_router_logit_softcapping=0.0,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": ROPE_THETA,
                                            "partial_rotary_factor": 0.5},
                         "sliding_attention": {"rope_type": "default", "rope_theta": ROPE_THETA}},
        drop=("rope_theta", "rope_scaling")),
        "Laguna: mlp.gate.weight, experts.e_score_correction_bias, gated attention",
        renames=((r"\.mlp\.gate\.proj\.weight$", ".mlp.gate.weight"),
                 (r"\.mlp\.gate\.e_score_correction_bias$", ".mlp.experts.e_score_correction_bias"))),
    # deepseek-ai/deepseek-moe-16b-base: dense first layer, shared experts, softmax router
    "deepseek": TinyArch(None, _release(
        architectures=["DeepseekForCausalLM"], model_type="deepseek", intermediate_size=I_DENSE,
        moe_intermediate_size=I_MOE, n_routed_experts=E, n_shared_experts=1, num_experts_per_tok=TOP_K,
        first_k_dense_replace=1, moe_layer_freq=1, norm_topk_prob=False, scoring_func="softmax", aux_loss_alpha=0.001,
        seq_aux=True, attention_bias=False, pretraining_tp=1),
        "DeepSeekMoE: dense first layer, shared experts"),
    # deepseek-ai/DeepSeek-V2-Lite: MLA without q_lora (q_proj), YaRN, greedy softmax routing
    "deepseek_v2": TinyArch(None, _release(
        architectures=["DeepseekV2ForCausalLM"], model_type="deepseek_v2", num_attention_heads=DS_HEADS,
        num_key_value_heads=DS_HEADS, intermediate_size=I_DENSE, moe_intermediate_size=I_MOE, n_routed_experts=E,
        n_shared_experts=1, num_experts_per_tok=TOP_K, first_k_dense_replace=1, moe_layer_freq=1, kv_lora_rank=KV_LORA,
        q_lora_rank=None, qk_rope_head_dim=ROPE, qk_nope_head_dim=NOPE, v_head_dim=V_HEAD, topk_method="greedy",
        n_group=1, topk_group=1, routed_scaling_factor=1.0, norm_topk_prob=False, scoring_func="softmax",
        aux_loss_alpha=0.001, seq_aux=True, attention_bias=False, max_position_embeddings=163840,
        rope_scaling={"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                      "original_max_position_embeddings": 4096, "type": "yarn"}),
        "DeepSeek-V2: MLA (kv_b_proj), YaRN, shared experts", fixes=("mla_kv_b",)),
    # moonshotai/Kimi-K2-Instruct: DeepSeek-V3's architecture (mlx-lm maps kimi_k2 to deepseek_v3)
    "kimi_k2": TinyArch(None, _release(
        architectures=["DeepseekV3ForCausalLM"], model_type="kimi_k2", num_attention_heads=DS_HEADS,
        num_key_value_heads=DS_HEADS, intermediate_size=I_DENSE, moe_intermediate_size=I_MOE, n_routed_experts=E,
        n_shared_experts=1, num_experts_per_tok=TOP_K, first_k_dense_replace=1, moe_layer_freq=1, n_group=1,
        topk_group=1, topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.827,
        q_lora_rank=Q_LORA, kv_lora_rank=KV_LORA, qk_nope_head_dim=NOPE, qk_rope_head_dim=ROPE, v_head_dim=V_HEAD,
        num_nextn_predict_layers=0, attention_bias=False, max_position_embeddings=131072,
        rope_scaling={"beta_fast": 1.0, "beta_slow": 1.0, "factor": 32.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                      "original_max_position_embeddings": 4096, "type": "yarn"}),
        "Kimi-K2: DeepSeek-V3 layout, YaRN", fixes=("mla_kv_b",)),
    # jdopensource/JoyAI-LLM-Flash: DeepSeek-V3's architecture under its own model_type (custom code,
    # configuration_deepseek.py; mlx-lm maps joyai_llm_flash to deepseek_v3), one dense first layer,
    # one shared expert, sigmoid noaux_tc routing, no rope scaling
    "joyai_llm_flash": TinyArch(None, _release(
        architectures=["DeepseekV3ForCausalLM"], model_type="joyai_llm_flash", num_attention_heads=DS_HEADS,
        num_key_value_heads=DS_HEADS, intermediate_size=I_DENSE, moe_intermediate_size=I_MOE, n_routed_experts=E,
        n_shared_experts=1, num_experts_per_tok=TOP_K, first_k_dense_replace=1, moe_layer_freq=1, n_group=1,
        topk_group=1, topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5,
        q_lora_rank=Q_LORA, kv_lora_rank=KV_LORA, qk_nope_head_dim=NOPE, qk_rope_head_dim=ROPE, v_head_dim=V_HEAD,
        num_nextn_predict_layers=0, attention_bias=False, max_position_embeddings=131072,
        auto_map={"AutoConfig": "configuration_deepseek.DeepseekV3Config",
                  "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM"}),
        "JoyAI-LLM-Flash: DeepSeek-V3 layout (MLA, dense first layer, shared expert, correction bias)",
        fixes=("mla_kv_b",)),
    # deepseek-ai/DeepSeek-V3.2-Exp: DeepSeek-V3 plus the sparse-attention indexer (self_attn.indexer.*)
    "deepseek_v32": TinyArch(None, _release(
        architectures=["DeepseekV32ForCausalLM"], model_type="deepseek_v32", num_attention_heads=DS_HEADS,
        num_key_value_heads=DS_HEADS, intermediate_size=I_DENSE, moe_intermediate_size=I_MOE, n_routed_experts=E,
        n_shared_experts=1, num_experts_per_tok=TOP_K, first_k_dense_replace=1, moe_layer_freq=1, n_group=2,
        topk_group=1, topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5,
        q_lora_rank=Q_LORA, kv_lora_rank=KV_LORA, qk_nope_head_dim=NOPE, qk_rope_head_dim=ROPE, v_head_dim=V_HEAD,
        index_head_dim=64, index_n_heads=2, index_topk=2048, num_nextn_predict_layers=0, attention_bias=False,
        max_position_embeddings=163840,
        rope_scaling={"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                      "original_max_position_embeddings": 4096, "type": "yarn"}),
        "DeepSeek-V3.2: MLA + lightning indexer, shared experts, e_score_correction_bias", fixes=("mla_kv_b",)),
    # zai-org/GLM-5: DeepSeek-V3.2's model (transformers 5 config: rope_parameters)
    "glm_moe_dsa": TinyArch(None, _release(
        architectures=["GlmMoeDsaForCausalLM"], model_type="glm_moe_dsa", num_attention_heads=DS_HEADS,
        num_key_value_heads=DS_HEADS, intermediate_size=I_DENSE, moe_intermediate_size=I_MOE, n_routed_experts=E,
        n_shared_experts=1, num_experts_per_tok=TOP_K, first_k_dense_replace=1, moe_layer_freq=1, n_group=1,
        topk_group=1, topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5,
        q_lora_rank=Q_LORA, kv_lora_rank=KV_LORA, qk_nope_head_dim=NOPE, qk_rope_head_dim=ROPE, v_head_dim=V_HEAD,
        index_head_dim=64, index_n_heads=2, index_topk=2048, attention_bias=False, indexer_rope_interleave=True,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA}, drop=("rope_theta", "rope_scaling")),
        "GLM-5: DeepSeek-V3.2's MLA + indexer in GLM's MoE", fixes=("mla_kv_b",)),
    # zai-org/GLM-4.7-Flash: MLA (q_lora, kv_b_proj) in GLM-4.5's MoE
    "glm4_moe_lite": TinyArch(None, _release(
        architectures=["Glm4MoeLiteForCausalLM"], model_type="glm4_moe_lite", num_attention_heads=DS_HEADS,
        num_key_value_heads=DS_HEADS, intermediate_size=I_DENSE, moe_intermediate_size=I_MOE, n_routed_experts=E,
        n_shared_experts=1, num_experts_per_tok=TOP_K, first_k_dense_replace=1, moe_layer_freq=1, n_group=1,
        topk_group=1, topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=1.8,
        q_lora_rank=Q_LORA, kv_lora_rank=KV_LORA, qk_nope_head_dim=NOPE, qk_rope_head_dim=ROPE, v_head_dim=V_HEAD,
        partial_rotary_factor=1.0, num_nextn_predict_layers=0, attention_bias=False, rope_interleave=True),
        "GLM-4.7-Flash: MLA, shared experts, e_score_correction_bias", fixes=("mla_kv_b",)),
    # upstage/Solar-Open-100B: GLM-4.5's MoE (mlx-lm reuses glm4_moe's model)
    "solar_open": TinyArch(None, _release(
        architectures=["SolarOpenForCausalLM"], model_type="solar_open", intermediate_size=I_DENSE,
        moe_intermediate_size=I_MOE, head_dim=HEAD_DIM, n_routed_experts=E, n_shared_experts=1,
        num_experts_per_tok=TOP_K, first_k_dense_replace=0, routed_scaling_factor=1.0, norm_topk_prob=True,
        partial_rotary_factor=1.0, n_group=1, topk_group=1, attention_bias=False, use_qk_norm=False),
        "Solar Open: GLM-4.5-style MoE in every layer, shared experts"),
    # google/gemma-4-26B-A4B-it (text weights; mlx-lm drops the vision tower): language model under
    # model.language_model.*, a dense MLP beside the MoE block in every layer, fused experts
    # (experts.gate_up_proj [E, 2I, H]), router.{proj, scale, per_expert_scale} beside them; sliding
    # and full layers (full: global_head_dim, k = v, proportional rope), layer_scalar, tied, softcap
    "gemma4": TinyArch(None, lambda style: {
        "architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4", "tie_word_embeddings": True,
        "vocab_size": V, "boi_token_id": 255999, "eoi_token_id": 258882, "image_token_id": 258880,
        "text_config": _gemma4_text()},
        "Gemma 4 (MoE): fused experts beside a dense MLP, router.proj beside the experts block, k = v "
        "full layers, layer_scalar, tied",
        renames=((r"^language_model\.model\.", "model.language_model."),),
        values=_TIED + ((r"router\.(scale|per_expert_scale)$|layer_scalar$", 1.0, 0.1),)),
    # a text-only Gemma 4 MoE (transformers' Gemma4ForCausalLM, model_type gemma4_text): the same
    # layers under model.* (what mlx-lm's gemma4 hands its language model)
    "gemma4_text": TinyArch(None, lambda style: {**_gemma4_text(), "architectures": ["Gemma4ForCausalLM"]},
        "Gemma 4 text-only (MoE): as gemma4, under model.*",
        values=_TIED + ((r"router\.(scale|per_expert_scale)$|layer_scalar$", 1.0, 0.1),)),
    # moonshotai/Kimi-Linear-48B-A3B-Instruct: Kimi Delta Attention layers (q/k/v_conv1d [C, 1, K],
    # f_a/f_b/g_a/g_b/b_proj, A_log, dt_bias, o_norm) and MLA layers without q_lora and without rope
    # (mla_use_nope), 1-based layer lists in linear_attn_config; MoE under block_sparse_moe (w1/w2/w3,
    # gate + e_score_correction_bias, shared_experts), dense first layer
    "kimi_linear": TinyArch(None, _release(
        architectures=["KimiLinearForCausalLM"], model_type="kimi_linear", num_attention_heads=DS_HEADS,
        num_key_value_heads=DS_HEADS, intermediate_size=I_DENSE, moe_intermediate_size=I_MOE, num_experts=E,
        num_experts_per_token=TOP_K, num_shared_experts=1, first_k_dense_replace=1, moe_layer_freq=1,
        head_dim=HEAD_DIM, kv_lora_rank=KV_LORA, q_lora_rank=None, qk_nope_head_dim=NOPE, qk_rope_head_dim=ROPE,
        v_head_dim=V_HEAD, mla_use_nope=True, moe_renormalize=True, moe_router_activation_func="sigmoid",
        routed_scaling_factor=2.446, use_grouped_topk=True, num_expert_group=1, topk_group=1,
        model_max_length=1048576, num_nextn_predict_layers=0, rms_norm_eps=1e-5, pad_token_id=None,
        linear_attn_config={"full_attn_layers": [2], "kda_layers": [1], "head_dim": 32, "num_heads": 4,
                            "short_conv_kernel_size": 4},
        drop=("max_position_embeddings",)),
        "Kimi-Linear: KDA + NoPE MLA layers, block_sparse_moe w1/w2/w3, correction bias, shared experts",
        fixes=("mla_kv_b", "conv1d_channels_first"),
        renames=((r"\.mlp\.gate\.weight$", ".block_sparse_moe.gate.weight"),
                 (r"\.mlp\.e_score_correction_bias$", ".block_sparse_moe.gate.e_score_correction_bias"),
                 (r"\.mlp\.shared_experts\.", ".block_sparse_moe.shared_experts."),
                 (r"\.self_attn\.([qkv])_conv\.conv\.weight$", r".self_attn.\1_conv1d.weight"))),
    # meta-llama/Llama-4-Scout-17B-16E-Instruct (text weights; mlx-lm drops the vision tower):
    # language_model.model.layers.{l}.feed_forward.experts.gate_up_proj [E, H, 2I] (in x out) and
    # down_proj [E, I, H], feed_forward.router, shared_expert; MoE every interleave_moe_layer_step;
    # 4 layers, since mlx-lm's llama4 takes every fourth layer's cache for global (NoPE) attention
    "llama4": TinyArch(None, lambda style: {
        "architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4", "tie_word_embeddings": False,
        "boi_token_index": 200080, "eoi_token_index": 200081, "image_token_index": 200092,
        "text_config": {**_release(drop=("architectures",))(style), "model_type": "llama4_text",
                        "intermediate_size": I_MOE, "intermediate_size_mlp": I_DENSE, "head_dim": HEAD_DIM,
                        "num_local_experts": E, "num_experts_per_tok": 1, "interleave_moe_layer_step": 2,
                        "num_hidden_layers": 4, "moe_layers": [1, 3], "no_rope_layers": [1, 1, 1, 0],
                        "attention_chunk_size": 8192,
                        "attn_temperature_tuning": True, "floor_scale": 8192, "attn_scale": 0.1, "use_qk_norm": True,
                        "attention_bias": False, "router_aux_loss_coef": 0.001, "router_jitter_noise": 0.0,
                        "output_router_logits": False, "rms_norm_eps": 1e-5,
                        "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                         "original_max_position_embeddings": 8192, "rope_type": "llama3"}}},
        "Llama-4: fused transposed experts (gate_up_proj [E, H, 2I]), router, shared expert, "
        "dense and MoE layers"),
    # ibm-granite/granite-4.0-h-tiny: Mamba-2 and attention (NoPE) layers, GraniteMoE's fused experts
    # and router.layer, plus a fused shared_mlp.input_linear; tied embeddings, muP multipliers
    "granitemoehybrid": TinyArch(None, _release(
        architectures=["GraniteMoeHybridForCausalLM"], model_type="granitemoehybrid", intermediate_size=I_MOE,
        num_local_experts=E, num_experts_per_tok=TOP_K, shared_intermediate_size=I_DENSE, attention_bias=False,
        attention_multiplier=1 / HEAD_DIM, embedding_multiplier=2.0, residual_multiplier=0.5, logits_scaling=1.25,
        layer_types=["mamba", "attention"], mamba_n_heads=8, mamba_d_head=32, mamba_d_state=16, mamba_d_conv=4,
        mamba_n_groups=1, mamba_expand=2, mamba_chunk_size=256, mamba_conv_bias=True, mamba_proj_bias=False,
        position_embedding_type="nope", normalization_function="rmsnorm", init_method="mup",
        tie_word_embeddings=True, output_router_logits=False, router_aux_loss_coef=0.0),
        "Granite-4.0-H: Mamba-2 + attention, fused input_linear experts, shared_mlp, router.layer",
        fixes=("conv1d_channels_first",), values=_TIED),
    # Qwen/Qwen3-Next-80B-A3B-Instruct: Gated DeltaNet (linear_attn, conv1d [C, 1, K]) and full
    # attention layers, shared expert + shared_expert_gate; its RMSNorms store w for a (1 + w) scale
    # (mlx-lm's sanitize adds the 1), so they are drawn near 0
    "qwen3_next": TinyArch(None, _release(
        architectures=["Qwen3NextForCausalLM"], model_type="qwen3_next", intermediate_size=I_DENSE,
        moe_intermediate_size=I_MOE, shared_expert_intermediate_size=I_MOE, num_experts=E, num_experts_per_tok=TOP_K,
        decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True, head_dim=HEAD_DIM, partial_rotary_factor=0.25,
        full_attention_interval=2, linear_conv_kernel_dim=4, linear_key_head_dim=32, linear_num_key_heads=2,
        linear_num_value_heads=4, linear_value_head_dim=32, attention_bias=False, output_router_logits=False,
        router_aux_loss_coef=0.001, use_sliding_window=False),
        "Qwen3-Next: Gated DeltaNet + attention, shared expert gate, (1 + w) norms",
        fixes=("conv1d_channels_first",), values=_ZERO_CENTERED_NORMS),
    # Qwen/Qwen3.5-35B-A3B (text weights; mlx-lm drops model.visual): a VLM config with the language
    # model under text_config, tensors under model.language_model, fused experts
    # mlp.experts.gate_up_proj [E, 2I, H] + down_proj; Gated DeltaNet with split in_proj_qkv/z/b/a
    "qwen3_5_moe": TinyArch(None, lambda style: {
        "architectures": ["Qwen3_5MoeForConditionalGeneration"], "model_type": "qwen3_5_moe",
        "tie_word_embeddings": False, "image_token_id": 248056, "video_token_id": 248057,
        "vision_start_token_id": 248053, "vision_end_token_id": 248054,
        "text_config": {**_release(drop=("architectures", "rope_theta", "rope_scaling"))(style),
                        "model_type": "qwen3_5_moe_text", "moe_intermediate_size": I_MOE,
                        "shared_expert_intermediate_size": I_MOE, "num_experts": E, "num_experts_per_tok": TOP_K,
                        "decoder_sparse_step": 1, "norm_topk_prob": True, "head_dim": HEAD_DIM,
                        "full_attention_interval": 2, "layer_types": ["linear_attention", "full_attention"],
                        "linear_conv_kernel_dim": 4, "linear_key_head_dim": 32, "linear_num_key_heads": 2,
                        "linear_num_value_heads": 4, "linear_value_head_dim": 32, "attention_bias": False,
                        "attn_output_gate": True, "output_router_logits": False, "router_aux_loss_coef": 0.001,
                        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA,
                                            "partial_rotary_factor": 0.25, "mrope_section": [2, 1, 1],
                                            "mrope_interleaved": True}}},
        "Qwen3.5-MoE: fused experts under model.language_model, Gated DeltaNet, (1 + w) norms",
        renames=((r"^language_model\.model\.", "model.language_model."), (r"^language_model\.lm_head\.", "lm_head.")),
        fixes=("conv1d_channels_first",), values=_ZERO_CENTERED_NORMS),
    # Qwen/Qwen3-VL-30B-A3B-Instruct (text weights; mlx-lm drops model.visual): experts fused and
    # stored in x out, gate_up_proj [E, H, 2I] (gate columns first) and down_proj [E, I, H]
    "qwen3_vl_moe": TinyArch(None, lambda style: {
        "architectures": ["Qwen3VLMoeForConditionalGeneration"], "model_type": "qwen3_vl_moe",
        "tie_word_embeddings": False, "image_token_id": 151655, "video_token_id": 151656,
        "vision_start_token_id": 151652, "vision_end_token_id": 151653,
        "text_config": {**_release(drop=("architectures",))(style), "model_type": "qwen3_vl_moe_text",
                        "intermediate_size": I_DENSE, "moe_intermediate_size": I_MOE, "num_experts": E,
                        "num_experts_per_tok": TOP_K, "decoder_sparse_step": 1, "mlp_only_layers": [],
                        "norm_topk_prob": True, "head_dim": HEAD_DIM, "attention_bias": False,
                        "rope_scaling": {"rope_type": "default", "mrope_section": [6, 5, 5],
                                         "mrope_interleaved": True}}},
        "Qwen3-VL-MoE: fused in x out experts under model.language_model",
        renames=((r"^language_model\.model\.", "model.language_model."), (r"^language_model\.lm_head\.", "lm_head."))),
    # MiniMaxAI/MiniMax-M3 (config.json as published: text_config with moe_layer_freq and the nested
    # sparse_attention_config, which transformers 5 re-saves flat): a dense first layer, then MoE with a shared
    # expert and sigmoid routing + e_score_correction_bias; sparse (indexer) attention on the second layer;
    # Gemma-style (1 + w) norms. mlx-lm runs the language model only, so the release here has no vision tower.
    "minimax_m3_vl": TinyArch(None, lambda style: {
        "architectures": ["MiniMaxM3VLForConditionalGeneration"], "model_type": "minimax_m3_vl",
        "tie_word_embeddings": False, "image_token_index": V - 2, "video_token_index": V - 1,
        "text_config": {**_release(drop=("architectures", "rope_scaling"))(style), "model_type": "minimax_m3_vl_text",
                        "intermediate_size": I_MOE, "dense_intermediate_size": I_DENSE,
                        "shared_intermediate_size": I_MOE, "num_local_experts": E, "num_experts_per_tok": TOP_K,
                        "head_dim": HEAD_DIM, "rotary_dim": HEAD_DIM // 2, "partial_rotary_factor": 0.5,
                        "routed_scaling_factor": 2.0,
                        "swiglu_alpha": 1.702, "swiglu_limit": 7.0, "use_qk_norm": True, "use_gemma_norm": True,
                        "hidden_act": "swigluoai", "moe_layer_freq": [0, 1],
                        "sparse_attention_config": {"sparse_num_index_heads": 2, "sparse_index_dim": HEAD_DIM,
                                                    "sparse_block_size": 8, "sparse_topk_blocks": 2,
                                                    "sparse_local_block": 1, "sparse_attention_freq": [0, 1]}}},
        "MiniMax-M3 language model: block_sparse_moe.experts.{e}.w1/w2/w3, shared experts, dense first layer, "
        "indexer sparse attention, (1 + w) norms",
        values=((r"(layernorm|_norm|\.norm)\.weight$", 0.0, 0.1),)),
    # LiquidAI/LFM2-8B-A1B: short-conv and attention layers, feed_forward.w1/w2/w3 (dense and
    # per-expert), expert_bias, embedding_norm as the final norm, tied embeddings
    "lfm2_moe": TinyArch(None, _release(
        architectures=["Lfm2MoeForCausalLM"], model_type="lfm2_moe", intermediate_size=I_DENSE,
        moe_intermediate_size=I_MOE, num_experts=E, num_experts_per_tok=TOP_K, norm_topk_prob=True,
        use_expert_bias=True,
        num_dense_layers=1, routed_scaling_factor=1.0, norm_eps=1e-5, conv_bias=False, conv_L_cache=3,
        layer_types=["conv", "full_attention"], tie_word_embeddings=True, drop=("rms_norm_eps",)),
        "LFM2-MoE: short conv + attention, feed_forward.experts.{e}.w1/w2/w3, expert_bias",
        renames=((r"\.feed_forward\.gate_proj\.", ".feed_forward.w1."),
                 (r"\.feed_forward\.down_proj\.", ".feed_forward.w2."),
                 (r"\.feed_forward\.up_proj\.", ".feed_forward.w3.")),
        fixes=("conv1d_channels_first",), values=_TIED),
    # ai21labs/AI21-Jamba-Mini-1.5: Mamba and attention layers, MoE every expert_layer_period
    # (feed_forward.router, feed_forward.experts.{e}.*)
    "jamba": TinyArch(None, _release(
        architectures=["JambaForCausalLM"], model_type="jamba", intermediate_size=I_MOE, num_experts=E,
        num_experts_per_tok=TOP_K, attn_layer_offset=1, attn_layer_period=2, expert_layer_offset=1,
        expert_layer_period=2, mamba_d_conv=4, mamba_d_state=16, mamba_dt_rank="auto", mamba_expand=2,
        mamba_conv_bias=True, mamba_proj_bias=False, use_mamba_kernels=False, router_aux_loss_coef=0.001,
        output_router_logits=False, drop=("rope_theta", "rope_scaling")),
        "Jamba: Mamba + attention, feed_forward.router, experts every other layer",
        fixes=("conv1d_channels_first",)),
    # nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B: Mamba-2 (M), attention (*) and MoE (E) blocks under
    # backbone.layers.{l}.mixer; non-gated relu² experts mixer.experts.{e}.up_proj/down_proj; the
    # router is MoEGate, a bare weight with no to_quantized
    "nemotron_h": TinyArch(None, _release(
        architectures=["NemotronHForCausalLM"], model_type="nemotron_h", hybrid_override_pattern="MEM*E",
        num_hidden_layers=5, intermediate_size=I_DENSE, head_dim=HEAD_DIM, mamba_num_heads=4, mamba_head_dim=32,
        mamba_proj_bias=False, ssm_state_size=16, conv_kernel=4, n_groups=2, chunk_size=128, mlp_bias=False,
        mlp_hidden_act="relu2", layer_norm_epsilon=1e-5, use_bias=False, use_conv_bias=True, attention_bias=False,
        n_routed_experts=E, n_shared_experts=1, moe_intermediate_size=I_MOE, moe_shared_expert_intermediate_size=I_MOE,
        num_experts_per_tok=TOP_K, n_group=1, topk_group=1, norm_topk_prob=True, routed_scaling_factor=2.5,
        time_step_limit=[0.0, 1e9], time_step_min=0.001, time_step_max=0.1, residual_in_fp32=False,
        drop=("rope_theta", "rope_scaling", "rms_norm_eps", "hidden_act")),
        "Nemotron-H: Mamba-2 + attention + MoE blocks, bare-weight MoEGate, relu² experts",
        fixes=("conv1d_channels_first",), values=((r"embeddings\.weight$", 0.0, 1.0),)),
    # openai/gpt-oss-20b: fused experts with gate and up rows interleaved, stored MXFP4
    # (gate_up_proj_blocks/_scales, down_proj_blocks/_scales) with bf16 fused biases; router with a
    # bias; attention sinks; sliding and full layers; YaRN
    "gpt_oss": TinyArch(None, _release(
        architectures=["GptOssForCausalLM"], model_type="gpt_oss", intermediate_size=I_MOE, num_local_experts=E,
        num_experts_per_tok=TOP_K, experts_per_token=TOP_K, head_dim=HEAD_DIM, attention_bias=True,
        layer_types=["sliding_attention", "full_attention"], sliding_window=16, swiglu_limit=7.0,
        initial_context_length=4096, router_aux_loss_coef=0.9, output_router_logits=False, rms_norm_eps=1e-5,
        rope_theta=150000.0, max_position_embeddings=131072,
        rope_scaling={"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0, "original_max_position_embeddings": 4096,
                      "rope_type": "yarn", "truncate": False}),
        "gpt-oss: MXFP4 fused experts (gate/up rows interleaved) with biases, router bias, sinks",
        pack="gpt_oss_mxfp4"),
    # databricks/dbrx-instruct: GPT-style names (d_model, n_heads, n_layers), attention and MoE settings in
    # attn_config / ffn_config, experts fused as ffn.experts.mlp.w1/v1/w2 [E·I, H], LayerNorms without bias
    "dbrx": TinyArch(None, lambda style: {
        "architectures": ["DbrxForCausalLM"], "model_type": "dbrx", "d_model": H, "n_heads": HEADS, "n_layers": LAYERS,
        "vocab_size": V, "max_seq_len": 1024, "emb_pdrop": 0.0, "resid_pdrop": 0.0, "initializer_range": 0.02,
        "output_router_logits": False, "router_aux_loss_coef": 0.05, "tie_word_embeddings": False, "use_cache": True,
        "attn_config": {"clip_qkv": 8, "kv_n_heads": KV_HEADS, "model_type": "", "rope_theta": ROPE_THETA},
        "ffn_config": {"ffn_hidden_size": I_MOE, "model_type": "", "moe_jitter_eps": 0, "moe_loss_weight": 0.05,
                       "moe_num_experts": E, "moe_top_k": TOP_K}},
        "DBRX: fused ffn.experts.mlp.w1/v1/w2 split per expert, router.layer, clip_qkv",
        fixes=("dbrx_fused_experts",)),
}

ALL_ARCHS: dict[str, TinyArch] = {**ARCHS, **GENERATED}


# ---- Vision-language releases whole (write_tiny_checkpoint(..., vision=True)): tensors derived from
# mlx-vlm's model (vision tower and projector included) with its sanitize undone, config.json with
# text_config and vision_config, and the processor files mlx_vlm.load reads.

_VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")  # ids V, V+1, …
V_VLM = V + 8  # byte vocabulary + the vision tokens, padded


def _vision_tokenizer() -> dict:
    """The byte tokenizer plus Qwen-VL's vision tokens as added special tokens (ids from V)."""
    tokenizer = byte_tokenizer()
    tokenizer["added_tokens"] = [{"id": V + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                                  "normalized": False, "special": True} for i, t in enumerate(_VISION_TOKENS)]
    return tokenizer


_CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
                  "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}"
                  "<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}{{ part['text'] }}"
                  "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
                  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _qwen_vl_files() -> dict[str, dict]:
    """Qwen3-VL's processor files (Qwen/Qwen3-VL-30B-A3B-Instruct), at a tiny image size: patch 16,
    2x2 merge, images of 32x32 to 64x64 pixels."""
    image = {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5],
             "image_std": [0.5, 0.5, 0.5], "size": {"shortest_edge": 32 * 32, "longest_edge": 64 * 64},
             "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
             "do_convert_rgb": True}
    return {
        "tokenizer.json": _vision_tokenizer(),
        "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1024,
                                  "processor_class": "Qwen3VLProcessor"},
        "preprocessor_config.json": {**image, "image_processor_type": "Qwen2VLImageProcessorFast",
                                     "processor_class": "Qwen3VLProcessor"},
        "video_preprocessor_config.json": {**image, "video_processor_type": "Qwen3VLVideoProcessor",
                                           "processor_class": "Qwen3VLProcessor", "fps": 2, "do_sample_frames": True},
        "chat_template.json": {"chat_template": _CHAT_TEMPLATE},
    }


def _llama4_files() -> dict[str, dict]:
    """The byte tokenizer with Llama-4's image token (<|image|>, id V + 2); no image processor files
    (the smoke test feeds pixel values [1, 3, 64, 64] itself)."""
    tokenizer = byte_tokenizer()
    tokenizer["added_tokens"] = [{"id": V + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                                  "normalized": False, "special": True}
                                 for i, t in enumerate(("<|image_start|>", "<|image_end|>", "<|image|>"))]
    return {"tokenizer.json": tokenizer}


def _kimi_vl_files() -> dict[str, dict]:
    """The byte tokenizer with Kimi-VL's media tokens (<|media_start|>, <|media_end|>, <|media_pad|> from id V);
    no image processor files (the smoke test feeds patches itself)."""
    tokenizer = byte_tokenizer()
    tokenizer["added_tokens"] = [{"id": V + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                                  "normalized": False, "special": True}
                                 for i, t in enumerate(("<|media_start|>", "<|media_end|>", "<|media_pad|>"))]
    return {"tokenizer.json": tokenizer}


_GLM_VISION_TOKENS = ("<|begin_of_image|>", "<|end_of_image|>", "<|image|>", "<|video|>")  # ids V, V+1, …


def _glm4v_files() -> dict[str, dict]:
    """The byte tokenizer with GLM-4.5V's image tokens (from id V) and its image processor's settings at a
    tiny size (patch 14, 2x2 merge); the smoke test feeds patches [16, 3·2·14·14] and image_grid_thw itself."""
    tokenizer = byte_tokenizer()
    tokenizer["added_tokens"] = [{"id": V + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                                  "normalized": False, "special": True} for i, t in enumerate(_GLM_VISION_TOKENS)]
    image = {"size": {"shortest_edge": 28 * 28, "longest_edge": 56 * 56}, "do_rescale": True, "patch_size": 14,
             "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
             "image_std": [0.26862954, 0.26130258, 0.27577711], "image_processor_type": "Glm4vImageProcessor",
             "processor_class": "Glm4vProcessor"}
    return {"tokenizer.json": tokenizer, "preprocessor_config.json": image}


# GLM-V releases' config.json: the ids of the tokens around and in images and videos (ids V to V + 3 are
# _GLM_VISION_TOKENS' in the tokenizer)
_GLM_VISION_TOKEN_IDS = {"image_token_id": V + 2, "video_token_id": V + 3, "image_start_token_id": V,
                         "image_end_token_id": V + 1, "video_start_token_id": V + 4, "video_end_token_id": V + 5}
_MINIMAX_VISION_TOKENS = ("]<]start of image[>[", "]<]end of image[>[", "]<]image[>[", "]<]video[>[")  # ids V, V+1, …


def _minimax_m3_files() -> dict[str, dict]:
    """The byte tokenizer with MiniMax-M3's image tokens (from id V; mlx-vlm's MiniMaxM3VLProcessor looks them
    up by name) and its image processor's settings at a tiny size (patch 14, 2x2 merge); the smoke test feeds
    patches [16, 3·2·14·14] and image_grid_thw itself."""
    tokenizer = byte_tokenizer()
    tokenizer["added_tokens"] = [{"id": V + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                                  "normalized": False, "special": True} for i, t in enumerate(_MINIMAX_VISION_TOKENS)]
    image = {"patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, "min_pixels": 28 * 28,
             "max_pixels": 56 * 56, "processor_class": "MiniMaxM3VLProcessor"}
    return {"tokenizer.json": tokenizer, "preprocessor_config.json": image}
# thinkingmachines/Inkling's media tokens, ids V.. (its image and audio placeholders are unused_* tokens of its
# vocabulary)
_INKLING_TOKENS = ("<|content_image|>", "<|content_image_end|>", "<|unused_200054|>", "<|unused_200053|>",
                   "<|content_audio_input|>")


def _inkling_files() -> dict[str, dict]:
    """The byte tokenizer with Inkling's media tokens (from id V: image start, image end, image, audio, audio
    start) and processor_config.json naming them as the release's does (mlx-vlm's InklingProcessor reads it);
    the image processor is mlx-vlm's own (40x40 patches), so the test feeds patches itself."""
    tokenizer = byte_tokenizer()
    tokenizer["added_tokens"] = [{"id": V + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                                  "normalized": False, "special": True} for i, t in enumerate(_INKLING_TOKENS)]
    processor = {"processor_class": "InklingProcessor", "image_bos_token": _INKLING_TOKENS[0],
                 "image_token": _INKLING_TOKENS[2], "audio_token": _INKLING_TOKENS[3],
                 "audio_bos_token": _INKLING_TOKENS[4]}
    return {"tokenizer.json": tokenizer, "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast",
                                                                   "model_max_length": 1024},
            "processor_config.json": processor}


# stepfun-ai/Step-3.7-Flash's image tokens, ids V.. (mlx-vlm's Step3VLProcessor looks each up by name)
_STEP_VISION_TOKENS = ("<im_start>", "<im_end>", "<im_patch>", "<patch_start>", "<patch_end>", "<patch_newline>")


def _step3p7_files() -> dict[str, dict]:
    """The byte tokenizer with Step-3.7's image tokens (from id V: <im_patch> is V + 2); mlx-vlm's
    Step3VLProcessor has its own image settings (728-pixel views), so the test feeds pixels itself."""
    tokenizer = byte_tokenizer()
    tokenizer["added_tokens"] = [{"id": V + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                                  "normalized": False, "special": True} for i, t in enumerate(_STEP_VISION_TOKENS)]
    return {"tokenizer.json": tokenizer, "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast",
                                                                   "model_max_length": 1024}}


def _ernie_vl_files() -> dict[str, bytes]:
    """A byte-fallback SentencePiece model (tokenizer.model: <unk>, <s>, </s>, then the 256 bytes): mlx-vlm's
    Ernie4_5_VLProcessor loads ERNIE-4.5-VL's SentencePiece tokenizer; the smoke test feeds token ids itself."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = pb.ModelProto()
    model.trainer_spec.model_type = pb.TrainerSpec.BPE
    model.trainer_spec.byte_fallback = True
    model.normalizer_spec.name, model.normalizer_spec.add_dummy_prefix = "identity", False
    kinds = pb.ModelProto.SentencePiece
    for piece, kind in [("<unk>", kinds.UNKNOWN), ("<s>", kinds.CONTROL), ("</s>", kinds.CONTROL)] + [
            (f"<0x{b:02X}>", kinds.BYTE) for b in range(256)]:
        model.pieces.add(piece=piece, score=0.0, type=kind)
    return {"tokenizer.model": model.SerializeToString()}


def _ernie_vl_experts(shapes: Tensors, config: dict) -> Tensors:
    """ERNIE-4.5-VL's release: both expert sets numbered one after another (mlx-vlm's switch_mlp_1 holds experts
    E..2E-1), the routers stored [H, E] as mlp.gate.weight / mlp.gate.weight_1, both correction biases in one
    mlp.moe_statics.e_score_correction_bias [2, E]."""
    out = {}
    for key, shape in shapes.items():
        if m := re.match(r"^(?P<mlp>.+\.mlp)\.switch_mlp_1\.(?P<proj>\w+)\.weight$", key):
            n = shapes[f"{m['mlp']}.switch_mlp.{m['proj']}.weight"][0]
            out.update((f"{m['mlp']}.experts.{n + e}.{m['proj']}.weight", shape[1:]) for e in range(shape[0]))
        elif m := re.match(r"^(?P<mlp>.+\.mlp)\.gate(?P<one>_1)?\.weight$", key):
            out[f"{m['mlp']}.gate.weight{m['one'] or ''}"] = shape[::-1]
        elif m := re.match(r"^(?P<mlp>.+\.mlp)\.e_score_correction_bias$", key):
            out[f"{m['mlp']}.moe_statics.e_score_correction_bias"] = (2, *shape)
        elif not key.endswith(".e_score_correction_bias_1"):
            out[key] = shape
    return out


SHAPE_FIXES["ernie_vl_experts"] = _ernie_vl_experts


def _ernie4_5_moe_vl(style: str) -> dict:
    """baidu/ERNIE-4.5-VL-28B-A3B-PT's config.json at tiny dims: the language model's keys at the root (its
    flat layout: two expert sets, text and multimodal, with their own intermediate sizes; a dense first layer;
    shared experts), the resampler's sizes and the DFNRope tower's vision_config. mrope_section (h, w, t) at
    head_dim 32: the release states only freq_allocation (its t share), mlx-vlm's default sections fit head_dim
    128."""
    return {**_release(drop=("rope_scaling",))(style), "architectures": ["Ernie4_5_VLMoeForConditionalGeneration"],
            "model_type": "ernie4_5_moe_vl", "vocab_size": V_VLM, "intermediate_size": I_DENSE, "head_dim": HEAD_DIM,
            "tie_word_embeddings": True, "use_bias": False, "rms_norm_eps": 1e-5, "moe_num_experts": [E, E],
            "moe_intermediate_size": [2 * I_MOE, I_MOE], "moe_k": TOP_K, "moe_num_shared_experts": 1,
            "moe_layer_start_index": 1, "moe_layer_end_index": LAYERS - 1, "moe_layer_interval": 1,
            "moe_use_aux_free": True, "rope_3d": True, "freq_allocation": 4, "mrope_section": [6, 6, 4],
            **_GLM_VISION_TOKEN_IDS, "im_patch_id": V + 2, "pixel_hidden_size": 64, "spatial_conv_size": 2,
            "temporal_conv_size": 2, "use_temporal_conv": True,
            "vision_config": {"depth": 2, "embed_dim": 64, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2.0,
                              "hidden_act": "quick_gelu", "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2,
                              "layer_norm_eps": 1e-6}}


def _glm4v_moe(style: str) -> dict:
    """zai-org/GLM-4.5V's config.json at tiny dims: GLM-4.5-Air's MoE (partial rotary with mrope sections,
    attention bias, dense first layer, shared experts, correction bias) and GLM's ViT."""
    text = {**_release(drop=("architectures", "rope_theta", "rope_scaling"))(style), "model_type": "glm4v_moe_text",
            "vocab_size": V_VLM, "intermediate_size": I_DENSE, "moe_intermediate_size": I_MOE, "head_dim": HEAD_DIM,
            "partial_rotary_factor": 0.5, "attention_bias": True, "first_k_dense_replace": 1, "n_routed_experts": E,
            "n_shared_experts": 1, "num_experts_per_tok": TOP_K, "norm_topk_prob": True, "routed_scaling_factor": 1.0,
            "n_group": 1, "topk_group": 1, "use_qk_norm": False, "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA, "mrope_section": [2, 3, 3],
                                "partial_rotary_factor": 0.5}}
    return {"architectures": ["Glm4vMoeForConditionalGeneration"], "model_type": "glm4v_moe", "text_config": text,
            **_GLM_VISION_TOKEN_IDS, "tie_word_embeddings": False,
            "vision_config": {"model_type": "glm4v_moe", "depth": 2, "hidden_size": 64, "intermediate_size": 128,
                              "num_heads": 2, "patch_size": 14, "image_size": 56, "out_hidden_size": H,
                              "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3,
                              "rms_norm_eps": 1e-5, "hidden_act": "silu", "attention_bias": False,
                              "initializer_range": 0.02}}


def _qwen4_exp(style: str) -> dict:
    """Qwen/Qwen4-Exp's config.json at tiny dims: Gated DeltaNet then QSA-indexed gated attention (its indexer
    keeps 8 of a longer prompt's tokens, blocks of 4), two hyper-connection streams, a shared expert gate, and
    Qwen3-VL's vision tower without deepstack; no per-layer n-gram embeddings (their hashed tables' sizes are
    computed, not drawn)."""
    text = {**_release(drop=("architectures", "rope_theta", "rope_scaling"))(style), "model_type": "qwen4_exp_text",
            "vocab_size": V_VLM, "moe_intermediate_size": I_MOE, "shared_expert_intermediate_size": I_MOE,
            "num_experts": E, "num_experts_per_tok": TOP_K, "norm_topk_prob": True, "head_dim": HEAD_DIM,
            "layer_types": ["linear_attention", "full_attention"], "linear_conv_kernel_dim": 4,
            "linear_key_head_dim": 32, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
            "linear_value_head_dim": 32, "attention_bias": False, "hc_count": 2, "hc_lowrank": 64,
            "ple_layer_ids": [], "indexer_n_heads": 8, "indexer_kv_heads": 1, "indexer_head_dim": 32,
            "indexer_budget": 8, "indexer_compress_ratio": 4, "output_gate_type": "silu",
            "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA, "partial_rotary_factor": 0.25,
                                "mrope_section": [2, 1, 1], "mrope_interleaved": True}}
    return {"architectures": ["Qwen4ExpForConditionalGeneration"], "model_type": "qwen4_exp", "text_config": text,
            "image_token_id": V + 2, "video_token_id": V + 3, "vision_start_token_id": V, "vision_end_token_id": V + 1,
            "tie_word_embeddings": False,
            "vision_config": {"model_type": "qwen4_exp_vision", "depth": 2, "hidden_size": 64, "intermediate_size": 128,
                              "num_heads": 2, "out_hidden_size": H, "patch_size": 16, "spatial_merge_size": 2,
                              "temporal_patch_size": 2, "in_channels": 3, "num_position_embeddings": 64,
                              "hidden_act": "gelu_pytorch_tanh", "initializer_range": 0.02}}

def _glm5_next_fused(shapes: Tensors, config: dict) -> Tensors:
    """GLM-5-Next's projections that mlx-vlm's sanitize concatenates (dense and shared-expert gate_up_proj; KDA's
    qkv_proj, fbg_a_proj and qkv_conv; MLA's qkv_a_proj), split back into the release's, its convolutions
    channels first, and its hyper-connection parameters under their published names (hc_attn_fn, ...)."""
    text = config["text_config"]
    head_dim, heads, q_lora = text["linear_head_dim"], text["linear_num_heads"], text["q_lora_rank"]
    out: Tensors = {}
    for key, shape in shapes.items():
        stem = key.rsplit(".", 2)[0] if key.endswith(".conv.weight") else key.rsplit(".", 1)[0]
        parent = stem.rsplit(".", 1)[0]
        if key.endswith(".gate_up_proj.weight"):
            parts = {f"{parent}.gate_proj.weight": shape[0] // 2, f"{parent}.up_proj.weight": shape[0] // 2}
        elif key.endswith(".qkv_proj.weight"):
            parts = {f"{parent}.{p}_proj.weight": shape[0] // 3 for p in "qkv"}
        elif key.endswith(".fbg_a_proj.weight"):
            parts = {f"{parent}.f_a_proj.weight": head_dim, f"{parent}.b_proj.weight": heads,
                     f"{parent}.g_a_proj.weight": head_dim}
        elif key.endswith(".qkv_a_proj.weight"):
            parts = {f"{parent}.q_a_proj.weight": q_lora, f"{parent}.kv_a_proj_with_mqa.weight": shape[0] - q_lora}
        elif key.endswith(".qkv_conv.conv.weight"):
            out.update({f"{parent}.{p}_conv1d.weight": (shape[0] // 3, shape[2], shape[1]) for p in "qkv"})
            continue
        else:
            out[re.sub(r"\.(attn|ffn)_hc\.(fn|base|scale)$", r".hc_\1_\2", key)] = shape
            continue
        out.update({k: (rows, *shape[1:]) for k, rows in parts.items()})
    return out


SHAPE_FIXES["glm5_next_fused"] = _glm5_next_fused


def _glm5_next(style: str) -> dict:
    """zai-org/GLM-5.3-Flash's config.json at tiny dims: KDA linear attention then MLA (NoPE) with a DSA indexer
    (8 tokens in pools of 4), two hyper-connection streams, a dense first layer, shared experts, correction
    bias; GLM's SwiGLU ViT."""
    text = {**_release(drop=("architectures", "rope_theta", "rope_scaling"))(style), "model_type": "glm5_next_text",
            "vocab_size": V_VLM, "num_key_value_heads": HEADS, "intermediate_size": I_DENSE,
            "moe_intermediate_size": I_MOE, "n_routed_experts": E, "n_shared_experts": 1, "num_experts_per_tok": TOP_K,
            "norm_topk_prob": True, "routed_scaling_factor": 2.5, "n_group": 1, "topk_group": 1,
            "q_lora_rank": 64, "kv_lora_rank": 64, "qk_rope_head_dim": 0, "qk_nope_head_dim": 64, "v_head_dim": 64,
            "mlp_layer_types": ["dense", "sparse"], "layer_types": ["linear_attention", "full_attention"],
            "index_topk": 8, "index_head_dim": 32, "index_n_heads": 8, "index_kpool": 4, "linear_head_dim": 32,
            "linear_num_heads": HEADS, "hc_mult": 2, "rms_norm_eps": 1e-5, "pad_token_id": None}
    return {"architectures": ["Glm5NextForConditionalGeneration"], "model_type": "glm5_next", "text_config": text,
            **_GLM_VISION_TOKEN_IDS, "tie_word_embeddings": False,
            "vision_config": {"model_type": "glm5_next_vision", "depth": 2, "hidden_size": 64, "intermediate_size": 128,
                              "num_heads": 2, "patch_size": 14, "image_size": 56, "out_hidden_size": H,
                              "projection_intermediate_size": 128, "spatial_merge_size": 2, "temporal_patch_size": 2,
                              "in_channels": 3, "rms_norm_eps": 1e-5, "hidden_act": "silu", "attention_bias": True}}


# mlx-vlm's names -> the releases' that put the language model under model.language_model and the vision tower
# under model.visual (Qwen-VL and GLM-V releases)
_MODEL_VISUAL = ((r"^language_model\.model\.", "model.language_model."), (r"^language_model\.lm_head\.", "lm_head."),
                 (r"^vision_tower\.", "model.visual."))

VLM_ARCHS: dict[str, TinyArch] = {
    # Qwen/Qwen3-VL-30B-A3B-Instruct whole: model.visual.{patch_embed.proj (Conv3d [out, in, t, p, p]),
    # pos_embed, blocks.{b}.{norm1, norm2, attn.qkv, attn.proj, mlp.linear_fc1/2}, merger,
    # deepstack_merger_list.{d}} beside the language model of GENERATED["qwen3_vl_moe"]
    "qwen3_vl_moe": TinyArch(None, lambda style: {
        **GENERATED["qwen3_vl_moe"].config(style),
        "image_token_id": V + 2, "video_token_id": V + 3, "vision_start_token_id": V, "vision_end_token_id": V + 1,
        "text_config": {**GENERATED["qwen3_vl_moe"].config(style)["text_config"], "vocab_size": V_VLM},
        "vision_config": {"model_type": "qwen3_vl_moe", "depth": 2, "hidden_size": 64, "intermediate_size": 128,
                          "num_heads": 2, "out_hidden_size": H, "patch_size": 16, "spatial_merge_size": 2,
                          "temporal_patch_size": 2, "in_channels": 3, "num_position_embeddings": 64,
                          "deepstack_visual_indexes": [0], "hidden_act": "gelu_pytorch_tanh",
                          "initializer_range": 0.02}},
        "Qwen3-VL-MoE whole: vision tower (model.visual) + fused in x out experts under model.language_model",
        renames=_MODEL_VISUAL,
        fixes=("conv3d_channels_first",), runner="mlx-vlm", files=_qwen_vl_files),
    # Qwen/Qwen3.5-35B-A3B whole: model.visual.{patch_embed.proj, pos_embed, blocks.{b}, merger} (Qwen3-VL's
    # tower without deepstack mergers) beside the language model of GENERATED["qwen3_5_moe"]
    "qwen3_5_moe": TinyArch(None, lambda style: {
        **GENERATED["qwen3_5_moe"].config(style),
        "image_token_id": V + 2, "video_token_id": V + 3, "vision_start_token_id": V, "vision_end_token_id": V + 1,
        "text_config": {**GENERATED["qwen3_5_moe"].config(style)["text_config"], "vocab_size": V_VLM},
        "vision_config": {"model_type": "qwen3_5_moe", "depth": 2, "hidden_size": 64, "intermediate_size": 128,
                          "num_heads": 2, "out_hidden_size": H, "patch_size": 16, "spatial_merge_size": 2,
                          "temporal_patch_size": 2, "in_channels": 3, "num_position_embeddings": 64,
                          "deepstack_visual_indexes": [], "hidden_act": "gelu_pytorch_tanh",
                          "initializer_range": 0.02}},
        "Qwen3.5-MoE whole: vision tower (model.visual) + fused experts under model.language_model, Gated DeltaNet",
        renames=_MODEL_VISUAL,
        fixes=("conv1d_channels_first", "conv3d_channels_first"), values=_ZERO_CENTERED_NORMS, runner="mlx-vlm",
        files=_qwen_vl_files),    # meta-llama/Llama-4-Scout-17B-16E-Instruct whole: vision_model.{patch_embedding.linear ([D, 3·p·p], an
    # unfold + linear), class_embedding, positional_embedding_vlm, layernorm_pre/post, model.layers.{b}.{self_attn
    # (with biases), mlp.fc1/fc2, input_layernorm, post_attention_layernorm}, vision_adapter.mlp.fc1/fc2} and
    # multi_modal_projector.linear_1 beside the language model of GENERATED["llama4"]; the names are mlx-vlm's
    "llama4": TinyArch(None, lambda style: {
        **GENERATED["llama4"].config(style), "image_token_index": V + 2,
        "text_config": {**GENERATED["llama4"].config(style)["text_config"], "vocab_size": V_VLM},
        "vision_config": {"model_type": "llama4_vision_model", "hidden_size": 64, "image_size": 64, "patch_size": 16,
                          "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256,
                          "num_channels": 3, "norm_eps": 1e-5, "pixel_shuffle_ratio": 0.5, "projector_input_dim": 128,
                          "projector_output_dim": 128, "vision_output_dim": 128, "projector_dropout": 0.0,
                          "rope_theta": 10000, "vision_feature_layer": -1, "vision_feature_select_strategy": "default",
                          "initializer_range": 0.02, "hidden_act": "gelu", "attention_dropout": 0.0,
                          "multi_modal_projector_bias": False}},
        "Llama-4 whole: vision_model (unfold patch embedding, pixel-shuffle adapter) + multi_modal_projector + "
        "fused transposed experts under language_model.model", runner="mlx-vlm", files=_llama4_files),    # moonshotai/Kimi-VL-A3B-Instruct whole: vision_tower (MoonViT: patch_embed.proj Conv2d [out, in, p, p],
    # patch_embed.pos_emb [h, w, D], encoder.blocks.{b}.{wqkv, wo, norm0, norm1, mlp.fc0/fc1},
    # encoder.final_layernorm), multi_modal_projector.{pre_norm, linear_1, linear_2}, and a DeepSeek-V3 language
    # model (MLA without q_lora, dense first layer, shared experts, correction bias) under language_model.model.
    # The release's vision_config says num_hidden_layers / hidden_size / num_attention_heads; mlx-vlm reads
    # depth / embed_dim / num_heads (its defaults are the release's 27 / 1152 / 16), so the tiny config has both
    "kimi_vl": TinyArch(None, lambda style: {
        "architectures": ["KimiVLForConditionalGeneration"], "model_type": "kimi_vl", "ignore_index": -100,
        "media_placeholder_token_id": V + 2, "pad_token_id": 0, "tie_word_embeddings": False,
        "text_config": {**_release(drop=("architectures",))(style), "model_type": "deepseek_v3", "vocab_size": V_VLM,
                        "num_attention_heads": DS_HEADS, "num_key_value_heads": DS_HEADS, "intermediate_size": I_DENSE,
                        "moe_intermediate_size": I_MOE, "n_routed_experts": E, "n_shared_experts": 1, "ep_size": 1,
                        "num_experts_per_tok": TOP_K, "first_k_dense_replace": 1, "moe_layer_freq": 1, "n_group": 1,
                        "topk_group": 1, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
                        "routed_scaling_factor": 2.446, "q_lora_rank": None, "kv_lora_rank": KV_LORA,
                        "qk_nope_head_dim": NOPE, "qk_rope_head_dim": ROPE, "v_head_dim": V_HEAD,
                        "rms_norm_eps": 1e-5, "aux_loss_alpha": 0.001, "seq_aux": True},
        "vision_config": {"model_type": "moonvit", "patch_size": 14, "init_pos_emb_height": 8, "init_pos_emb_width": 8,
                          "num_attention_heads": 2, "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                          "merge_kernel_size": [2, 2], "depth": 2, "embed_dim": 64, "num_heads": 2}},
        "Kimi-VL whole: MoonViT vision tower + projector + DeepSeek-V3 MoE under language_model.model",
        renames=((r"^vision_tower\.blocks\.(\d+)\.attn\.", r"vision_tower.encoder.blocks.\1."),
                 (r"^vision_tower\.(blocks|final_layernorm)", r"vision_tower.encoder.\1")),
        fixes=("conv2d_channels_first",), runner="mlx-vlm", files=_kimi_vl_files),
    # moonshotai/Kimi-K2.5 whole: Kimi-VL's MoonViT names (vision_tower.patch_embed.{proj, pos_emb},
    # encoder.blocks.{b}.{wqkv, wo, norm0, norm1, mlp.fc0/fc1}, encoder.final_layernorm), mm_projector.{pre_norm,
    # proj.0, proj.2}, and a DeepSeek-V3 language model (MLA with q_lora, dense first layer, shared expert,
    # correction bias) under language_model.model. Float experts (the release's are compressed-tensors INT4).
    # vision_config in transformers' names and mlx-vlm's (depth, embed_dim, num_heads, init_pos_emb_*: its defaults
    # are the release's, whose own vision_config says vt_hidden_size, …), model_type moonvit as mlx-vlm requires
    "kimi_k25": TinyArch(None, lambda style: {
        "architectures": ["Kimi_K25ForConditionalGeneration"], "model_type": "kimi_k25", "image_token_id": V + 2,
        "media_placeholder_token_id": V + 2,  # the release's name for it, which mlx-vlm reads
        "video_token_id": V + 3, "vision_start_token_id": V, "vision_end_token_id": V + 1,
        "projection_hidden_size": 64, "projection_layer_norm_eps": 1e-5, "tie_word_embeddings": False,
        "text_config": {**_release(drop=("architectures",))(style), "model_type": "deepseek_v3", "vocab_size": V_VLM,
                        "num_attention_heads": DS_HEADS, "num_key_value_heads": DS_HEADS, "intermediate_size": I_DENSE,
                        "moe_intermediate_size": I_MOE, "n_routed_experts": E, "n_shared_experts": 1,
                        "num_experts_per_tok": TOP_K, "first_k_dense_replace": 1, "moe_layer_freq": 1, "n_group": 1,
                        "topk_group": 1, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
                        "routed_scaling_factor": 2.827, "q_lora_rank": Q_LORA, "kv_lora_rank": KV_LORA,
                        "qk_nope_head_dim": NOPE, "qk_rope_head_dim": ROPE, "v_head_dim": V_HEAD},
        "vision_config": {"model_type": "moonvit", "patch_size": 14, "pos_emb_height": 4, "pos_emb_width": 4,
                          "pos_emb_time": 4, "num_attention_heads": 2, "num_hidden_layers": 2, "hidden_size": 64,
                          "intermediate_size": 128, "merge_kernel_size": [2, 2], "hidden_act": "gelu_pytorch_tanh",
                          "rope_parameters": {"rope_type": "axial", "rope_theta": 10000.0}, "depth": 2,
                          "embed_dim": 64, "num_heads": 2, "init_pos_emb_height": 4, "init_pos_emb_width": 4}},
        "Kimi-K2.5 whole: MoonViT vision tower + mm_projector + DeepSeek-V3 MoE under language_model.model",
        renames=((r"^vision_tower\.blocks\.(\d+)\.attn\.", r"vision_tower.encoder.blocks.\1."),
                 (r"^vision_tower\.(blocks|final_layernorm)", r"vision_tower.encoder.\1")),
        fixes=("mla_kv_b", "conv2d_channels_first"), runner="mlx-vlm", files=_kimi_vl_files),
    # google/gemma-4-26B-A4B-it whole: model.vision_tower.{patch_embedder.{input_proj, position_embedding_table},
    # encoder.layers.{b}.{self_attn.{q,k,v,o}_proj.linear, q_norm, k_norm, mlp.*.linear, four norms}} and
    # model.embed_vision.embedding_projection beside the language model of GENERATED["gemma4"]; no audio tower.
    # The tokenizer is the byte one with three image tokens (llama4's file: the smoke test feeds token ids)
    "gemma4": TinyArch(None, lambda style: {
        **GENERATED["gemma4"].config(style), "vocab_size": V_VLM, "image_token_id": V + 2, "boi_token_id": V,
        "eoi_token_id": V + 1, "audio_config": None,
        "text_config": {**GENERATED["gemma4"].config(style)["text_config"], "vocab_size": V_VLM,
                        "vocab_size_per_layer_input": V_VLM},
        "vision_config": {"model_type": "gemma4_vision", "hidden_size": 64, "intermediate_size": 128,
                          "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 32,
                          "global_head_dim": 32, "patch_size": 16, "position_embedding_size": 64,
                          "pooling_kernel_size": 2, "default_output_length": 4, "rms_norm_eps": 1e-6,
                          "hidden_activation": "gelu_pytorch_tanh"}},
        "Gemma 4 whole: vision tower + embed_vision + the MoE language model under model.language_model",
        renames=((r"^language_model\.model\.", "model.language_model."), (r"^vision_tower\.", "model.vision_tower."),
                 (r"^embed_vision\.", "model.embed_vision.")),
        values=GENERATED["gemma4"].values, runner="mlx-vlm", files=_llama4_files),
    # MiniMaxAI/MiniMax-M3 whole: vision_tower.vision_model.{embeddings.patch_embedding (Conv3d [out, in, t, p, p],
    # which mlx-vlm applies as one matmul), pre_layrnorm, encoder.layers.{b}.{self_attn.{q,k,v,out}_proj,
    # layer_norm1/2, mlp.fc1/fc2}}, multi_modal_projector.linear_1/2 and patch_merge_mlp.linear_1/2 beside the
    # language model of GENERATED["minimax_m3_vl"]; the names are mlx-vlm's (and transformers 5's save_pretrained's)
    "minimax_m3_vl": TinyArch(None, lambda style: {
        **GENERATED["minimax_m3_vl"].config(style), "image_token_index": V + 2, "video_token_index": V + 3,
        "projector_hidden_size": 128,
        "text_config": {**GENERATED["minimax_m3_vl"].config(style)["text_config"], "vocab_size": V_VLM,
                        # the flag mlx-vlm builds the indexer by (transformers and mlx-lm go by sparse_attention_freq)
                        "sparse_attention_config": {**GENERATED["minimax_m3_vl"].config(style)["text_config"][
                            "sparse_attention_config"], "use_sparse_attention": True}},
        "vision_config": {"model_type": "minimax_m3_vl_vision", "hidden_size": 64, "intermediate_size": 128,
                          "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 14, "image_size": 56,
                          "num_channels": 3, "temporal_patch_size": 2, "spatial_merge_size": 2, "hidden_act": "gelu",
                          "layer_norm_eps": 1e-5, "rope_parameters": {"rope_type": "axial", "rope_theta": 10000.0}}},
        "MiniMax-M3 whole: CLIP-like vision tower (3-D RoPE) + patch-merging projector + the MoE language model "
        "under language_model.model",
        values=GENERATED["minimax_m3_vl"].values, runner="mlx-vlm", files=_minimax_m3_files),
    # zai-org/GLM-4.5V whole: model.visual.{patch_embed.proj (Conv3d [out, in, t, p, p]), post_conv_layernorm,
    # embeddings.position_embedding, blocks.{b}.{norm1, norm2, attn.qkv, attn.proj, mlp.gate/up/down_proj},
    # post_layernorm, downsample (Conv2d [out, in, 2, 2]), merger} beside GLM-4.5's MoE under model.language_model
    "glm4v_moe": TinyArch(None, _glm4v_moe,
        "GLM-4.5V whole: GLM ViT (model.visual) + GLM-4.5 MoE under model.language_model",
        renames=_MODEL_VISUAL,
        fixes=("conv3d_channels_first", "downsample_channels_first"), runner="mlx-vlm", files=_glm4v_files),
    # Qwen/Qwen4-Exp whole: model.visual (Qwen3-VL's tower, no deepstack) beside model.language_model.{embed_tokens,
    # hyper_connection_mixer, norm, layers.{l}.{linear_attn | self_attn (with indexer), attn_hyper_connection,
    # mlp_hyper_connection, mlp.experts.{e}.*, mlp.shared_expert, mlp.shared_expert_gate}}: mlx-vlm's own names
    "qwen4_exp": TinyArch(None, _qwen4_exp,
        "Qwen4-Exp whole: vision tower (model.visual) + per-expert experts under model.language_model, Gated "
        "DeltaNet, QSA-indexed attention, hyper-connections",
        renames=_MODEL_VISUAL,
        fixes=("conv1d_channels_first", "conv3d_channels_first"), runner="mlx-vlm", files=_qwen_vl_files),
    # zai-org/GLM-5.3-Flash whole: model.visual.{patch_embed.proj (Conv3d), blocks.{b} (q/k norms, SwiGLU MLP),
    # post_layernorm, downsample (Conv2d), merger} beside model.language_model.layers.{l}.{self_attn (KDA's q/k/v,
    # f/g/b projections and q/k/v_conv1d, or MLA's q_a/kv_a/kv_b and indexer), hc_attn_*/hc_ffn_*, mlp}
    "glm5_next": TinyArch(None, _glm5_next,
        "GLM-5-Next whole: GLM ViT (model.visual) + per-expert experts under model.language_model, KDA, MLA with a "
        "DSA indexer, hyper-connections",
        renames=_MODEL_VISUAL,
        fixes=("glm5_next_fused", "mla_kv_b", "conv3d_channels_first", "downsample_channels_first"), runner="mlx-vlm",
        files=_glm4v_files),
    # baidu/ERNIE-4.5-VL-28B-A3B-PT whole: vision_model.{patch_embed.proj, blocks.{b}.{norm1, norm2, attn.qkv,
    # attn.proj, mlp.fc1/fc2}, ln} and model.resampler_model.{spatial_linear.{0,2,3}, temporal_linear.{0,2,3}, mlp,
    # after_norm} beside the language model under model.* (experts 0..2E-1: text, then multimodal); tied
    "ernie4_5_moe_vl": TinyArch(None, _ernie4_5_moe_vl,
        "ERNIE-4.5-VL whole: DFNRope vision tower + resampler + MoE with text and multimodal experts under model.*",
        renames=((r"^language_model\.model\.", "model."), (r"^vision_tower\.", "vision_model."),
                 (r"^resampler_model\.", "model.resampler_model."),
                 (r"\.(spatial_linear|temporal_linear)\.layers\.", r".\1.")),
        fixes=("ernie_vl_experts",), values=_TIED, runner="mlx-vlm", files=_ernie_vl_files),
}
