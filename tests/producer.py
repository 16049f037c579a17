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
import pytest
import torch
import transformers

VOCAB = 256
TOKENS = np.array(
    [[(7 * i + 3) % VOCAB for i in range(32)], [(11 * i + 5) % VOCAB for i in range(32)]], dtype=np.int64
)
# the canvas a block-diffusion model denoises after TOKENS (canvas_inputs): not TOKENS, so that a prompt and
# canvas swapped shows
CANVAS = np.array([[(5 * i + 1) % VOCAB for i in range(16)], [(3 * i + 2) % VOCAB for i in range(16)]], dtype=np.int64)

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

# what every transformers config's to_dict carries beside its values: in a sub-config that mlx-lm's ModelArgs
# holds as a dict (DBRX's attn_config / ffn_config), bookkeeping that a resave adds and no model reads
BOOKKEEPING = frozenset(transformers.PretrainedConfig().to_dict())

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
    # 2-D expert parameters (name suffixes) stored [E·in, out], each expert's block transposed (DBRX's w2):
    # simulated_logits rounds each block along its rows, the input dimension
    input_rows: tuple[str, ...] = ()


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
    # (mlx-lm's llama4 hard-codes that period), MoE every other layer as Maverick; the dense layers' MLP tiny
    # (intermediate_size_mlp, 16384 by default: 53 MB a checkpoint)
    Produced("llama4_text", {"num_experts_per_tok": 1, "num_hidden_layers": 4, "moe_layers": [1, 3],
                             "intermediate_size_mlp": I_DENSE}),
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
                      "ffn_config": {"ffn_hidden_size": I_MOE, "moe_num_experts": E, "moe_top_k": TOP_K}},
             input_rows=("ffn.experts.mlp.w2",)),
    Produced("laguna", {"mlp_layer_types": ["dense", "sparse", "sparse"]}),
    Produced("mellum"),
    Produced("kimi_linear", _KDA),
    # mlx-lm's bailing_moe_v3 makes every layer_group_size-th layer and the last partial group full attention
    Produced("bailing_hybrid", {**_KDA, "layer_types": ["linear_attention", "linear_attention", "full_attention"],
                                "layer_group_size": 3}),
    Produced("solar_open"),
    # no step3p5: transformers 5.25 reads model_type step3p5 only as step3p7's text_config (Step3p7TextConfig); its
    # one model for it, Step3p7TextModel, has no lm_head, and no causal-LM class takes it (the release is custom code)
    # MoE as 26B-A4B; per-layer inputs kept, over the tiny vocabulary (262144 by default: 805 MB a checkpoint)
    Produced("gemma4_text", {"layer_types": _SLIDING, "enable_moe_block": True, "top_k_experts": TOP_K,
                             "vocab_size_per_layer_input": VOCAB}),
    Produced("qwen3_5_moe_text", {"layer_types": _HYBRID}),
    Produced("flex_olmo"),
    Produced("granitemoeshared"),
    Produced("jetmoe"),
    # mlx-vlm runs it (no vision part), tied as the release; a dense first layer (transformers' mlp_layer_types)
    # and a full-attention layer
    Produced("cohere2_moe", {"first_k_dense_replace": 1, "sliding_window_pattern": 2,
                             "tie_word_embeddings": True}),
    # a token classifier (class logits, no lm_head) that mlx-vlm runs: gpt-oss's experts (fused in x out, halves),
    # biases, sinks, bidirectional attention within sliding_window; its YaRN as the release (factor 32, not truncated)
    # (I neither H nor H / 2: gate_up [E, H, 2I] and down [E, I, H] are then told apart by shape, here and in
    # simulated_logits, and an orientation mistake cannot pass)
    Produced("openai_privacy_filter", {"intermediate_size": 3 * I_MOE},
             model_class="OpenAIPrivacyFilterForTokenClassification"),
    # mlx-vlm runs it; RoPE in the sliding layers only, a dense first layer (mlp_only_layers), attention sinks
    Produced("flint", {"layer_types": _SLIDING, "mlp_only_layers": [0]}),
    # mlx-vlm runs it; RoPE in the sliding layers only, GLM-4's four norms per layer
    Produced("kolibri1", {"layer_types": _SLIDING}),
    # mlx-vlm runs it (no vision part); no prompt longer than index_topk and no SwiGLU clamp (swiglu_limit inf), the
    # two places mlx-vlm's hy_v4 differs (plan notes; test_producer holds them true with limits that bite)
    Produced("hy_v4", {"index_topk": 64, "max_position_embeddings": 64, "swiglu_limit": math.inf}),
    # mlx-vlm runs it (no vision part): a sliding, a compressed sparse (indexer: 8 heads, top 4 of 8 entries at 32
    # tokens) and a heavily compressed layer, the first hash-routed, grouped output projection (2 groups), YaRN on
    # the compressed branches; a context too short for mlx-vlm's hierarchical top-k (a plan note otherwise)
    Produced("deepseek_v4", {"num_key_value_heads": 1, "head_dim": 128, "o_groups": 2, "o_lora_rank": 64,
                             "index_n_heads": 8, "index_head_dim": 64, "index_topk": 4, "max_position_embeddings": 64,
                             "layer_types": ["sliding_attention", "compressed_sparse_attention",
                                             "heavily_compressed_attention"],
                             "mlp_layer_types": ["hash_moe", "moe", "moe"],
                             "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                                 "original_max_position_embeddings": 16}}),
)}


