"""Architecture knowledge as data: one row per model_type, and config-key aliases.

Adding a family means adding a row here, a tiny config in `tiny.py` (its tensors are derived from
mlx-lm's model) and a row in `archs.py`; the pipeline has no `if model_type == …`. What a row
cannot say is a function registered by name and named by the row (experts.FUSED_SPLITTERS).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .formats import StrEnum


class Handoff(StrEnum):
    """What mlx-lm's sanitize is handed: moequant's stacks, or each expert in the published names
    for a sanitize that stacks them itself and keys other conversions on seeing them (Qwen3-Next's
    norm offsets)."""

    STACKED = "stacked"
    PER_EXPERT = "per_expert"


@dataclass(frozen=True)
class FusedAlso:
    """The same fused experts published under other names, split another way (gpt-oss: the MXFP4
    release's rows vs transformers' own in x out float save)."""

    names: tuple[str, str]  # fused (gate_up, down) inside `experts`, bare (float parameters)
    fused: str  # how gate_up splits: a key of experts.FUSED_SPLITTERS


@dataclass(frozen=True)
class Family:
    experts: str  # per-expert container inside a decoder layer (source layout)
    stacked: str  # what the mlx-lm class loads: [E, out, in] per projection
    projections: dict[str, str]  # source projection name -> stacked projection name
    num_experts_keys: tuple[str, ...] = ("num_experts",)  # config keys naming E, first found wins
    fused: str = "halves"  # how the fused gate_up tensor splits: a key of experts.FUSED_SPLITTERS
    fused_names: tuple[str, str] = ("gate_up_proj", "down_proj")  # fused (gate_up, down) inside `experts`
    fused_bias_names: tuple[str, ...] = ()  # fused (gate_up, down) biases [E, out], if the release has them
    layout: str = "per_expert"  # how the release publishes its experts: per_expert, fused or stacked
    handoff: Handoff = Handoff.STACKED
    # other names the same fused experts are published under, each with its own orientation; the fused
    # biases (fused_bias_names) are the same rows in every publication
    fused_also: tuple[FusedAlso, ...] = ()


_GLU = {"gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"}

_W123 = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}  # Mixtral-style per-expert names

FAMILIES: dict[str, Family] = {
    # Qwen/Qwen3-30B-A3B: model.layers.{l}.mlp.experts.{e}.{gate,up,down}_proj.weight
    "qwen3_moe": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("num_experts", "num_local_experts")),
    # Qwen/Qwen1.5-MoE-A2.7B: as qwen3_moe, plus mlp.shared_expert.* and mlp.shared_expert_gate
    "qwen2_moe": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("num_experts", "num_local_experts")),
    # mistralai/Mixtral-8x7B-v0.1: block_sparse_moe.experts.{e}.w1 (gate) / w3 (up) / w2 (down)
    "mixtral": Family(
        "block_sparse_moe.experts",
        "block_sparse_moe.switch_mlp",
        _W123,
        ("num_local_experts", "num_experts"),
    ),
    # deepseek-ai/DeepSeek-V3: mlp.experts.{e}.*, mlp.shared_experts.*, mlp.gate.e_score_correction_bias
    "deepseek_v3": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("n_routed_experts",)),
    # allenai/OLMoE-1B-7B-0924
    "olmoe": Family("mlp.experts", "mlp.switch_mlp", _GLU),
    # microsoft/Phi-3.5-MoE-instruct
    "phimoe": Family("block_sparse_moe.experts", "block_sparse_moe.switch_mlp", _W123, ("num_local_experts",)),
    # MiniMaxAI/MiniMax-M2 (mlx-lm module minimax)
    "minimax_m2": Family("block_sparse_moe.experts", "block_sparse_moe.switch_mlp", _W123, ("num_local_experts",)),
    # Kwai-Klear/Klear-46B-A2.5B: mlx-lm stacks in place, mlp.experts.{proj}.weight
    "Klear": Family("mlp.experts", "mlp.experts", _GLU),
    # JetBrains Mellum MoE
    "mellum": Family("mlp.experts", "mlp.switch_mlp", _GLU),
    # rednote-hilab/dots.llm1: mlx-lm stacks in place, mlp.experts.{proj}.weight
    "dots1": Family("mlp.experts", "mlp.experts", _GLU, ("n_routed_experts",)),
    # zai-org/GLM-4.5
    "glm4_moe": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("n_routed_experts",)),
    # baidu/ERNIE-4.5-21B-A3B-PT
    "ernie4_5_moe": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("moe_num_experts",)),
    # ibm-granite/granite-3.1-3b-a800m: block_sparse_moe.input_linear.weight [E, 2I, H] (gate rows
    # first) and block_sparse_moe.output_linear.weight [E, H, I]
    "granitemoe": Family("block_sparse_moe", "block_sparse_moe.switch_mlp", _GLU, ("num_local_experts",),
                         fused_names=("input_linear.weight", "output_linear.weight"), layout="fused"),
    # tencent/Tencent-Hunyuan-Large
    "hunyuan": Family("mlp.experts", "mlp.switch_mlp", _GLU),
    # inclusionAI/Ling-lite, Ling-mini-2.0
    "bailing_moe": Family("mlp.experts", "mlp.switch_mlp", _GLU),
    # inclusionAI/Ring-mini-linear-2.0: bailing_moe's experts and router (mlp.gate.weight + expert_bias)
    "bailing_moe_linear": Family("mlp.experts", "mlp.switch_mlp", _GLU),
    # inclusionAI Ling 2.5 / Ling 3.0 (model_type bailing_hybrid; mlx-lm's module is bailing_hybrid, or
    # bailing_moe_v3 when architectures says BailingMoeV3ForCausalLM): mlp.experts.{e}.*, mlp.gate.weight
    "bailing_hybrid": Family("mlp.experts", "mlp.switch_mlp", _GLU),
    # not a config.json model_type: the key of the tiny release mlx-lm runs with its bailing_moe_v3 module
    # (model_type bailing_hybrid + BailingMoeV3ForCausalLM), which converts with the row above (same layout)
    "bailing_moe_v3": Family("mlp.experts", "mlp.switch_mlp", _GLU),
    # XiaomiMiMo/MiMo-V2-Flash: mlp.experts.{e}.*, mlp.gate.weight + e_score_correction_bias
    "mimo_v2_flash": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("n_routed_experts",)),
    # stepfun-ai/Step-3.5-Flash: experts published stacked, moe.{gate,up,down}_proj.weight [E, out, in]; they
    # reach mlx-lm's sanitize under those names (no per-expert key matches `moe.{e}.…`), which renames
    # them to mlp.switch_mlp and, on seeing them, adds 1 to every zero-centred norm
    "step3p5": Family("moe", "mlp.switch_mlp", _GLU, ("moe_num_experts",), layout="stacked"),
    # meituan-longcat/LongCat-Flash-Chat: mlp.experts.{e}.*, router mlp.router.classifier scoring the routed
    # and the zero (identity) experts, so its out is E + zero_expert_num
    "longcat_flash": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("n_routed_experts",)),
    # LongCat-Flash with n-gram embeddings (mlx-lm's longcat_flash_ngram): LongCat-Flash's experts
    "longcat_flash_ngram": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("n_routed_experts",)),
    # arcee-ai/Trinity-Mini: mlx-lm stacks in place, mlp.experts.{proj}.weight
    "afmoe": Family("mlp.experts", "mlp.experts", _GLU),
    # LGAI-EXAONE/K-EXAONE-236B-A23B
    "exaone_moe": Family("mlp.experts", "mlp.switch_mlp", _GLU),
    # poolside/Laguna-XS
    "laguna": Family("mlp.experts", "mlp.switch_mlp", _GLU),
    # deepseek-ai/deepseek-moe-16b-base
    "deepseek": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("n_routed_experts",)),
    # deepseek-ai/DeepSeek-V2-Lite, DeepSeek-V2.5
    "deepseek_v2": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("n_routed_experts",)),
    # moonshotai/Kimi-K2-Instruct (mlx-lm: deepseek_v3)
    "kimi_k2": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("n_routed_experts",)),
    # jdopensource/JoyAI-LLM-Flash (mlx-lm: deepseek_v3): DeepSeek-V3's layout and config keys
    "joyai_llm_flash": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("n_routed_experts",)),
    # deepseek-ai/DeepSeek-V3.2-Exp
    "deepseek_v32": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("n_routed_experts",)),
    # zai-org/GLM-5 (mlx-lm: deepseek_v32's model)
    "glm_moe_dsa": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("n_routed_experts",)),
    # moonshotai/Kimi-VL-A3B-Instruct: language_model.model.layers.{l}.mlp.experts.{e}.* (DeepSeek-V3 layout)
    "kimi_vl": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("n_routed_experts",)),
    # zai-org/GLM-4.7-Flash
    "glm4_moe_lite": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("n_routed_experts",)),
    # upstage/Solar-Open-100B (mlx-lm: glm4_moe's model)
    "solar_open": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("n_routed_experts",)),
    # meta-llama/Llama-4-Scout-17B-16E: feed_forward.experts.gate_up_proj [E, H, 2I] (gate columns
    # first) and feed_forward.experts.down_proj [E, I, H]; mlx-lm stacks in place
    "llama4": Family("feed_forward.experts", "feed_forward.experts", _GLU, ("num_local_experts",),
                     fused="halves_transposed", layout="fused"),
    # ibm-granite/granite-4.0-h-tiny: as granitemoe
    "granitemoehybrid": Family("block_sparse_moe", "block_sparse_moe.switch_mlp", _GLU, ("num_local_experts",),
                               fused_names=("input_linear.weight", "output_linear.weight"), layout="fused"),
    # Qwen/Qwen3-Next-80B-A3B
    "qwen3_next": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("num_experts", "num_local_experts"),
                         handoff=Handoff.PER_EXPERT),
    # Qwen/Qwen3.5-35B-A3B: model.language_model.layers.{l}.mlp.experts.gate_up_proj [E, 2I, H]
    # (gate rows first) and mlp.experts.down_proj [E, H, I]
    "qwen3_5_moe": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("num_experts", "num_local_experts"),
                          layout="fused"),
    # Qwen/Qwen3-VL-30B-A3B: model.language_model.layers.{l}.mlp.experts.gate_up_proj [E, H, 2I]
    # (gate columns first) and down_proj [E, I, H]; transformers 5's save_pretrained writes them out x in,
    # [E, 2I, H] and [E, H, I] (its loader transposes only a shape that is not its model's)
    "qwen3_vl_moe": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("num_experts",),
                           fused="halves_transposed_or_rows", layout="fused"),
    # MiniMaxAI/MiniMax-M3: language_model.model.layers.{l}.block_sparse_moe.experts.{e}.w1/w2/w3 (mlx-lm runs
    # the language model; the vision tower is dropped), shared_experts and dense layers' mlp.{gate,up,down}_proj
    "minimax_m3_vl": Family("block_sparse_moe.experts", "block_sparse_moe.switch_mlp", _W123, ("num_local_experts",)),
    # google/gemma-4-26B-A4B-it: model.language_model.layers.{l}.experts.gate_up_proj [E, 2I, H] (gate
    # rows first) and experts.down_proj [E, H, I]; the router (router.proj) is the layer's, beside experts
    "gemma4": Family("experts", "experts.switch_glu", _GLU, ("num_experts",), layout="fused"),
    # transformers' Gemma4ForCausalLM: the same layers under model.layers.{l}
    "gemma4_text": Family("experts", "experts.switch_glu", _GLU, ("num_experts",), layout="fused"),
    # moonshotai/Kimi-Linear-48B-A3B-Instruct: block_sparse_moe.experts.{e}.w1/w2/w3; mlx-lm's sanitize moves
    # the rest of block_sparse_moe (gate, correction bias, shared_experts) to mlp
    "kimi_linear": Family("block_sparse_moe.experts", "mlp.switch_mlp", _W123, ("num_experts",)),
    # zai-org/GLM-4.5V (mlx-vlm only): GLM-4.5's experts under model.language_model.layers.{l}.mlp.experts.{e}
    "glm4v_moe": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("n_routed_experts",)),
    # Mistral Small 4's language model as transformers' Mistral4ForCausalLM saves it (model_type mistral4):
    # mlp.experts.gate_up_proj [E, 2I, H] (gate rows first) and mlp.experts.down_proj [E, H, I]
    "mistral4": Family("mlp.experts", "mlp.switch_mlp", _GLU, ("n_routed_experts",), layout="fused"),
    # LiquidAI/LFM2-8B-A1B
    "lfm2_moe": Family("feed_forward.experts", "feed_forward.switch_mlp", _W123),
    # ai21labs/AI21-Jamba-Mini-1.5
    "jamba": Family("feed_forward.experts", "feed_forward.switch_mlp", _GLU),
    # openai/gpt-oss-20b: mlp.experts.gate_up_proj_blocks [E, 2I, H/32, 16] (gate and up rows
    # interleaved) + _scales, down_proj_blocks/_scales — read as gate_up_proj.weight/.scales (MLX
    # mxfp4) — and fused biases gate_up_proj_bias [E, 2I], down_proj_bias [E, H]; mlx-lm stacks in
    # place (mlp.experts.{proj}). transformers 5's save_pretrained (and the BF16 re-releases) write the
    # float parameters bare: gate_up_proj [E, H, 2I] (gate and up columns interleaved: gate_up[..., ::2]
    # is gate, modeling_gpt_oss.GptOssExperts._apply_gate) and down_proj [E, I, H]; I == H in gpt-oss, so
    # the names, not the shapes, tell the two apart
    "gpt_oss": Family("mlp.experts", "mlp.experts", _GLU, ("num_local_experts",), fused="interleaved",
                      fused_names=("gate_up_proj.weight", "down_proj.weight"), layout="fused",
                      fused_bias_names=("gate_up_proj_bias", "down_proj_bias"),
                      fused_also=(FusedAlso(("gate_up_proj", "down_proj"), "interleaved_transposed"),)),
    # nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B: non-gated experts, up_proj -> fc1, down_proj -> fc2
    "nemotron_h": Family("mixer.experts", "mixer.switch_mlp", {"up_proj": "fc1", "down_proj": "fc2"},
                         ("n_routed_experts",)),
}


PENDING: dict[str, Family] = {}  # rows waiting on a pipeline change (see moequant.archs)


@dataclass(frozen=True)
class VisionLanguage:
    """A vision-language release that mlx-vlm runs whole (vision tower, projector and language
    model). Its FAMILIES row says how the language model's experts are published; this row says
    what mlx-lm's text-only output drops. The runner is chosen in target.resolve_config."""

    module: str  # mlx_vlm.models.<module>
    # config keys holding the parts mlx-lm has no use for: a config with all of them set is a VLM;
    # a text-only (mlx-lm) output's config.json leaves them out, as it leaves out their weights
    vision_keys: tuple[str, ...] = ("vision_config",)


