"""Tiny MoE checkpoints written by the producer itself: transformers' own `save_pretrained`.

A fixture written from moequant's reading of a layout can only confirm that reading; these are
written by transformers (its config class with tiny dimensions, `from_config`, weights re-drawn,
`save_pretrained`) and transformers' forward pass on fixed tokens is the reference. Each row of
PRODUCED names a transformers model_type and the few config values its class needs beyond the
shared tiny dimensions; everything else is the class's own default, left out of config.json by
`save_pretrained` exactly as a fine-tune saved with transformers 5 looks.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers

VOCAB = 256
TOKENS = np.array(
    [[(7 * i + 3) % VOCAB for i in range(32)], [(11 * i + 5) % VOCAB for i in range(32)]], dtype=np.int64
)

# Shared tiny dimensions: every Linear input a multiple of 64, a few experts, 3 layers.
H, I_DENSE, I_MOE, HEADS, KV_HEADS, HEAD_DIM, E, TOP_K, LAYERS = 128, 128, 64, 4, 2, 32, 4, 2, 3

# Keys set whenever the config class has them (a key the class lacks is never passed).
TINY = {
    "vocab_size": VOCAB, "hidden_size": H, "intermediate_size": I_DENSE, "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
    "moe_intermediate_size": I_MOE, "shared_expert_intermediate_size": I_DENSE, "expert_intermediate_size": I_MOE,
    "num_experts": E, "num_local_experts": E, "n_routed_experts": E, "moe_num_experts": E,
    "num_experts_per_tok": TOP_K, "moe_topk": TOP_K, "moe_k": TOP_K, "n_shared_experts": 1,
    "num_shared_experts": 1, "moe_num_shared_experts": 1,
    "q_lora_rank": 64, "kv_lora_rank": 64, "qk_rope_head_dim": 32, "qk_nope_head_dim": 64, "v_head_dim": 64,
    "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1,
    "pad_token_id": None, "bos_token_id": None, "eos_token_id": None, "tie_word_embeddings": False,
    "sliding_window": 16,  # shorter than TOKENS' 32, so a sliding window is exercised
    "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 32, "linear_value_head_dim": 32,
    "mamba_n_heads": 8, "mamba_num_heads": 8, "mamba_d_state": 16, "ssm_state_size": 16, "mamba_chunk_size": 16,
    "chunk_size": 16, "mamba_head_dim": 32, "n_groups": 1,
}

_HYBRID = ["linear_attention", "full_attention", "linear_attention"]
_SLIDING = ["sliding_attention", "full_attention", "sliding_attention"]
_MLA = {"num_key_value_heads": HEADS}  # MLA's keys and values have every head
# Kimi-Linear / Ling 2.5 spell top-k and the KDA (linear attention) dims their own way
# Kimi-Linear's release has no query LoRA (q_lora_rank null), and mlx-lm's kimi_linear has no q_a_proj
_KDA = {**_MLA, "q_lora_rank": None, "num_experts_per_token": TOP_K, "num_expert_group": 1, "linear_num_heads": HEADS,
        "linear_head_dim": HEAD_DIM, "layer_types": _HYBRID, "mlp_layer_types": ["dense", "sparse", "sparse"]}


@dataclass(frozen=True)
class Produced:
    """A transformers model_type written tiny: `extra` overrides TINY (None drops a key)."""

    model_type: str
    extra: dict = field(default_factory=dict)
    model_class: str = "AutoModelForCausalLM"  # the transformers class that writes it


PRODUCED: dict[str, Produced] = {p.model_type: p for p in (
    Produced("mixtral", {"sliding_window": None}),  # mlx-lm's mixtral has no sliding window (a plan note: ignored.py)
    Produced("qwen2_moe"),
    Produced("qwen3_moe"),
    Produced("qwen3_next", {"layer_types": _HYBRID}),
    Produced("olmoe"),
    Produced("phimoe", {"sliding_window": None}),  # mlx-lm's phimoe has no sliding window (a plan note: ignored.py)
    Produced("deepseek_v2", _MLA),
    Produced("deepseek_v3", _MLA),
    Produced("deepseek_v32", _MLA),
    Produced("glm4_moe"),
    Produced("glm4_moe_lite", _MLA),
    Produced("glm_moe_dsa", _MLA),
    Produced("dots1"),
    Produced("ernie4_5_moe"),
    Produced("exaone_moe", {"layer_types": _SLIDING, "mlp_layer_types": ["dense", "sparse", "sparse"]}),
    Produced("granitemoe"),
    Produced("granitemoehybrid", {"layer_types": ["mamba", "attention", "mamba"]}),
    Produced("jamba", {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1}),
    # YaRN truncated: mlx-lm always truncates (a plan note for the releases' truncate false: ignored.py)
    Produced("gpt_oss", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0,
                                             "beta_fast": 32.0, "beta_slow": 1.0, "truncate": True,
                                             "original_max_position_embeddings": 4096}}),
    # top-1 routing as the releases (mlx-lm's llama4 asserts it); 4 layers, the 4th NoPE + global attention
    # (mlx-lm's llama4 hard-codes that period), MoE every other layer as Maverick
    Produced("llama4_text", {"num_experts_per_tok": 1, "num_hidden_layers": 4, "moe_layers": [1, 3]}),
    # tied (mlx-lm's hunyuan has no lm_head); every expert chosen, the one routing where transformers'
    # renormalized top-k weights equal mlx-lm's softmax weights (a plan note otherwise: ignored.py)
    Produced("hunyuan_v1_moe", {"tie_word_embeddings": True, "moe_topk": E}),
    Produced("minimax"),
    Produced("minimax_m2"),
    # tied, as the release and transformers' default are: mlx-lm's lfm2_moe has no lm_head of its own
    Produced("lfm2_moe", {"layer_types": ["conv", "full_attention", "conv"], "num_dense_layers": 1,
                          "tie_word_embeddings": True}),
    # num_layers counts LongCat's double layers (two attentions and MLPs and one MoE each); the FFN sizes have
    # their own names (transformers' attribute_map hides intermediate_size / moe_intermediate_size)
    Produced("longcat_flash", {**_MLA, "num_layers": 2, "ffn_hidden_size": I_DENSE, "expert_ffn_hidden_size": I_MOE,
                               "zero_expert_num": 2}),
    Produced("mimo_v2_flash", {"layer_types": _SLIDING, "mlp_layer_types": ["dense", "sparse", "sparse"]}),
    # Mistral4Config derives head_dim (qk_nope + qk_rope) and the rotary share from it: a stated head_dim breaks RoPE
    Produced("mistral4", {**_MLA, "head_dim": None}, model_class="Mistral4ForCausalLM"),
    Produced("nemotron_h"),
    Produced("afmoe", {"layer_types": _SLIDING}),
    # attn_config as DBRX's release states it: transformers 5.25's DbrxAttention reads attn_config.rope_theta and
    # clamps with attn_config.clip_qkv (its defaults, absent / None, fail)
    Produced("dbrx", {"d_model": H, "n_heads": HEADS, "n_layers": LAYERS,
                      "attn_config": {"kv_n_heads": KV_HEADS, "rope_theta": 500000.0, "clip_qkv": 8.0},
                      "ffn_config": {"ffn_hidden_size": I_MOE, "moe_num_experts": E, "moe_top_k": TOP_K}}),
    Produced("laguna", {"mlp_layer_types": ["dense", "sparse", "sparse"]}),
    Produced("mellum"),
    Produced("kimi_linear", _KDA),
    # mlx-lm's bailing_moe_v3 makes every layer_group_size-th layer and the last partial group full attention
    Produced("bailing_hybrid", {**_KDA, "layer_types": ["linear_attention", "linear_attention", "full_attention"],
                                "layer_group_size": 3}),
    Produced("solar_open"),
    # no step3p5: transformers 5.25 reads model_type step3p5 only as step3p7's text_config (Step3p7TextConfig); its
    # one model for it, Step3p7TextModel, has no lm_head, and no causal-LM class takes it (the release is custom code)
    Produced("gemma4_text", {"layer_types": _SLIDING}),
    Produced("qwen3_5_moe_text", {"layer_types": _HYBRID}),
    Produced("flex_olmo"),
    Produced("granitemoeshared"),
    Produced("jetmoe"),
)}


def tiny_config(model_type: str) -> transformers.PretrainedConfig:
    """The model_type's config class with TINY's keys it has, then the row's extra."""
    row = PRODUCED[model_type]
    config_class = transformers.CONFIG_MAPPING[model_type]
    has = set(config_class().to_dict())
    kwargs = {k: v for k, v in TINY.items() if k in has}
    for k, v in row.extra.items():
        if v is None:
            kwargs.pop(k, None)
        else:
            kwargs[k] = v
    config = config_class(**kwargs)
    # what save_pretrained of the model writes: the class that wrote it (mlx-lm picks a module by it)
    name = row.model_class
    if name.startswith("Auto"):
        name = transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
    config.architectures = [name]
    return config