# Vision-language releases converted for mlx-vlm (moequant.registry.VISION_LANGUAGE): the text vocabulary
# has room for the image tokens (ids VOCAB.., as tiny.py's releases); TOKENS stay below VOCAB, text only
VOCAB_VLM = VOCAB + 8
_IMAGE_TOKENS = {"image_token_id": VOCAB + 2, "video_token_id": VOCAB + 3, "vision_start_token_id": VOCAB,
                 "vision_end_token_id": VOCAB + 1}
# Qwen-VL's multimodal RoPE: the sections (temporal, height, width) add up to the rotary dimension / 2
_QWEN_VISION = {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "out_hidden_size": H,
                "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 64}

# Gemma 4's vision tower, tiny; one image of 4x4 patches flattened, each with its (x, y) place (transformers'
# Gemma4ImageProcessor), pooled 2x2
_GEMMA4_VISION = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "num_key_value_heads": 2, "head_dim": 32, "global_head_dim": 32, "patch_size": 16,
                  "position_embedding_size": 64, "pooling_kernel_size": 2, "default_output_length": 4}
_GEMMA4_IMAGE = {"pixel_values": (1, 16, 3 * 16 * 16), "image_position_ids": [[[x, y] for y in range(4) for x in range(4)]]}

# One image of 4x4 patches (each 2 frames x 16x16 pixels x 3 channels, flattened: transformers' Qwen2VLImageProcessor
# layout), merged 2x2 into 4 image tokens
_QWEN_IMAGE = {"pixel_values": (16, 3 * 2 * 16 * 16), "image_grid_thw": [[1, 4, 4]]}


# Qwen3-Omni's audio tower, talker (its code predictor) and code2wav, tiny; the talker has twice the thinker's experts
_OMNI_AUDIO = {"d_model": 64, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 128,
               "num_mel_bins": 16, "output_dim": H, "downsample_hidden_size": 16, "max_source_positions": 64,
               "n_window": 4, "n_window_infer": 16}
_OMNI_TALKER = {
    "talker_config": {
        "text_config": {**{k: TINY[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                  "num_attention_heads", "num_key_value_heads", "moe_intermediate_size",
                                                  "num_experts_per_tok", "shared_expert_intermediate_size")},
                        "vocab_size": 128, "num_experts": 2 * E},
        "code_predictor_config": {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                                  "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
                                  "num_code_groups": 4},
        "thinker_hidden_size": H, "num_code_groups": 4, "accept_hidden_layer": 1, "spatial_merge_size": 2},
    "code2wav_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
                        "num_key_value_heads": 2, "decoder_dim": 64, "codebook_dim": 16, "codebook_size": 32,
                        "num_quantizers": 4, "upsample_rates": [2, 2], "upsampling_ratios": [2, 2],
                        "vector_quantization_hidden_dimension": 16, "sliding_window": 8,
                        "semantic_codebook_size": 32},
}