VISION_LANGUAGE: dict[str, VisionLanguage] = {
    # Qwen/Qwen3-VL-30B-A3B-Instruct: model.visual.{patch_embed, pos_embed, blocks.{b}, merger,
    # deepstack_merger_list.{d}} beside model.language_model.*; mlx-vlm: vision_tower.*, language_model.model.*
    "qwen3_vl_moe": VisionLanguage("qwen3_vl_moe"),
    # Qwen/Qwen3.5-35B-A3B: model.visual.{patch_embed, pos_embed, blocks.{b}, merger} (no deepstack)
    # beside model.language_model.*; mlx-vlm: vision_tower.*, language_model.model.*
    "qwen3_5_moe": VisionLanguage("qwen3_5_moe"),
    # meta-llama/Llama-4-Scout-17B-16E-Instruct: vision_model.{patch_embedding.linear, class_embedding,
    # positional_embedding_vlm, model.layers.{b}, vision_adapter.mlp} and multi_modal_projector.linear_1
    # beside language_model.model.*; mlx-vlm's names are the release's
    "llama4": VisionLanguage("llama4"),
    # moonshotai/Kimi-VL-A3B-Instruct: vision_tower.{patch_embed, encoder.blocks.{b}.{wqkv, wo, norm0, norm1,
    # mlp.fc0/fc1}, encoder.final_layernorm} and multi_modal_projector.{pre_norm, linear_1, linear_2} beside
    # language_model.model.*; mlx-vlm drops `encoder.` and nests wqkv/wo under attn
    "kimi_vl": VisionLanguage("kimi_vl"),
    # zai-org/GLM-4.5V: model.visual.{patch_embed.proj (Conv3d), post_conv_layernorm, embeddings.position_embedding,
    # blocks.{b}, post_layernorm, downsample (Conv2d), merger} beside model.language_model.* (GLM-4.5-Air's MoE);
    # mlx-vlm: vision_tower.*, language_model.model.*
    "glm4v_moe": VisionLanguage("glm4v_moe"),
    # google/gemma-4-26B-A4B-it: model.vision_tower.{patch_embedder, encoder.layers.{b}} and
    # model.embed_vision.embedding_projection beside model.language_model.*; mlx-vlm drops the model. prefix
    "gemma4": VisionLanguage("gemma4"),
}


