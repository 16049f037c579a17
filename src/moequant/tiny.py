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
from .families import FAMILIES, Family

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
    tensors: Callable[[], Tensors]
    config: Callable[[str], dict]  # style -> config.json
    about: str


ARCHS: dict[str, TinyArch] = {
    "qwen3_moe": TinyArch(_qwen3_moe, _config_qwen3_moe, "Qwen3-MoE, transformers 5 config (num_local_experts, rope_parameters)"),
    "qwen2_moe": TinyArch(_qwen2_moe, _config_qwen2_moe, "Qwen2-MoE with shared expert and shared_expert_gate"),
    "mixtral": TinyArch(_mixtral, _config_mixtral, "Mixtral, block_sparse_moe.experts.{e}.w1/w2/w3"),
    "deepseek_v3": TinyArch(_deepseek_v3, _config_deepseek_v3,
                            "DeepSeek-V3: MLA, first dense layer, shared experts, e_score_correction_bias"),
}

# Float32 in the source wherever real releases keep it so (DeepSeek's correction bias)
_FLOAT32_SUFFIXES = ("e_score_correction_bias",)


def tiny_tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Deterministic values for one tensor, from its name: norms near 1, weights ~ 1/sqrt(in)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
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
    """Per-expert tensors rewritten as fused (`experts.gate_up_proj` [E, 2I, H] + `experts.down_proj`,
    gate rows first) or stacked (`switch_mlp.{proj}.weight` [E, out, in])."""
    if layout == "per_expert":
        return tensors
    pattern = re.compile(rf"^(?P<layer>.+)\.{re.escape(family.experts)}\.(?P<e>\d+)\.(?P<proj>\w+)\.weight$")
    out, stacks = {}, {}
    for key, value in tensors.items():
        if m := pattern.match(key):
            stacks.setdefault((m["layer"], family.projections[m["proj"]]), {})[int(m["e"])] = value
        else:
            out[key] = value
    for (layer, proj), by_expert in stacks.items():
        out[f"{layer}.{family.stacked}.{proj}.weight"] = mx.stack([by_expert[e] for e in sorted(by_expert)])
    if layout == "fused":
        for layer in {layer for layer, _ in stacks}:
            stacked = f"{layer}.{family.stacked}"
            gate, up = out.pop(f"{stacked}.gate_proj.weight"), out.pop(f"{stacked}.up_proj.weight")
            out[f"{layer}.{family.experts}.gate_up_proj"] = mx.concatenate([gate, up], axis=1)
            out[f"{layer}.{family.experts}.down_proj"] = out.pop(f"{stacked}.down_proj.weight")
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


def save_safetensors(path: Path, tensors: dict[str, tuple[str, mx.array]]) -> None:
    """A safetensors file with the dtype tags releases use (mlx itself writes fp8 as U8)."""
    entries = [(key, tag, tuple(value.shape)) for key, (tag, value) in tensors.items()]
    blobs = [tensor_bytes(value) for _, value in tensors.values()]  # all read before `path` is replaced
    with open(path, "wb") as f:
        f.write(encode_header(entries, {"format": "pt"}))
        for blob in blobs:
            f.write(blob)


def write_tiny_checkpoint(dst: str | Path, arch: str, *, dtype: str = "bfloat16", shards: int = 1,
                          seed: int = 0, style: str = "published", layout: str = "per_expert",
                          source: str = "float", block_size: tuple[int, int] = (128, 128)) -> Path:
    """Write a tiny `arch` checkpoint into dst (created). `style="legacy"` writes the config keys
    mlx-lm was written against (rope_theta, num_experts) instead of what the release carries;
    `layout` picks per-expert, fused or stacked experts; `source="fp8"` writes FP8 block-scaled
    linear weights (`weight_block_size` = block_size) as DeepSeek-V3 and Qwen3-FP8 releases do."""
    if arch not in ARCHS or layout not in LAYOUTS or source not in SOURCES:
        raise ValueError(f"arch {arch!r}, layout {layout!r}, source {source!r}; expected one of "
                         f"{', '.join(ARCHS)}; {', '.join(LAYOUTS)}; {', '.join(SOURCES)}")
    spec = ARCHS[arch]
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    mx_dtype = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}[dtype]
    tensors = {}
    for name, shape in sorted(spec.tensors().items()):
        value = mx.array(tiny_tensor(name, shape, seed))
        tensors[name] = value if name.endswith(_FLOAT32_SUFFIXES) else value.astype(mx_dtype)
    tensors = _to_layout(tensors, FAMILIES[arch], layout)
    if source == "fp8":
        tagged = _to_fp8(tensors, block_size)
    elif source == "nvfp4":
        tagged = _to_modelopt_nvfp4(tensors)
    else:
        tagged = {k: (DTYPE_TAGS[v.dtype], v) for k, v in tensors.items()}
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
    config = {**spec.config(style), "dtype" if style == "published" else "torch_dtype": dtype}
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
    return dst