@dataclass(frozen=True)
class ProducedVLM:
    """A vision-language model_type written whole by its ...ForConditionalGeneration class:
    text_config is TINY (vocab_size VOCAB_VLM) with `text` over it as for a Produced row, vision_config
    is `vision` (tiny, over the class's defaults), `extra` the top-level keys (image token ids);
    `files` names tiny.py's processor files for the release (mlx_vlm.load reads them); `image` the
    shapes (or values) of one image's inputs as transformers' image processor gives them (image_inputs)."""

    model_type: str
    text: dict = field(default_factory=dict)
    vision: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    model_class: str = "AutoModelForImageTextToText"
    files: str = ""
    image: dict = field(default_factory=dict)
    # the sub-config holding text_config, vision_config and `extra` (Qwen3-Omni's thinker_config), and the
    # top-level keys beside it (its talker_config, code2wav_config); "" = the top level
    within: str = ""
    top: dict = field(default_factory=dict)
    reference: str = ""  # the submodule whose forward gives the logits (Qwen3-Omni's thinker); "" = the model
    # the output's tensor-key prefixes a quantized conversion quantizes, as mlx_vlm.convert does: the language
    # model (Qwen3-Omni's talker and code2wav too, but not its code predictor); the towers and projectors stay float
    quantized: tuple[str, ...] = ("language_model.",)
    # mlx-vlm's model takes the image as its processor gives it, unlike transformers' (mlx_image_inputs): "" the
    # same arrays, "channels_first" Gemma 4's patches as the [1, 3, H, W] image they are cut from (mlx-vlm's
    # Gemma4ImageProcessor leaves patching to the model; DiffusionGemma's Model takes no image_position_ids), or a
    # key of MLX_IMAGE_INPUTS
    mlx_image: str = ""
    # mlx-vlm's model reads mm_token_type_ids too (DiffusionGemma's: the image block attended bidirectionally)
    mlx_token_types: bool = False
    # largest float32 |logit difference| the float tests allow, where transformers' own float32 forward is further
    # than MAX_ABS from its float64 one (summation order alone)
    max_abs: float = 1e-4
    image_tokens: int = 4  # the image's features: how many image tokens the prompt holds for them