@dataclass(frozen=True)
class Alias:
    """`key` is what mlx-lm's ModelArgs reads; `sources` are other spellings, tried in order.

    A dotted source (`rope_parameters.rope_theta`) reads a nested key. An alias only fills a key
    that the config lacks, and only when the target ModelArgs takes that key.
    """

    key: str
    sources: tuple[str, ...]
    note: str = field(default="", compare=False)


CONFIG_ALIASES: tuple[Alias, ...] = (
    # transformers 5 moved rope_theta under rope_parameters; mlx-lm's mixtral and qwen2_moe
    # default rope_theta to 1e6, so a missed alias loads silently and computes wrong logits.
    Alias("rope_theta", ("rope_parameters.rope_theta",), "transformers 5"),
    # transformers 5 keeps a partial rotary dimension with the other RoPE values
    Alias("partial_rotary_factor", ("rope_parameters.partial_rotary_factor",), "transformers 5"),
    # transformers 5 writes num_local_experts for the Qwen MoE families; mlx-lm reads num_experts
    Alias("num_experts", ("num_local_experts", "n_routed_experts"), "transformers 5"),
    Alias("num_local_experts", ("num_experts",), "older Mixtral-style exports"),
    # VLM-era configs may spell the dtype either way
    Alias("torch_dtype", ("dtype",), "transformers 5"),
)

