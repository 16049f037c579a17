"""Every Mixture-of-Experts architecture mlx-lm and mlx-vlm can run, and what moequant does with it.

One row per config.json `model_type` (aliases that mlx-lm maps to another module included). A
row is data: `moequant archs` prints it, and tests/test_archs.py holds it to account — every
"supported" row has a FAMILIES row and a tiny checkpoint in the release's layout, and its smoke
test (tiny -> convert -> mlx-lm load -> logits close to mlx-lm's own float model) passes; every
"blocked" row has the same, with its smoke test expected to fail until the named change lands;
every MoE module of the installed mlx-lm has a row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum


class Status(str, Enum):
    SUPPORTED = "supported"  # FAMILIES row + tiny checkpoint + passing smoke test
    BLOCKED = "blocked"  # FAMILIES row + tiny checkpoint; the smoke test waits on the change named
    NOT_YET = "not yet"  # no row yet; the reason says what it takes


@dataclass(frozen=True)
class Arch:
    model_type: str  # as config.json says it
    runner: str  # "mlx-lm" or "mlx-vlm"
    module: str  # the runner's model module (mlx_lm.models.<module>)
    status: Status
    release: str  # the release whose layout and config keys the tiny checkpoint follows (hub id where known)
    note: str  # supported: what the tiny checkpoint exercises; otherwise why not, and what it takes

    def to_dict(self) -> dict:
        return {**asdict(self), "status": self.status.value}


S, N = Status.SUPPORTED, Status.NOT_YET
_LM, _VLM = "mlx-lm", "mlx-vlm"

NOT_BUILT_VLM = "not converted yet (mlx-vlm runs it; moequant has no row for it yet); mlx_vlm.convert converts it meanwhile"
# mlx-vlm outputs that are built and smoke-tested (tests/test_vlm.py); the row's note says so too
VLM_DONE = ("mlx-vlm output (the default when mlx-vlm is installed; --for mlx-lm for text only): vision tower and "
            "projector copied float, language model under language_model.*, processor files copied; "
            "smoke-tested with mlx_vlm.load on text and an image")

ARCHITECTURES: tuple[Arch, ...] = (
    # ---- supported: FAMILIES row, tiny checkpoint, smoke test ----
    Arch("mixtral", _LM, "mixtral", S, "mistralai/Mixtral-8x7B-v0.1",
         "block_sparse_moe.experts.{e}.w1/w2/w3; transformers 5 config keys; mlx-lm's mixtral has no sliding window: where config.json sets one shorter than the context, mlx-lm attends to every earlier token and outputs differ from transformers' on prompts longer than the window (the plan notes it)"),
    Arch("qwen2_moe", _LM, "qwen2_moe", S, "Qwen/Qwen1.5-MoE-A2.7B", "shared expert + shared_expert_gate, qkv bias; mlx-lm's qwen2_moe has no sliding window: where config.json sets one shorter than the context (use_sliding_window), mlx-lm attends to every earlier token and outputs differ from transformers' on prompts longer than the window (the plan notes it)"),
    Arch("qwen3_moe", _LM, "qwen3_moe", S, "Qwen/Qwen3-30B-A3B", "qk norm; transformers 5 config keys; mlx-lm's qwen3_moe has no sliding window: where config.json sets one shorter than the context (use_sliding_window), mlx-lm attends to every earlier token and outputs differ from transformers' on prompts longer than the window (the plan notes it)"),
    Arch("deepseek_v3", _LM, "deepseek_v3", S, "deepseek-ai/DeepSeek-V3",
         "MLA (kv_b_proj), dense first layer, shared experts, e_score_correction_bias, MoEGate (no to_quantized)"),
    Arch("kimi_k2", _LM, "deepseek_v3", S, "moonshotai/Kimi-K2-Instruct", "DeepSeek-V3 layout, YaRN"),
    Arch("joyai_llm_flash", _LM, "deepseek_v3", S, "jdopensource/JoyAI-LLM-Flash",
         "DeepSeek-V3 layout under its own model_type (custom code): MLA, dense first layer, shared expert, "
         "correction bias"),
    Arch("deepseek", _LM, "deepseek", S, "deepseek-ai/deepseek-moe-16b-base", "dense first layer, shared experts"),
    Arch("deepseek_v2", _LM, "deepseek_v2", S, "deepseek-ai/DeepSeek-V2-Lite",
         "MLA without q_lora, YaRN, greedy softmax routing"),
    Arch("olmoe", _LM, "olmoe", S, "allenai/OLMoE-1B-7B-0924", "q_norm/k_norm over all heads"),
    Arch("phimoe", _LM, "phimoe", S, "microsoft/Phi-3.5-MoE-instruct",
         "block_sparse_moe w1/w2/w3, LayerNorm with bias, attention and lm_head biases, longrope; mlx-lm's phimoe has no sliding window: where config.json sets one shorter than the context, mlx-lm attends to every earlier token and outputs differ from transformers' on prompts longer than the window (the plan notes it). A transformers save with attention_bias / lm_head_bias false gets zero biases (the same function)"),
    Arch("minimax_m2", _LM, "minimax", S, "MiniMaxAI/MiniMax-M2",
         "block_sparse_moe w1/w2/w3, sigmoid router + e_score_correction_bias, qk norm, partial rotary"),
    Arch("Klear", _LM, "Klear", S, "Kwai-Klear/Klear-46B-A2.5B-Instruct",
         "experts stacked in place, expert_bias, shared experts, 2-way coefficient (a shared-expert gate)"),
    Arch("mellum", _LM, "mellum", S, "JetBrains Mellum (MoE)", "sliding + full layers, per-layer-type rope"),
    Arch("dots1", _LM, "dots1", S, "rednote-hilab/dots.llm1.inst",
         "experts stacked in place, dense first layer, shared experts, e_score_correction_bias; mlx-lm's dots1 has no sliding window: where config.json sets one shorter than the context (sliding layers below max_window_layers), mlx-lm attends to every earlier token and outputs differ from transformers' on prompts longer than the window (the plan notes it)"),
    Arch("glm4_moe", _LM, "glm4_moe", S, "zai-org/GLM-4.5-Air",
         "partial rotary, attention bias, dense first layer, shared experts"),
    Arch("glm4_moe_lite", _LM, "glm4_moe_lite", S, "GLM-4.7-Flash", "MLA in GLM's MoE"),
    Arch("solar_open", _LM, "solar_open", S, "Upstage Solar Open 100B", "GLM-4.5-style MoE (glm4_moe's model)"),
    Arch("ernie4_5_moe", _LM, "ernie4_5_moe", S, "baidu/ERNIE-4.5-21B-A3B-PT",
         ("moe_* config keys, dense first layer, shared experts. mlx-lm's ernie4_5_moe drops moe_statics.e_score_correction_bias, "
         "which transformers adds to the routing scores before choosing experts: where that bias is not zero (trained "
         "releases), mlx-lm picks other experts for some tokens and its outputs differ from transformers' (the plan "
         "notes it; moequant converts the weights exactly, the difference is mlx-lm's model)")),
    Arch("granitemoe", _LM, "granitemoe", S, "ibm-granite/granite-3.1-3b-a800m-instruct",
         "fused input_linear [E, 2I, H] / output_linear, nested router.layer gate, muP multipliers, tied"),
    Arch("hunyuan", _LM, "hunyuan", S, "tencent/Tencent-Hunyuan-Large",
         "cross-layer KV sharing, nested gate.wg, shared_mlp, NTK-alpha rope, tied embeddings. transformers' "
         "HunYuanMoEV1 (model_type hunyuan_v1_moe, e.g. a Hunyuan-A13B fine-tune saved by transformers) converts "
         "too, but mlx-lm's hunyuan does not renormalize the top-k routing weights as transformers does, so its "
         "logits differ (a plan note; equal only when moe_topk = num_experts); an untied lm_head is refused "
         "(mlx-lm's hunyuan has none)"),
    Arch("bailing_moe", _LM, "bailing_moe", S, "inclusionAI/Ling-mini-2.0",
         "word_embeddings, query_key_value, gate renamed by sanitize (gate.gate_proj), expert_bias, group routing"),
    Arch("afmoe", _LM, "afmoe", S, "Arcee Trinity Mini",
         "nested router.gate, expert_bias, gated attention, sliding + full layers, muP embedding scale"),
    Arch("exaone_moe", _LM, "exaone_moe", S, "LG K-EXAONE (MoE)",
         "MoEGate (no to_quantized), correction bias renamed by sanitize, sliding window"),
    Arch("laguna", _LM, "laguna", S, "poolside Laguna",
         "gate and correction bias renamed by sanitize (gate.proj), per-head attention gate"),
    Arch("llama4", _LM, "llama4", S, "meta-llama/Llama-4-Scout-17B-16E-Instruct",
         "fused transposed experts gate_up_proj [E, H, 2I], router, shared expert, dense + MoE layers, for mlx-lm "
         "(text only); and the whole release (vision_model with its pixel-shuffle adapter, multi_modal_projector) "
         "for mlx-vlm's llama4: " + VLM_DONE + ". transformers' text-only Llama4ForCausalLM (model_type llama4_text) "
         "converts for mlx-lm's llama4 (config under text_config, tensors under language_model.*) when its layers "
         "follow mlx-lm's hard-coded pattern (RoPE + chunked attention except every 4th layer, 4 layers or more). "
         "mlx-vlm's vision tower applies a fast GELU approximation where transformers' applies exact GELU, so logits "
         "of prompts with an image differ from transformers' (0.08 on a tiny model; the plan notes it)"),
    Arch("lfm2_moe", _LM, "lfm2_moe", S, "LiquidAI/LFM2-8B-A1B",
         "short conv + attention, w1/w2/w3 renamed by sanitize, conv weights transposed, expert_bias, tied "
         "(tie_word_embeddings false is refused: mlx-lm's lfm2_moe has no lm_head of its own)"),
    Arch("jamba", _LM, "jamba", S, "ai21labs/AI21-Jamba-Mini-1.5",
         ("Mamba + attention, MoE every other layer, conv1d transposed. mlx-lm's jamba weighs the chosen experts by a "
         "softmax over their logits only (weights sum to 1), transformers by the softmax over all experts (unnormalized): "
         "every MoE layer's output differs from transformers', by a factor of the chosen experts' share of the routing "
         "probability (the plan notes it; moequant converts the weights exactly, the difference is mlx-lm's model)")),
    Arch("nemotron_h", _LM, "nemotron_h", S, "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16",
         "Mamba-2 + attention + MoE blocks (backbone.*), relu² experts up_proj/down_proj -> fc1/fc2, "
         "MoEGate (no to_quantized)"),
    Arch("granitemoehybrid", _LM, "granitemoehybrid", S, "ibm-granite/granite-4.0-h-tiny",
         "Mamba-2 + NoPE attention, GraniteMoE's fused experts and router.layer, shared_mlp, tied, muP"),
    Arch("deepseek_v32", _LM, "deepseek_v32", S, "deepseek-ai/DeepSeek-V3.2-Exp",
         "DeepSeek-V3 + the sparse-attention indexer (self_attn.indexer.*)"),
    Arch("glm_moe_dsa", _LM, "glm_moe_dsa", S, "GLM-5",
         "DeepSeek-V3.2's model, transformers 5 config (rope_parameters)"),
    Arch("gemma4", _LM, "gemma4", S, "google/gemma-4-26B-A4B-it",
         "fused experts beside a dense MLP in every layer, router.proj beside the experts block (a gate found from "
         "the layer), k = v full-attention layers with proportional rope, sliding layers, layer_scalar, tied, softcap, "
         "for mlx-lm (text only); and the whole release (model.vision_tower, model.embed_vision; no audio tower) for "
         "mlx-vlm's gemma4: " + VLM_DONE),
    Arch("gemma4_text", _LM, "gemma4_text", S, "Gemma 4 26B-A4B (text-only, Gemma4ForCausalLM)",
         "gemma4's language model as transformers' Gemma4ForCausalLM saves it (model.layers.*)"),
    Arch("kimi_linear", _LM, "kimi_linear", S, "moonshotai/Kimi-Linear-48B-A3B-Instruct",
         "Kimi Delta Attention (conv1d transposed) + MLA without rope, block_sparse_moe w1/w2/w3 with gate, "
         "correction bias and shared experts moved to mlp by sanitize, dense first layer"),
    Arch("bailing_moe_linear", _LM, "bailing_moe_linear", S, "inclusionAI/Ring-mini-linear-2.0",
         "Ling 2.0's MoE (gate renamed by sanitize, expert_bias, group routing) with linear-attention layers "
         "(query_key_value, g_proj, group g_norm) and full-attention layers"),
    Arch("bailing_hybrid", _LM, "bailing_hybrid", S, "inclusionAI Ling 2.5 (BailingMoeV2_5ForCausalLM)",
         "linear-attention + MLA (q_lora, kv_b_proj) layers, gate renamed by sanitize, expert_bias, group routing"),
    Arch("bailing_moe_v3", _LM, "bailing_moe_v3", S, "inclusionAI/Ling-3.0-Flash (BailingMoeV3ForCausalLM)",
         "config.json says model_type bailing_hybrid; mlx-lm picks this module by architectures "
         "BailingMoeV3ForCausalLM (or transformers' BailingHybridForCausalLM save): Kimi Delta Attention (conv1d "
         "transposed) + MLA without q_lora, word_embeddings, mlp.gate + expert_bias, group routing"),
    Arch("mimo_v2_flash", _LM, "mimo_v2_flash", S, "XiaomiMiMo/MiMo-V2-Flash",
         "full + sliding layers (hybrid_layer_pattern) with their own kv heads and rope theta, attention sinks, "
         "q/k head dim != v head dim, dense first layer, sigmoid router + e_score_correction_bias. A release's "
         "sliding_window_size S: mlx-lm's sliding layers attend to the last S positions (query included), "
         "transformers' to S + 1 (configuration_mimo_v2_flash.py: sliding_window = sliding_window_size + 1, as the "
         "SGLang reference): the two differ once a sequence is longer than S; a config written by transformers with "
         "only sliding_window converts to sliding_window_size = sliding_window, transformers' window"),
    Arch("longcat_flash", _LM, "longcat_flash", S, "meituan-longcat/LongCat-Flash-Chat",
         "two MLA blocks and two dense MLPs per layer (self_attn.{0,1}, mlps.{0,1}), shortcut MoE whose router "
         "(mlp.router.classifier, out = E + zero_expert_num) also scores identity experts, correction bias"),
    Arch("longcat_flash_ngram", _LM, "longcat_flash_ngram", S, "LongCat-Flash (n-gram embeddings)",
         "LongCat-Flash's layers, embed_tokens renamed by sanitize, n-gram embedders and projections "
         "(ngram_embeddings.*: embedding role)"),
    Arch("mistral4", _LM, "mistral4", S, "Mistral Small 4 (language model, transformers' Mistral4ForCausalLM)",
         "MLA with q_lora, YaRN + Llama-4 attention scaling, fused experts (gate_up_proj [E, 2I, H]), correction "
         "bias, shared experts. The Mistral Small 4 release itself (a mistral3 vision-language checkpoint, "
         "text_config model_type mistral4) is not converted yet; its language model as transformers' "
         "Mistral4ForCausalLM saves it is"),
    # ---- need mlx-lm's sanitize over the whole checkpoint (Qwen3-Next family), or MXFP4 sources ----
    Arch("qwen3_next", _LM, "qwen3_next", S, "Qwen/Qwen3-Next-80B-A3B-Instruct",
         "Gated DeltaNet + attention, shared expert gate, (1 + w) norms"),
    Arch("qwen3_5_moe", _LM, "qwen3_5_moe", S, "Qwen3.5-35B-A3B",
         "fused experts under model.language_model, Gated DeltaNet, (1 + w) norms, for mlx-lm (text only); and the "
         "whole release (model.visual, no deepstack) for mlx-vlm's qwen3_5_moe: " + VLM_DONE + ". transformers' "
         "text-only Qwen3_5MoeForCausalLM (model_type qwen3_5_moe_text) converts for mlx-lm's qwen3_5_moe"),
    Arch("qwen3_vl_moe", _LM, "qwen3_vl_moe", S, "Qwen/Qwen3-VL-30B-A3B-Instruct",
         "fused in x out experts under model.language_model, for mlx-lm (text only); and the whole release (model.visual "
         "+ deepstack mergers) for mlx-vlm's qwen3_vl_moe: " + VLM_DONE + ". mlx-vlm's vision tower swaps "
         "transformers' two GELUs (exact in its blocks, the tanh approximation in its mergers), so logits of prompts "
         "with an image differ from transformers' slightly (5e-4 on a tiny model; the plan notes it)"),
    Arch("minimax_m3_vl", _LM, "minimax_m3_vl", S, "MiniMaxAI/MiniMax-M3",
         "language model under language_model.model, for mlx-lm (text only; mlx-lm drops the vision tower): "
         "block_sparse_moe.experts.{e}.w1/w2/w3, shared experts, dense first layer (mlp.*), e_score_correction_bias, "
         "lightning-indexer sparse attention (self_attn.index_*), (1 + w) norms. An mlx-vlm output (vision tower "
         "kept) is not converted yet: mlx_vlm.convert converts it meanwhile"),
    # mlx-vlm's minimax_m3_vl stacks the routed experts and the shared expert together as one fused
    # block_sparse_moe.switch_mlp.gate_up_proj [E + 1, 2I, H] (pack_shared_expert), a layout a FAMILIES row
    # (one per model_type, shared with mlx-lm's per-projection switch_mlp) cannot say
    Arch("step3p5", _LM, "step3p5", S, "stepfun-ai/Step-3.5-Flash",
         "experts published stacked (moe.{gate,up,down}_proj [E, out, in]) and handed to sanitize under those names, "
         "which renames them and adds 1 to every zero-centred norm on seeing them; router_bias, share_expert, "
         "full + sliding layers with their own heads, per-layer rope theta, head-wise attention gate, clamped SwiGLU"),
    Arch("gpt_oss", _LM, "gpt_oss", S, "openai/gpt-oss-20b",
         "MXFP4 fused experts (gate/up rows interleaved) read as MLX mxfp4, fused biases, router bias, sinks; and "
         "transformers' own float save (gate_up_proj [E, H, 2I], columns interleaved). mlx-lm's YaRN always "
         "truncates the correction range, the releases say truncate false: logits differ slightly from "
         "transformers' (a plan note)"),
    # ---- not yet ----
    # MiniMax-Text-01/M1 in transformers: lightning (linear) attention layers beside softmax attention
    # (modeling_minimax.py MiniMaxLightningAttention) and a softmax router; mlx-lm's minimax module is
    # MiniMax-M2's architecture (softmax attention everywhere, sigmoid router with e_score_correction_bias)
    Arch("minimax", _LM, "minimax", N, "MiniMaxAI/MiniMax-Text-01",
         "MiniMax-Text-01 / MiniMax-M1 (lightning attention) cannot run in mlx-lm: its minimax model is MiniMax-M2's "
         "architecture. MiniMax-M2 checkpoints (model_type minimax_m2) are supported"),
    # mlx-lm keeps DBRX's experts as a list of per-expert Linear modules (no SwitchLinear), so plan.find_roles
    # sees neither routed experts nor a router; the release (and transformers 5's save) fuses them as
    # transformer.blocks.{l}.ffn.experts.mlp.w1/v1/w2 [E·I, H], w2 transposed per expert
    Arch("dbrx", _LM, "dbrx", N, "databricks/dbrx-instruct",
         "not converted yet (mlx-lm holds DBRX's experts as separate layers, which moequant's plan cannot tell "
         "apart from the rest yet); mlx_lm.convert converts it meanwhile, experts quantized like any layer"),
    Arch("flex_olmo", _LM, "flex_olmo", N, "allenai/FlexOlmo-7x7B-1T",
         "mlx-lm 0.32.2 has no model for it (FlexOlmo normalizes after attention and after the MoE block, OLMo-2 "
         "style; mlx-lm's olmoe normalizes before them, so it cannot run FlexOlmo's weights): run it with "
         "transformers, or convert once mlx-lm has a flex_olmo model"),
    Arch("granitemoeshared", _LM, "granitemoeshared", N, "ibm-research/moe-7b-1b-active-shared-experts",
         "mlx-lm 0.32.2 has no model for it (GraniteMoE with a shared MLP beside the experts; mlx-lm's granitemoe "
         "has no shared MLP): run it with transformers, or convert once mlx-lm has a granitemoeshared model"),
    Arch("jetmoe", _LM, "jetmoe", N, "jetmoe/jetmoe-8b",
         "mlx-lm 0.32.2 has no model for it (JetMoE routes attention heads too: a mixture of attention heads, "
         "experts.input_linear / output_linear per attention layer): run it with transformers, or convert once "
         "mlx-lm has a jetmoe model"),
    # mlx-lm's phixtral ModelArgs reads model_dim / num_heads / num_layers / num_vocab, which the release's
    # config.json (model_type phi-msft: n_embd, n_head, n_layer, vocab_size) does not carry, so mlx-lm runs it
    # only at its defaults (phi-2's 2560 x 32 layers); mixer.Wqkv and lm_head.linear would need role patterns
    Arch("phixtral", _LM, "phixtral", N, "mlabonne/phixtral-4x2_8",
         "mlx-lm cannot read phixtral's published config.json (it expects model_dim, num_heads, num_layers, "
         "num_vocab; the release has n_embd, n_head, n_layer, vocab_size), so no output would load: run it with "
         "transformers"),
    # tried: a tiny release in Kimi-Linear's layout (custom code, no transformers class; names inferred from
    # mlx-lm's sanitize) converted exactly at --no-quantize; the attention-residual projections (*_res_proj) now
    # stay float (rule model-keeps). What remains: a FAMILIES row like kimi_linear's and that tiny release
    Arch("kimi_k3", _LM, "kimi_k3", N, "Kimi-K3",
         "not converted yet (no Kimi-K3 checkpoint layout checked against its producer); mlx_lm.convert converts "
         "it meanwhile"),
    # mlx-lm's attention holds its block-diagonal output projection as a SwitchLinear (self_attn.o_a_proj), which
    # plan.find_roles takes for routed experts (and the hyper-connection mixers for router gates); the release is
    # DeepSeek's own (layers.{l}.ffn.experts.{e}.w1/w2/w3, attn.wq_a/wkv/wo_a) in fp8/fp4 with ue8m0 `.scale`
    # tensors, a source format moequant does not read
    Arch("deepseek_v41", _LM, "deepseek_v41", N, "DeepSeek-V4.1",
         "not converted yet (DeepSeek's own fp8/fp4 release format, and an attention layer moequant would mistake "
         "for experts); mlx_lm.convert converts it meanwhile"),
    Arch("deepseek_v41_text", _LM, "deepseek_v41", N, "DeepSeek-V4.1",
         "not converted yet, as deepseek_v41; mlx_lm.convert converts it meanwhile"),
    # mlx-lm's muse_spark attention calls Metal-only kernels (mlx_lm.kernels.qk_norm_rope, qk_norm,
    # rms_norm_sigmoid_gate): no Linux CPU smoke test. The rest is rows: fused experts (mlp.experts.gate_up_proj
    # [E, 2I, h], h = moe_hidden_size, stacked in place) and a tiny release
    Arch("muse_spark", _LM, "muse_spark", N, "meta-models/Muse-Spark-Open-816B-A42B",
         "not converted yet: mlx-lm runs it only on Apple GPUs (Metal kernels), so moequant cannot check its "
         "output; mlx_lm.convert on a Mac converts it meanwhile"),
    # ---- VLMs (mlx-vlm; mlx-lm runs some of their language models) ----
    Arch("kimi_vl", _VLM, "kimi_vl", S, "moonshotai/Kimi-VL-A3B-Instruct",
         "MoonViT vision tower (vision_tower.encoder.*) + projector + DeepSeek-V3 MoE (MLA without q_lora, shared "
         "experts, correction bias, MoEGate) under language_model.model, for mlx-vlm only: " + VLM_DONE + ". No "
         "text-only output: mlx-lm 0.32.2's kimi_vl cannot load the release itself (its sanitize never splits "
         "self_attn.kv_b_proj into the embed_q / unembed_out its DeepSeek-V3 attention has)"),
    Arch("glm4v_moe", _VLM, "glm4v_moe", S, "zai-org/GLM-4.5V",
         "GLM ViT (model.visual: Conv3d patch embedding, downsample Conv2d, merger) + GLM-4.5-Air's MoE (mrope with "
         "partial rotary, attention bias, dense first layer, shared experts, correction bias) under "
         "model.language_model, for mlx-vlm only: " + VLM_DONE + ". No text-only output: mlx-lm 0.32.2 has no "
         "glm4v_moe model"),
    # the release stores its routed experts as compressed-tensors INT4 (weight_packed / weight_scale /
    # weight_shape), a source format dequant.py does not read; mm_projector.* needs a vision role pattern
    Arch("kimi_k25", _VLM, "kimi_k25", N, "moonshotai/Kimi-K2.5",
         "not converted yet: its experts are compressed-tensors INT4, a source format moequant does not read yet; "
         "mlx_vlm.convert converts it meanwhile"),
    # one per-expert numbering (mlp.experts.{0..2E-1}) holds two expert sets that mlx-vlm stacks into two stacks
    # (switch_mlp: text, switch_mlp_1: multimodal) with two routers, and moe_num_experts is a list: a Family row
    # names one stack for one range; needs a per-expert handoff that accepts a list expert count
    Arch("ernie4_5_moe_vl", _VLM, "ernie4_5_moe_vl", N, "baidu/ERNIE-4.5-VL-28B-A3B-PT",
         "not converted yet (two expert sets per layer, text and multimodal); mlx_vlm.convert converts it "
         "meanwhile"),
    # config.json names its language model language_config (not text_config), where experts.num_experts does not
    # look; then a tiny release (language.model.layers.{l}.mlp.experts.{e}.*, vision.* SigLIP via timm,
    # projector.*, image_newline, view_seperator) and its custom processor's image inputs
    Arch("deepseek_vl_v2", _VLM, "deepseek_vl_v2", N, "deepseek-ai/deepseek-vl2",
         "not converted yet (its config nests the language model under language_config); mlx_vlm.convert converts "
         "it meanwhile"),
    # mlx-vlm runs the whole release (thinker with vision and audio towers; talker and code2wav), and both
    # thinker.model.layers.{l}.mlp.experts.{e}.* and talker.model.layers.{l}.mlp.experts.{e}.* are MoE stacks with
    # expert counts under thinker_config.text_config / talker_config.text_config (one count per checkpoint today)
    Arch("qwen3_omni_moe", _VLM, "qwen3_omni_moe", N, "Qwen/Qwen3-Omni-30B-A3B-Instruct",
         "not converted yet (two MoE language models, thinker and talker, beside vision and audio towers); "
         "mlx_vlm.convert converts it meanwhile"),
    # MoE model_types mlx-vlm 0.7.10 runs (Switch layers in its module) that no moequant row covers yet
    *(Arch(model_type, _VLM, model_type, N, "", NOT_BUILT_VLM) for model_type in (
        "cohere2_moe", "deepseek_v4", "flint", "glm5_next", "hy_v4", "inkling", "kolibri1", "llada2_moe",
        "longcat_flash_sparse", "moondream3", "openai_privacy_filter", "qwen4_exp", "step3p7", "youtu_vl",
        "zaya1_vl")),
)


def arch_rows(status: Status | str | None = None) -> list[Arch]:
    """The table, supported rows first (for `moequant archs`; `Arch.to_dict()` for --json)."""
    order = {Status.SUPPORTED: 0, Status.BLOCKED: 1, Status.NOT_YET: 2}
    rows = [a for a in ARCHITECTURES if status is None or a.status == Status(status)]
    return sorted(rows, key=lambda a: (order[a.status], a.runner, a.model_type.lower()))


def supported(runner: str | None = None) -> list[str]:
    """model_types whose smoke test passes today (rows of one runner: mlx-lm's, or VLMs only mlx-vlm runs)."""
    return [a.model_type for a in ARCHITECTURES if a.status == Status.SUPPORTED and runner in (None, a.runner)]