PRODUCED_VLM: dict[str, ProducedVLM] = {p.model_type: p for p in (
    ProducedVLM("qwen3_vl_moe", {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                     "mrope_section": [6, 5, 5], "mrope_interleaved": True}},
                {**_QWEN_VISION, "deepstack_visual_indexes": [0]}, _IMAGE_TOKENS, files="_qwen_vl_files", image=_QWEN_IMAGE),
    ProducedVLM("qwen3_5_moe", {"layer_types": _HYBRID,
                                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                    "partial_rotary_factor": 0.25, "mrope_section": [2, 1, 1],
                                                    "mrope_interleaved": True}},
                _QWEN_VISION, _IMAGE_TOKENS, files="_qwen_vl_files", image=_QWEN_IMAGE),
    # the language model as the llama4_text row's
    ProducedVLM("llama4", PRODUCED["llama4_text"].extra,
                {"hidden_size": 64, "image_size": 64, "patch_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "intermediate_size": 256, "projector_input_dim": 128, "projector_output_dim": 128,
                 "vision_output_dim": 128},
                {"image_token_index": VOCAB + 2, "boi_token_index": VOCAB, "eoi_token_index": VOCAB + 1},
                files="_llama4_files", image={"pixel_values": (1, 3, 64, 64)}),  # 4x4 patches, pixel shuffle 0.5
    ProducedVLM("glm4v_moe", {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                  "partial_rotary_factor": 0.5, "mrope_section": [2, 3, 3]}},
                {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "patch_size": 14,
                 "image_size": 56, "out_hidden_size": H, "spatial_merge_size": 2, "temporal_patch_size": 2},
                {"image_token_id": VOCAB + 2, "video_token_id": VOCAB + 3, "image_start_token_id": VOCAB,
                 "image_end_token_id": VOCAB + 1, "video_start_token_id": VOCAB + 4, "video_end_token_id": VOCAB + 5},
                files="_glm4v_files", image={"pixel_values": (16, 3 * 2 * 14 * 14), "image_grid_thw": [[1, 4, 4]]}),
    # google/gemma-4-26B-A4B-it's language model: MoE blocks beside the dense MLP, no per-layer inputs, the
    # full-attention layers' own head_dim and shared keys / values (attention_k_eq_v), logit soft-capping, tied
    # as Gemma4Config (whose flag transformers' model reads) is; pad_token_id masks image tokens (transformers)
    ProducedVLM("gemma4", {"layer_types": _SLIDING, "enable_moe_block": True, "top_k_experts": TOP_K,
                           "hidden_size_per_layer_input": 0, "vocab_size_per_layer_input": VOCAB_VLM,
                           "global_head_dim": 64, "num_global_key_value_heads": 1, "attention_k_eq_v": True,
                           "final_logit_softcapping": 30.0, "pad_token_id": 0, "tie_word_embeddings": True},
                _GEMMA4_VISION,
                {"image_token_id": VOCAB + 2, "boi_token_id": VOCAB, "eoi_token_id": VOCAB + 1, "audio_config": None},
                files="_llama4_files", image=_GEMMA4_IMAGE),
    # zai-org/GLM-5.3-Flash's language model: KDA linear attention around one MLA layer whose DSA indexer keeps
    # index_topk of TOKENS' 32 (pools of index_kpool, so sparse attention is exercised), two hyper-connection
    # streams, a dense first layer; every head both queries and keys (the class requires it)
    ProducedVLM("glm5_next", {**_MLA, "layer_types": _HYBRID, "mlp_layer_types": ["dense", "sparse", "sparse"],
                              "qk_rope_head_dim": 0, "index_topk": 8, "index_kpool": 4, "index_head_dim": 32,
                              "index_n_heads": 8, "linear_head_dim": 32, "linear_num_heads": HEADS, "hc_mult": 2},
                {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "patch_size": 14,
                 "image_size": 56, "out_hidden_size": H, "projection_intermediate_size": 128,
                 "spatial_merge_size": 2, "temporal_patch_size": 2},
                {"image_token_id": VOCAB + 2, "video_token_id": VOCAB + 3, "image_start_token_id": VOCAB,
                 "image_end_token_id": VOCAB + 1, "video_start_token_id": VOCAB + 4, "video_end_token_id": VOCAB + 5},
                files="_glm4v_files", image={"pixel_values": (16, 3 * 2 * 14 * 14), "image_grid_thw": [[1, 4, 4]]}),
    # Qwen/Qwen4-Exp's language model: Gated DeltaNet around one QSA-indexed attention layer keeping
    # indexer_budget of TOKENS' 32 (blocks of 4; 8 indexer heads, so no two blocks tie at a zero score),
    # two hyper-connection streams, per-layer n-gram embeddings (PLE, small hashed tables) on the first layer
    ProducedVLM("qwen4_exp", {"layer_types": _HYBRID, "hc_count": 2, "hc_lowrank": 64, "ple_layer_ids": [1],
                              "ple_embed_dim": 64, "heads_per_ngram": 2, "ngram_vocab_size_base": 1000,
                              "split_ngram_parts": 2, "eos_token_id": 1, "indexer_n_heads": 8, "indexer_kv_heads": 1,
                              "indexer_head_dim": 32, "indexer_budget": 8, "indexer_compress_ratio": 4,
                              "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                  "partial_rotary_factor": 0.25, "mrope_section": [2, 1, 1],
                                                  "mrope_interleaved": True}},
                _QWEN_VISION, _IMAGE_TOKENS, files="_qwen_vl_files", image=_QWEN_IMAGE),
    # moonshotai/Kimi-K2.5: DeepSeek-V3's language model (MLA, dense first layer, shared expert) beside MoonViT; the
    # position table as large as the image's 4x4 patches (mlx-vlm interpolates only another size); image grids as
    # transformers' processor (image_grid_thw, t h w) and mlx-vlm's (image_grid_hws, h w) give them
    ProducedVLM("kimi_k25", _MLA,
                {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "pos_emb_height": 4, "pos_emb_width": 4},
                {"image_token_id": VOCAB + 2, "video_token_id": VOCAB + 3, "vision_start_token_id": VOCAB,
                 "vision_end_token_id": VOCAB + 1, "projection_hidden_size": 64, "tie_word_embeddings": False},
                files="_qwen_vl_files",
                image={"pixel_values": (16, 3, 14, 14), "image_grid_thw": [[1, 4, 4]], "image_grid_hws": [[4, 4]]}),
    # MiniMaxAI/MiniMax-M3 whole: the FFN sizes are the experts' (intermediate_size), the dense first layer's and the
    # shared expert's (equal to the experts': mlx-vlm would pack it with them); the second layer's indexer attends
    # to 2 of TOKENS' 4 blocks; a CLIP-like tower (Conv3d patches, 3-D RoPE) and a patch-merging projector
    ProducedVLM("minimax_m3_vl", {"intermediate_size": I_MOE, "dense_intermediate_size": I_DENSE,
                                  "shared_intermediate_size": I_MOE, "rotary_dim": HEAD_DIM // 2,
                                  "mlp_layer_types": ["dense", "sparse", "sparse"],
                                  "layer_types": ["full_attention", "minimax_m3_sparse", "full_attention"],
                                  "index_n_heads": 2, "index_head_dim": 32, "index_block_size": 8,
                                  "index_topk_blocks": 2},
                {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "patch_size": 14, "image_size": 56},
                {"image_token_index": VOCAB + 2, "video_token_index": VOCAB + 3, "projector_hidden_size": 128},
                image={"pixel_values": (16, 3 * 2 * 14 * 14), "image_grid_thw": [[1, 4, 4]]}),
    # thinkingmachines/Inkling: sliding layers with their own head counts and dims, relative-position bias over a
    # window shorter than TOKENS, log-scaled logits past n_floor, a dense first layer, the final hidden states divided
    # by 2 (neither the release's 24, too flat a logit for a 4-bit KL to tell, nor mlx-vlm's default 1); a patch MLP
    # vision tower (one token per [2, 8, 8, 3] patch) and the dMel audio embedding (small)
    ProducedVLM("inkling_mm_model", {"layer_types": ["hybrid", "hybrid_sliding", "hybrid"],
                                     "mlp_layer_types": ["dense", "sparse", "sparse"], "swa_num_attention_heads": 2,
                                     "swa_num_key_value_heads": 1, "swa_head_dim": 64, "sliding_window_size": 16,
                                     "rel_extent": 24, "log_scaling_n_floor": 8, "logits_mup_width_multiplier": 2.0},
                {"patch_size": 8, "num_hidden_layers": 3},
                {"image_token_id": VOCAB + 2, "audio_token_id": VOCAB + 3, "image_bos_token_id": VOCAB,
                 "audio_bos_token_id": VOCAB + 4, "audio_config": {"n_mel_bins": 8, "mel_vocab_size": 16}},
                files="_inkling_files", image={"pixel_values": (4, 2, 8, 8, 3)}),
    # stepfun-ai/Step-3.7-Flash: Step-3.5's language model (text_config model_type step3p5: experts stacked
    # moe.{gate,up,down}_proj, router_bias, share_expert, sliding layers with their own head count, head-wise
    # attention gate, RoPE per layer type with YaRN on full attention only, clamped SwiGLU (tight bounds, so they
    # clamp), routed scaling) and its perception-encoder vision tower; one 112x112 image: 8x8 patches, two stride-2
    # downsamplers, 4 image tokens
    ProducedVLM("step3p7", {"layer_types": ["full_attention", "sliding_attention", "full_attention"],
                            "mlp_layer_types": ["dense", "sparse", "sparse"], "share_expert_dim": I_MOE,
                            "num_sliding_attention_heads": 2, "pad_token_id": 0, "moe_router_scaling_factor": 3.0,
                            "max_position_embeddings": 64,
                            "swiglu_limits": [0.0, 0.0, 1.0], "swiglu_limits_shared": [0.0, 0.0, 2.0],
                            "rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 5000000.0,
                                                                   "partial_rotary_factor": 0.5, "factor": 4.0,
                                                                   "original_max_position_embeddings": 16},
                                                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}},
                {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 112,
                 "patch_size": 14, "mlp_ratio": 2.0},
                {"image_token_id": VOCAB + 2}, files="_step3p7_files", image={"pixel_values": (1, 3, 112, 112)}),
    # Qwen/Qwen3-Omni-30B-A3B-Instruct whole: the thinker (Qwen3-VL's tower, an audio tower, the MoE language model
    # whose logits are the reference) under thinker_config; a talker (a second MoE, with a shared expert, and more
    # experts than the thinker's: each stack has its own count), its code predictor and code2wav, all tiny
    ProducedVLM("qwen3_omni_moe", {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                       "mrope_section": [6, 5, 5], "mrope_interleaved": True}},
                {**_QWEN_VISION, "deepstack_visual_indexes": [0]},
                {**_IMAGE_TOKENS, "audio_config": _OMNI_AUDIO}, image=_QWEN_IMAGE, within="thinker_config",
                top=_OMNI_TALKER, reference="thinker", model_class="Qwen3OmniMoeForConditionalGeneration",
                quantized=("thinker.language_model.", "talker.model.", "talker.codec_head.", "talker.text_projection.",
                           "talker.hidden_projection.", "code2wav.")),
    # baidu/ERNIE-4.5-VL-28B-A3B-PT: two expert sets per MoE layer (text, then multimodal: its own, smaller
    # intermediate size as the release's [1536, 512]), a dense first layer, tied (Ernie4_5_VLMoeConfig's root flag,
    # which transformers reads over text_config's); 3-D RoPE sections (h, w, t) adding up to HEAD_DIM / 2
    ProducedVLM("ernie4_5_vl_moe", {"moe_intermediate_size": [I_DENSE, I_MOE],
                                    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                        "mrope_section": [6, 6, 4]}},
                {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "patch_size": 14,
                 "spatial_merge_size": 2},
                {"image_token_id": VOCAB + 2, "video_token_id": VOCAB + 3, "image_start_token_id": VOCAB,
                 "image_end_token_id": VOCAB + 1, "video_start_token_id": VOCAB + 4, "video_end_token_id": VOCAB + 5},
                # 4x4 patches of 14x14 pixels x 3 channels (one frame), merged 2x2 into 4 image tokens
                image={"pixel_values": (16, 3 * 14 * 14), "image_grid_thw": [[1, 4, 4]]}),
    # google/diffusiongemma-26B-A4B-it: gemma4's language model and vision tower (as the gemma4 row; the last layer
    # full attention, as the class forces), its weights shared by the causal prompt encoder and the canvas decoder
    # (saved once, model.decoder.*), the image block attended bidirectionally (use_bidirectional_attention "vision",
    # mlx-vlm's default); logits over CANVAS given TOKENS. transformers' own float32 logits are up to 3.3e-4 from its
    # float64 ones on this model (TOKENS as the canvas; mlx-vlm's no further), hence 5e-4 (a swapped expert: 24)
    ProducedVLM("diffusion_gemma", {"layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
                                    "top_k_experts": TOP_K, "global_head_dim": 64, "num_global_key_value_heads": 1,
                                    "use_bidirectional_attention": "vision", "pad_token_id": 0,
                                    "tie_word_embeddings": True},
                _GEMMA4_VISION,
                {"image_token_id": VOCAB + 2, "boi_token_id": VOCAB, "eoi_token_id": VOCAB + 1,
                 "canvas_length": CANVAS.shape[1]},
                model_class="DiffusionGemmaForBlockDiffusion", image=_GEMMA4_IMAGE,
                mlx_image="channels_first", mlx_token_types=True, max_abs=5e-4, quantized=("model.decoder.",)),
    # baidu/Unlimited-OCR: DeepSeek-V2's MoE with multi-head attention (a dense first layer, a shared expert);
    # the SAM encoder at the release's sizes (mlx-vlm builds no other), the CLIP blocks 1024 wide (SAM's output
    # channels) and short; one 1024x1024 global view without tiles: 16 x (16 + 1) + 1 image tokens, no interpolated
    # position table, and minutes on a CPU (SAM over 64 x 64 patches: 57 s in transformers, 476 s in mlx-vlm per
    # forward on a loaded 2-core machine)
    ProducedVLM("unlimited_ocr", {},
                {"encoder_config": {"num_hidden_layers": 2, "intermediate_size": 128}},
                {"image_token_id": VOCAB + 2},
                image={"pixel_values": (1, 3, 1024, 1024), "num_local_patches": [0], "patches_grid": [[1, 1]]},
                image_tokens=16 * 17 + 1, mlx_image="deepseek_ocr"),
)}