# transformers model_types whose model mlx-lm runs under another model_type: the output's config.json
# carries mlx-lm's (mlx-lm's own MODEL_REMAPPING aliases, e.g. kimi_k2 -> deepseek_v3, need no row)
MODEL_TYPES: dict[str, str] = {
    "hunyuan_v1_moe": "hunyuan",  # transformers' HunYuanMoEV1Config; mlx-lm's hunyuan module
    # transformers' Qwen3_5MoeForCausalLM (the language model alone, model.layers.*): mlx-lm's qwen3_5_moe reads a
    # flat config as its text_config and prefixes the tensors with language_model. itself (sanitize)
    "qwen3_5_moe_text": "qwen3_5_moe",
    "llama4_text": "llama4",  # transformers' Llama4ForCausalLM, inside mlx-lm's llama4 (WRAPPED)
}


@dataclass(frozen=True)
class Wrapped:
    """A transformers text-only class of a model mlx-lm runs only inside its multimodal wrapper: the
    output is the wrapper's, config.json nested under text_config and tensors under its prefix."""

    prefixes: tuple[tuple[str, str], ...]  # source tensor-key prefix -> mlx-lm's, first match wins


# transformers model_type -> how its tensors sit in the wrapper (mlx-lm's model_type: MODEL_TYPES)
WRAPPED: dict[str, Wrapped] = {
    # transformers' Llama4ForCausalLM (model_type llama4_text: model.layers.*, lm_head): mlx-lm's llama4 reads
    # text_config and holds language_model.model.*, language_model.lm_head (its llama4_text module is the dense
    # Llama-4-architecture model, no experts)
    "llama4_text": Wrapped((("model.", "language_model.model."), ("lm_head.", "language_model.lm_head."))),
}