def redraw(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights that make every block matter: matrices N(0, 1/fan_in), norms 1 ± 0.2, vectors ± 0.1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.ndim >= 2:
                fan_in = p.shape[-1] if p.ndim == 2 else math.prod(p.shape[1:]) if "conv" in name else p.shape[-1]
                if "embed" in name:
                    fan_in = 1
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            elif "norm" in name or name.endswith("layernorm.weight") or "ln" in name.split(".")[-2:-1]:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def write_produced(dst: Path, model_type: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> np.ndarray:
    """Writes the tiny checkpoint with save_pretrained; returns transformers' float32 logits on TOKENS."""
    torch.manual_seed(seed)
    config = tiny_config(model_type)
    model_class = getattr(transformers, PRODUCED[model_type].model_class)
    # Auto classes build from a config with from_config; a concrete class (no Auto mapping, e.g.
    # Mistral4ForCausalLM) with PreTrainedModel._from_config, which from_config itself calls
    build = getattr(model_class, "from_config", None) or model_class._from_config
    model = build(config, dtype=torch.float32).eval()
    redraw(model, seed)
    with torch.inference_mode():
        logits = model(torch.from_numpy(TOKENS), use_cache=False).logits.float().numpy()
    model.to(dtype).save_pretrained(dst)
    return logits


def config_written(dst: Path) -> dict:
    return json.loads((Path(dst) / "config.json").read_text())


def _round_trip(w: torch.Tensor, bits: int, group_size: int, axis: int) -> torch.Tensor:
    """w quantized and dequantized along `axis` (its input dimension) as MLX's affine mode does."""
    import mlx.core as mx

    moved = w.detach().float().movedim(axis, -1).contiguous()
    a = mx.array(moved.numpy())
    q = mx.dequantize(*mx.quantize(a, group_size=group_size, bits=bits), group_size=group_size, bits=bits)
    return torch.from_numpy(np.array(q)).movedim(-1, axis)


def _is_router(name: str, p: torch.Tensor, num_experts: int) -> bool:
    return p.ndim == 2 and p.shape[0] in (num_experts, num_experts + 1, 1) and any(
        s in name for s in ("gate", "router"))


def _kept(name: str, keep: frozenset[str]) -> bool:
    """Whether transformers' parameter `name` belongs to a module the plan keeps: `keep` holds
    plan paths (mlx-lm's names) and "embedding" / "lm_head"; a decoder-layer module matches by
    its layer and its own name (mlx-lm's attention vs transformers' self_attn, …)."""
    path = name.rsplit(".", 1)[0]
    if "embedding" in keep and "embed" in path or "lm_head" in keep and path.endswith("lm_head"):
        return True
    layer = re.search(r"layers\.(\d+)\.", path)
    leaf = path.rsplit(".", 1)[-1]
    return path in keep or layer is not None and any(
        f"layers.{layer[1]}." in k and k.rsplit(".", 1)[-1] == leaf for k in keep)


def simulated_logits(model_type: str, src: Path, bits: int, group_size: int = 64,
                     keep: frozenset[str] = frozenset()) -> np.ndarray:
    """transformers' forward of SRC's weights after an MLX affine round trip of every matrix a
    uniform plan quantizes (linear and expert weights and embeddings whose input dimension the
    group divides; router gates, norms, convolutions and vectors kept, and what `keep` names,
    see _kept): what a correct quantized conversion computes."""
    config = transformers.AutoConfig.from_pretrained(src)
    model_class = getattr(transformers, PRODUCED[model_type].model_class)
    model = model_class.from_pretrained(src, dtype=torch.float32).eval()
    text = getattr(config, "text_config", None) or config
    num_experts = next((getattr(text, k) for k in ("num_experts", "num_local_experts", "n_routed_experts",
                                                   "moe_num_experts") if getattr(text, k, None)), 0)
    hidden = text.hidden_size if hasattr(text, "hidden_size") else getattr(text, "d_model", H)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim < 2 or "norm" in name or "conv" in name or _is_router(name, p, num_experts):
                continue
            if _kept(name, keep):
                continue
            # input dimension: the last one (nn.Linear, F.linear experts), else the one of size hidden
            # for up/gate stacks stored [E, H, out] (x @ w)
            axis = -1
            if p.ndim == 3 and p.shape[-1] != hidden and p.shape[-2] == hidden and "down" not in name:
                axis = -2
            elif p.ndim == 3 and "down" in name and p.shape[-1] == hidden and p.shape[-2] != hidden:
                axis = -2
            if p.shape[axis] % group_size:
                continue
            p.copy_(_round_trip(p, bits, group_size, axis))
        logits = model(torch.from_numpy(TOKENS), use_cache=False).logits.float().numpy()
    return logits