def canvas_inputs(model_type: str, side: str, batch: int = len(CANVAS)) -> dict:
    """The canvas a block-diffusion model's forward takes besides the prompt (moequant.registry.CANVAS), `batch`
    rows of CANVAS, as `side` ("transformers": torch, "mlx-vlm": mx) takes it: the one deterministic step both
    sides have (without it each draws a random canvas); none for another model."""
    from moequant.registry import CANVAS as KEYWORDS

    names = KEYWORDS.get(model_type)
    if not names:
        return {}
    if side == "transformers":
        return {names[0]: torch.from_numpy(CANVAS[:batch])}
    import mlx.core as mx

    return {names[1]: mx.array(CANVAS[:batch].astype(np.int32))}


def image_inputs(model_type: str) -> dict[str, np.ndarray]:
    """One prompt with one image for a PRODUCED_VLM row, as transformers' processor gives its model:
    input_ids (text, the image's start token VOCAB, its 4 image tokens, its end token VOCAB + 1, text),
    pixel_values drawn N(0, 1) in the row's `image` layout, the row's other image arrays (grid sizes,
    patch places), mm_token_type_ids (1 at image tokens: transformers' 3-D positions need it),
    attention_mask (all ones: transformers' Qwen3-Omni thinker computes 3-D positions only when given one, else
    text positions: 1.4 max abs logit difference on its tiny model) and moe_mm_token_type_ids (1 at image tokens
    and the image's start and end tokens: ERNIE-4.5-VL's processor sends all three to the multimodal experts,
    create_moe_mm_token_type_ids).
    The start token matters as a processor writes it: mlx-vlm's Qwen-VL and GLM-4.5V models find an
    image by it for its 3-D positions (transformers by mm_token_type_ids); without it mlx-vlm gives the
    image tokens text positions (1.5 max abs logit difference on qwen3_vl_moe)."""
    row = PRODUCED_VLM[model_type]
    image = row.extra.get("image_token_id", row.extra.get("image_token_index"))
    ids = np.array([[5, 9, 17, VOCAB] + [image] * row.image_tokens + [VOCAB + 1, 33, 40, 41, 7, 8, 100, 3]],
                   dtype=np.int64)
    rng = np.random.default_rng(0)
    return {"input_ids": ids, "pixel_values": rng.standard_normal(row.image["pixel_values"]).astype(np.float32),
            **{k: np.array(v, dtype=np.int64) for k, v in row.image.items() if k != "pixel_values"},
            "mm_token_type_ids": (ids == image).astype(np.int64), "attention_mask": np.ones_like(ids),
            "moe_mm_token_type_ids": np.isin(ids, [image, VOCAB, VOCAB + 1]).astype(np.int64)}