@dataclass(frozen=True)
class AbsentAsZeros:
    """Tensors mlx-lm's model always has and transformers' only when a config flag is on (biases):
    with the flag off, SRC has none and they are written as zeros, which compute the same function."""

    flag: str  # transformers' config key
    keys: str  # regex over mlx-lm's parameter keys
    what: str  # the tensors, in the user's words


# mlx-lm model_type -> its rows, in alphabetical order of model_type
ABSENT_AS_ZEROS: dict[str, tuple[AbsentAsZeros, ...]] = {
    # mlx-lm's phimoe builds q/k/v/o_proj and lm_head with bias=True (mlx_lm/models/phimoe.py Attention, Model);
    # transformers' PhimoeConfig has attention_bias and lm_head_bias (default false; Phi-3.5-MoE says true)
    "phimoe": (
        AbsentAsZeros("attention_bias", r"\.self_attn\.[qkvo]_proj\.bias$", "attention q/k/v/o_proj biases"),
        AbsentAsZeros("lm_head_bias", r"^lm_head\.bias$", "the lm_head bias"),
    ),
}

# mlx-lm model_types whose ModelArgs holds the language model's keys in another class (a text_config, or a flat
# config read as one): that class, so renames and aliases fill the keys it reads
TEXT_ARGS: dict[str, str] = {
    "llama4": "mlx_lm.models.llama4.TextArgs",
    "qwen3_5_moe": "mlx_lm.models.qwen3_5.TextModelArgs",
    "qwen3_vl_moe": "mlx_lm.models.qwen3_moe.ModelArgs",  # its text_config's model_type (qwen3_vl_moe_text) has none
}

# (transformers model_type, architectures[0]) whose model mlx-lm runs under another model_type than the
# one it picks for that pair (mlx-lm's own MODEL_ARCHITECTURE_REMAPPING pairs need no row)
MODEL_ARCHITECTURES: dict[tuple[str, str], str] = {
    # transformers 5's BailingHybrid is Ling 3.0's Kimi Delta Attention + MLA (modeling_bailing_hybrid.py:
    # BailingHybridDeltaAttention), which mlx-lm runs as bailing_moe_v3; mlx-lm picks that module only for
    # architectures BailingMoeV3ForCausalLM, and otherwise Ling 2.5's lightning-attention bailing_hybrid
    ("bailing_hybrid", "BailingHybridForCausalLM"): "bailing_moe_v3",
}

# Tensor names transformers 5 writes on save_pretrained that neither the release nor mlx-lm has (its
# conversion_mapping renames keys on load and reverses the renames on save, for every layer): mlx-lm
# model_type -> (regex on the tensor key, replacement). A row applies only where the key is not a
# parameter of the target model and its replacement is, so a release's own names pass untouched.
TENSOR_RENAMES: dict[str, tuple[tuple[str, str], ...]] = {
    # transformers' conversion_mapping.py (kimi_linear): .block_sparse_moe. <-> .mlp., saved for the dense
    # first layer too, whose MLP mlx-lm reads as mlp.{gate,up,down}_proj
    "kimi_linear": ((r"\.block_sparse_moe\.(gate_proj|up_proj|down_proj)\.", r".mlp.\1."),),
    # transformers' conversion_mapping.py (bailing_hybrid): .self_attn.dense. <-> .o_proj., saved as dense for
    # the Kimi Delta Attention layers too, whose output projection mlx-lm reads as attention.o_proj
    "bailing_moe_v3": ((r"\.attention\.dense\.", ".attention.o_proj."),),
}

# config.json keys transformers keeps for itself: never filled from its defaults
TRANSFORMERS_BOOKKEEPING = frozenset({
    "architectures", "transformers_version", "_name_or_path", "return_dict", "output_hidden_states",
    "output_attentions", "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id", "problem_type",
    "dtype", "torch_dtype", "auto_map", "model_type", "quantization_config", "quantization",
})

# rope_parameters.rope_type values that mean "no scaling" (anything else becomes rope_scaling)
PLAIN_ROPE_TYPES = ("default", None)