def mlx_image_inputs(model_type: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """image_inputs' arrays but input_ids (and mm_token_type_ids unless ProducedVLM.mlx_token_types) as mlx-vlm's
    model takes them (ProducedVLM.mlx_image): the very same pixels."""
    row = PRODUCED_VLM[model_type]
    if row.mlx_image in MLX_IMAGE_INPUTS:
        return MLX_IMAGE_INPUTS[row.mlx_image](inputs)
    # mlx-vlm's models find images by their tokens (mm_token_type_ids only where mlx_token_types), routing (ERNIE's
    # moe_mm_token_type_ids) from them too, and one unpadded prompt needs no attention_mask
    inputs = {k: v for k, v in inputs.items() if k not in ("input_ids", "moe_mm_token_type_ids", "attention_mask")
              and (k != "mm_token_type_ids" or row.mlx_token_types)}
    if row.mlx_image == "channels_first":
        # patches [1, pH·pW, p·p·3] in row-major places ((x, y) = image_position_ids), each (p, p, channel)
        patches = inputs.pop("pixel_values")
        inputs.pop("image_position_ids")
        side, p = math.isqrt(patches.shape[1]), math.isqrt(patches.shape[2] // 3)
        image = patches.reshape(1, side, side, p, p, 3).transpose(0, 5, 1, 3, 2, 4)
        inputs["pixel_values"] = np.ascontiguousarray(image.reshape(1, 3, side * p, side * p))
    return inputs


def _deepseek_ocr_inputs(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """mlx-vlm's DeepSeek-OCR models (unlimited_ocr): pixel_values [local tiles, global views] (the tiles zeros when
    there are none, as its processor gives them), each image's tile grid, and the image tokens' places."""
    pixels = inputs["pixel_values"]
    return {"pixel_values": np.stack([np.zeros_like(pixels), pixels]),
            "images_spatial_crop": inputs["patches_grid"], "images_seq_mask": inputs["mm_token_type_ids"] == 1}


MLX_IMAGE_INPUTS = {"deepseek_ocr": _deepseek_ocr_inputs}


def _tiny_kwargs(config_class, extra: dict, base: dict = TINY) -> dict:
    """`base`'s keys the config class has, then `extra` (None drops a key)."""
    has = set(config_class().to_dict())
    kwargs = {k: v for k, v in base.items() if k in has}
    for k, v in extra.items():
        if v is None:
            kwargs.pop(k, None)
        else:
            kwargs[k] = v
    return kwargs


def tiny_config(model_type: str) -> transformers.PretrainedConfig:
    """The model_type's config class with TINY's keys it has, then the row's extra (a PRODUCED_VLM
    row: text_config so, vision_config the row's)."""
    from transformers.models.auto import modeling_auto

    config_class = transformers.CONFIG_MAPPING[model_type]
    if model_type in PRODUCED_VLM:
        row = PRODUCED_VLM[model_type]
        holder = config_class.sub_configs[row.within] if row.within else config_class
        # a text_config of AutoConfig (Kimi-K2.5's) is its default model_type's config class
        text_class = holder.sub_configs["text_config"]
        if text_class is transformers.AutoConfig:
            text_class = transformers.CONFIG_MAPPING[config_class.sub_configs_defaults["text_config"].model_type]
        text = _tiny_kwargs(text_class, row.text, {**TINY, "vocab_size": VOCAB_VLM})
        within = {"text_config": text, "vision_config": row.vision, **row.extra}
        config = config_class(**({row.within: within} if row.within else within), **row.top)
        mapping = modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    else:
        row = PRODUCED[model_type]
        config = config_class(**_tiny_kwargs(config_class, row.extra))
        mapping = modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    # what save_pretrained of the model writes: the class that wrote it (mlx-lm picks a module by it)
    name = row.model_class
    config.architectures = [mapping[model_type] if name.startswith("Auto") else name]
    return config


def model_class(model_type: str) -> type:
    """The transformers class that writes (and runs) the model_type's row."""
    return getattr(transformers, (PRODUCED_VLM.get(model_type) or PRODUCED[model_type]).model_class)


def reference_model(model_type: str, model: torch.nn.Module) -> torch.nn.Module:
    """The part of a model_type's model whose forward gives the logits (ProducedVLM.reference)."""
    part = getattr(PRODUCED_VLM.get(model_type), "reference", "")
    return getattr(model, part) if part else model


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
    cls = model_class(model_type)
    # Auto classes build from a config with from_config; a concrete class (no Auto mapping, e.g.
    # Mistral4ForCausalLM) with PreTrainedModel._from_config, which from_config itself calls
    build = getattr(cls, "from_config", None) or cls._from_config
    model = build(config, dtype=torch.float32).eval()
    redraw(model, seed)
    with torch.inference_mode():  # a vision-language model too: token ids only, no pixels
        logits = reference_model(model_type, model)(torch.from_numpy(TOKENS), use_cache=False,
                                                    **canvas_inputs(model_type, "transformers")).logits.float().numpy()
    model.to(dtype).save_pretrained(dst)
    if model_type in PRODUCED_VLM and PRODUCED_VLM[model_type].files:
        from moequant import tiny

        # the release's tokenizer and processor files, as tiny.py writes them (image tokens from id VOCAB)
        assert tiny.V == VOCAB
        for name, content in getattr(tiny, PRODUCED_VLM[model_type].files)().items():
            (Path(dst) / name).write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
    return logits


@pytest.fixture(scope="module")
def produced(tmp_path_factory):
    """model_type -> (SRC written by write_produced, transformers' logits), once per test module."""
    cache: dict[str, tuple] = {}

    def get(model_type: str):
        if model_type not in cache:
            src = tmp_path_factory.mktemp(model_type) / "src"
            cache[model_type] = (src, write_produced(src, model_type))
        return cache[model_type]

    return get


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
    model = reference_model(model_type, model_class(model_type).from_pretrained(src, dtype=torch.float32).eval())
    config = model.config
    text = getattr(config, "text_config", None) or config
    num_experts = next((getattr(where, k) for where in (text, getattr(text, "ffn_config", None))  # DBRX's: nested
                        for k in ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
                        if getattr(where, k, None)), 0)
    hidden = text.hidden_size if hasattr(text, "hidden_size") else getattr(text, "d_model", H)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # a norm by its own module's name (DBRX's attention sits inside norm_attn_norm); fused expert biases
            # ([E, out]: gpt-oss's gate_up_proj_bias) are vectors, never quantized
            if p.ndim < 2 or "norm" in name.split(".")[-2] or "conv" in name or name.endswith("bias") or _is_router(
                    name, p, num_experts):
                continue
            if _kept(name, keep):
                continue
            if name.endswith(getattr(PRODUCED.get(model_type), "input_rows", ())):
                blocks = p.view(num_experts, -1, p.shape[-1])
                if blocks.shape[-2] % group_size == 0:
                    p.copy_(_round_trip(blocks, bits, group_size, -2).reshape(p.shape))
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
        logits = model(torch.from_numpy(TOKENS), use_cache=False,
                       **canvas_inputs(model_type, "transformers")).logits.float().numpy()
    return logits
