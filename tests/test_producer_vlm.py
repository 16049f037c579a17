"""Vision-language MoE model_types transformers writes, converted and held to transformers' own forward.

The checkpoints are written whole by the producer (tests/producer.py PRODUCED_VLM: transformers'
...ForConditionalGeneration with a tiny text_config and vision_config, weights re-drawn,
save_pretrained); transformers' forward on text tokens (input_ids only, no pixels) is the reference (a
block-diffusion model's: its logits over a given canvas after them, producer.canvas_inputs). Each must:
- convert with --no-quantize for mlx-vlm (vision tower kept) to logits within 1e-4 of
  transformers' (float32; the row's max_abs where transformers' own float32 logits are further from its
  float64 ones), top-1 equal, or the plan must say that mlx-vlm's model differs;
- convert at 4 and 8 bits for mlx-vlm to logits no further from transformers' than a simulated round trip
  of the same weights (producer.simulated_logits) is, and run quantized in mlx-vlm;
- convert text only for mlx-lm (`--for mlx-lm`) to logits within 1e-4 of transformers' too, where
  mlx-lm has the language model (else be refused in one line);
- with one image (both sides given the very same input_ids, pixel_values and grid arrays, in the
  layout transformers' image processor gives: producer.image_inputs), convert with --no-quantize for
  mlx-vlm to logits within 1e-4 of transformers', or the plan must say where mlx-vlm's model differs
  (ignored.IGNORED_BY_MLX_VLM), and with that difference undone on the loaded model, match.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", minversion="5.0")

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402

from moequant.convert import Conversion  # noqa: E402
from moequant.errors import CheckpointError, LayoutError  # noqa: E402
from moequant.evaluate import compare_logits, load_float32  # noqa: E402
from moequant.registry import MODEL_TYPES, VISION_LANGUAGE  # noqa: E402
from moequant.formats import Quant  # noqa: E402
from moequant.ignored import IGNORED_BY_MLX_VLM  # noqa: E402
from moequant.plan import Role  # noqa: E402

from producer import (CANVAS, E, PRODUCED_VLM, TOKENS, canvas_inputs, image_inputs, mlx_image_inputs,  # noqa: E402
                      model_class, produced, redraw, reference_model, simulated_logits,  # noqa: F401  (produced: a fixture)
                      tiny_config)

MAX_ABS = 1e-4  # as test_producer: float32 both sides, only summation order differs

# text-only outputs mlx-lm 0.32.2 has no model for: refused in one line
MLX_LM_HAS_NONE = {"glm4v_moe", "glm5_next", "qwen4_exp",  # no mlx_lm.models.<model_type> (mlx-vlm runs them)
                   "inkling_mm_model",  # no inkling model in mlx-lm 0.32.2
                   "step3p7",  # no step3p7 model (its step3p5 reads a flat Step-3.5 config, not text_config)
                   "qwen3_omni_moe",
                   "ernie4_5_vl_moe",  # no ernie4_5_moe_vl model (its ernie4_5_moe is the text-only release's)
                   "diffusion_gemma",  # no diffusion_gemma model (a block-diffusion encoder-decoder)
                   "unlimited_ocr"}  # no unlimited_ocr model (its deepseek_v2 has MLA attention only)


def _ids() -> mx.array:
    return mx.array(TOKENS.astype(np.int32))


def _logits(model, model_type: str, **kwargs) -> mx.array:
    """mlx-vlm's logits for TOKENS (over CANVAS for a block-diffusion model: producer.canvas_inputs)."""
    out = model(_ids(), **kwargs, **canvas_inputs(model_type, "mlx-vlm"))
    return getattr(out, "logits", out)


def _differs(conversion: Conversion, runner: str = "mlx-lm") -> list[str]:
    """The plan's notes saying the runner's model differs from transformers' (mlx-lm's: the language
    model; mlx-vlm's: its vision tower, on prompts with an image)."""
    return [n for n in conversion.plan.notes if n.startswith(f"{runner}'s ") and "differs from transformers" in n]


def _on_text(conversion: Conversion) -> list[str]:
    """The plan's notes saying mlx-vlm's own language model differs from transformers' (on text too)."""
    return [n for n in _differs(conversion, "mlx-vlm") if "on prompts with an image" not in n]


class _LanguageAttention(nn.Module):
    """An attention of mlx-lm's, called as mlx-vlm's decoder layers call theirs."""

    def __init__(self, attention):
        super().__init__()
        self.attention = attention

    def __call__(self, x, mask=None, cache=None, position_ids=None):
        return self.attention(x, mask, cache)


def _language_as_transformers(model) -> None:
    """What IGNORED_BY_MLX_VLM says mlx-vlm's language model computes differently (_on_text), undone on a
    loaded model: mlx-lm's layer (which computes as transformers' does) holding the same modules."""
    inner = model.model
    if inner.config.model_type == "minimax_m3_vl":  # sparse layers: key blocks selected per index head
        from mlx_lm.models import minimax_m3_vl

        args = minimax_m3_vl.TextArgs.from_dict(vars(inner.config.text_config))
        for i, layer in enumerate(inner.language_model.model.layers):
            theirs = layer.self_attn
            if theirs.has_sparse_index:
                ours = minimax_m3_vl.Attention(args, i)
                for name in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm", "index_q_proj",
                             "index_k_proj", "index_q_norm", "index_k_norm"):
                    setattr(ours, name, getattr(theirs, name))
                layer.self_attn = _LanguageAttention(ours)
    else:
        raise AssertionError(f"no undoing for {inner.config.model_type}")


def _vision_as_transformers(model) -> None:
    """What IGNORED_BY_MLX_VLM says mlx-vlm's vision tower computes differently, undone on a loaded
    model: transformers' activations in place of mlx-vlm's."""
    inner = model.model
    if inner.config.model_type == "qwen3_vl_moe":  # blocks: hidden_act gelu_pytorch_tanh; mergers: exact GELU
        tower = inner.vision_tower
        for block in tower.blocks:
            block.mlp.act_fn = nn.GELU(approx="tanh")
        for merger in [tower.merger, *tower.deepstack_merger_list]:
            merger.act_fn = nn.GELU()
    elif inner.config.model_type == "llama4":  # exact GELU in the encoder MLPs and the pixel-shuffle MLP
        tower = inner.vision_model
        for layer in tower.model.layers:
            layer.mlp.activation_fn = nn.GELU()
        tower.vision_adapter.mlp.activation_fn = nn.GELU()
    elif inner.config.model_type == "ernie4_5_moe_vl":  # the image's start and end tokens to the multimodal experts
        config, token_types = inner.config, inner._build_token_type_ids

        def as_transformers(input_ids, pixel_values=None):
            types = token_types(input_ids, pixel_values)
            ends = (input_ids == config.image_start_token_id) | (input_ids == config.image_end_token_id)
            return types if types is None else mx.where(ends, 1, types)

        inner._build_token_type_ids = as_transformers
    elif inner.config.model_type == "kimi_k25":  # blocks: hidden_act gelu_pytorch_tanh, LayerNorm eps 1e-5
        tower = inner.vision_tower
        for block in tower.blocks:
            block.mlp.activation_fn = nn.GELU(approx="tanh")
            block.norm0.eps = block.norm1.eps = 1e-5
        tower.final_layernorm.eps = 1e-5
    else:
        raise AssertionError(f"no undoing for {inner.config.model_type}")


def test_every_vision_language_row_transformers_has_is_produced():
    # kimi_vl's release is custom code (trust_remote_code): transformers has no kimi_vl config class; a row that
    # transformers names otherwise (ernie4_5_moe_vl: its ernie4_5_vl_moe, MODEL_TYPES) is produced under its name
    def spelled(m: str) -> set[str]:
        return {m} if m in transformers.CONFIG_MAPPING else {
            t for t, runs_as in MODEL_TYPES.items() if runs_as == m and t in transformers.CONFIG_MAPPING}

    assert set(PRODUCED_VLM) == set().union(*map(spelled, VISION_LANGUAGE))


@pytest.mark.parametrize("runner", ["mlx-vlm", "mlx-lm"])
@pytest.mark.parametrize("model_type", list(PRODUCED_VLM))
def test_no_quantize_matches_transformers_or_says_why_not(tmp_path, produced, model_type, runner):
    src, reference = produced(model_type)
    if runner == "mlx-lm" and model_type in MLX_LM_HAS_NONE:
        runs_as = MODEL_TYPES.get(model_type, model_type)  # as mlx-vlm names it
        with pytest.raises(CheckpointError, match=rf"model_type '{runs_as}' is not supported by mlx-lm") as e:
            Conversion(src, None, dtype="float32", runner=runner)
        assert "\n" not in str(e.value)
        return
    conversion = Conversion(src, None, dtype="float32", runner=runner)
    list(conversion.run(tmp_path / "dst", pool="threads"))  # the process pool is tested elsewhere
    out = json.loads((tmp_path / "dst" / "config.json").read_text())
    vision_kept = all(out.get(k) for k in VISION_LANGUAGE[MODEL_TYPES.get(model_type, model_type)].vision_keys)
    assert vision_kept == (runner == "mlx-vlm")
    assert runner == "mlx-vlm" or not _differs(conversion, "mlx-vlm")  # no vision tower, no note about one
    ours = load_float32(tmp_path / "dst")
    closeness = compare_logits(mx.array(reference), _logits(ours, model_type))
    if _differs(conversion):  # said, and true
        assert closeness.max_abs > 100 * MAX_ABS, closeness
        return
    if _on_text(conversion):  # said, true, and the whole difference
        assert closeness.max_abs > 100 * MAX_ABS, closeness
        _language_as_transformers(ours)
        closeness = compare_logits(mx.array(reference), _logits(ours, model_type))
    assert closeness.max_abs <= PRODUCED_VLM[model_type].max_abs and closeness.top1 == 1.0, closeness


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("model_type", list(PRODUCED_VLM))
def test_quantized_for_mlx_vlm_is_within_a_simulated_round_trip(tmp_path, produced, model_type, bits):
    src, reference = produced(model_type)
    conversion = Conversion(src, Quant.make("affine", bits, 64), dtype="float32", runner="mlx-vlm")
    if _differs(conversion):
        pytest.skip("mlx-vlm's model differs from transformers' (the float test checks the note)")
    list(conversion.run(tmp_path / "dst", pool="threads"))  # the process pool is tested elsewhere
    model = load_float32(tmp_path / "dst")
    if _on_text(conversion):  # said (the float test checks it): the round trip is held to transformers' function
        _language_as_transformers(model)
    ours = compare_logits(mx.array(reference), _logits(model, model_type))
    # what the plan keeps float in the language model (the vision tower's paths would match its layers by
    # number and name, and no vision weight reaches logits on text tokens)
    kept = [r for r in conversion.plan.rows if r.quant is None and r.role != Role.VISION]
    keep = frozenset(r.path for r in kept) | frozenset(
        r.role.value for r in kept if r.role.value in ("embedding", "lm_head"))
    simulated = compare_logits(mx.array(reference), mx.array(simulated_logits(model_type, src, bits, keep=keep)))
    assert ours.kl <= 1.1 * simulated.kl + 1e-4, (ours, simulated)
    # only the language model is quantized (ProducedVLM.quantized): vision (and audio) towers and projectors stay float
    scales = [k for f in (tmp_path / "dst").glob("*.safetensors") for k in mx.load(str(f)) if k.endswith(".scales")]
    assert scales and all(k.startswith(PRODUCED_VLM[model_type].quantized) for k in scales), scales

    # the quantized model runs in mlx-vlm itself, loaded as a user loads it (model and processor) where the
    # release has processor files
    import mlx_vlm
    from mlx_vlm.utils import load_model

    if PRODUCED_VLM[model_type].files:
        model, processor = mlx_vlm.load(str(tmp_path / "dst"))
        assert processor.tokenizer.convert_ids_to_tokens(image_inputs(model_type)["input_ids"][0, 4].item())
    else:
        model = load_model(tmp_path / "dst")
    logits = _logits(model, model_type, pixel_values=None)
    mx.eval(logits)
    shape = (CANVAS if canvas_inputs(model_type, "mlx-vlm") else TOKENS).shape
    assert logits.shape[:2] == shape and np.isfinite(np.array(logits)).all()


def test_minimax_m3_vl_vision_sizes_reach_mlx_vlm():
    # mlx-vlm's vision tower reads them from img_token_compression_config only (its default 2, transformers' too)
    from mlx_vlm.models.minimax_m3_vl import ModelConfig

    from moequant.target import resolve_config

    config = tiny_config("minimax_m3_vl").to_dict()
    config["vision_config"].update(spatial_merge_size=1, temporal_patch_size=1)
    vision = ModelConfig.from_dict(resolve_config(config, "mlx-vlm")[0]).vision_config
    assert (vision.spatial_merge_size, vision.temporal_patch_size) == (1, 1)


def test_every_mlx_vlm_row_names_code_on_both_sides():
    for model_type, rows in IGNORED_BY_MLX_VLM.items():
        for row in rows:
            assert "transformers" in row.message and f"mlx_vlm/models/{model_type}/" in row.message, row


# unlimited_ocr's image goes through the release's SAM encoder (mlx-vlm builds no other): 57 s in transformers and
# ~460 s in mlx-vlm per forward on the 2-core VM, past CI's budget; measured by hand (2026-12-06): 0.284 max abs as
# mlx-vlm computes it (its CLIP blocks' exact GELU, said in the plan), 8.0e-6 with quick_gelu (x·σ(1.702x)) put
# back on its vision_model.transformer.layers' MLPs
@pytest.mark.parametrize("model_type", [m for m in PRODUCED_VLM if m != "unlimited_ocr"])
def test_image_input_matches_transformers_or_says_why_not(tmp_path, produced, model_type):
    src, _ = produced(model_type)
    inputs = image_inputs(model_type)
    model = reference_model(model_type, model_class(model_type).from_pretrained(src, dtype=torch.float32).eval())
    takes = inspect.signature(model.forward).parameters
    with torch.inference_mode():
        def forward(pixel_values):
            # a block-diffusion model hands its prompt's inputs on to its encoder (**kwargs) beside the canvas
            canvas = canvas_inputs(model_type, "transformers", 1)
            kwargs = {k: torch.from_numpy(v) for k, v in inputs.items() if k in takes or canvas}
            return model(**{**kwargs, "pixel_values": torch.from_numpy(pixel_values)}, use_cache=False,
                         **canvas).logits.numpy()

        reference = mx.array(forward(inputs["pixel_values"]))
        other_image = mx.array(forward(-inputs["pixel_values"]))
    assert mx.abs(reference - other_image).max().item() > 0.01  # the image reaches the logits

    conversion = Conversion(src, None, dtype="float32", runner="mlx-vlm")
    list(conversion.run(tmp_path / "dst", pool="threads"))
    ours = load_float32(tmp_path / "dst")
    if _on_text(conversion):  # said, and checked on text (test_no_quantize_matches_transformers_or_says_why_not)
        _language_as_transformers(ours)
    mlx_inputs = {k: mx.array(v) for k, v in mlx_image_inputs(model_type, inputs).items()}
    ids = mx.array(inputs["input_ids"])
    mlx_inputs.update(canvas_inputs(model_type, "mlx-vlm", 1))
    closeness = compare_logits(reference, ours(ids, **mlx_inputs))
    if notes := [n for n in _differs(conversion, "mlx-vlm") if n not in _on_text(conversion)]:
        # said, located, and the whole difference
        assert len(notes) == 1 and "on prompts with an image" in notes[0], notes
        differs = closeness.max_abs
        _vision_as_transformers(ours)
        closeness = compare_logits(reference, ours(ids, **mlx_inputs))
        assert differs > 3 * closeness.max_abs, (differs, closeness)  # undone, most of the difference goes
    assert closeness.max_abs <= PRODUCED_VLM[model_type].max_abs and closeness.top1 == 1.0, closeness


def test_kimi_k25_with_compressed_tensors_experts_converts_exactly(tmp_path, produced):
    """moonshotai/Kimi-K2.5 publishes its routed experts as compressed-tensors pack-quantized int4 (group 32):
    read as the values they hold (transformers' forward of exactly those weights, float32), and at 4 bits,
    group 32 copied bit for bit (the same packing as MLX affine)."""
    import variants

    src, _ = produced("kimi_k25")
    stored = variants.to_compressed_tensors(src, tmp_path / "release")
    model = model_class("kimi_k25").from_pretrained(variants.float_copy(src, tmp_path / "reference", stored),
                                                     dtype=torch.float32).eval()
    with torch.inference_mode():
        reference = model(torch.from_numpy(TOKENS), use_cache=False).logits.numpy()
    list(Conversion(tmp_path / "release", None, dtype="float32").run(tmp_path / "float", pool="threads"))
    closeness = compare_logits(mx.array(reference), load_float32(tmp_path / "float")(_ids()))
    assert closeness.max_abs <= MAX_ABS and closeness.top1 == 1.0, closeness

    list(Conversion(tmp_path / "release", Quant.make("affine", 4, 32)).run(tmp_path / "q4", pool="threads"))
    ours = mx.load(str(tmp_path / "q4" / "model.safetensors"))
    theirs = mx.load(str(tmp_path / "release" / "model.safetensors"))
    experts = "language_model.model.blocks.2.mlp.experts"
    packed = mx.stack([theirs[f"{experts}.{e}.down_proj.weight_packed"].view(mx.uint32) for e in range(4)])
    assert mx.array_equal(ours["language_model.model.layers.2.mlp.switch_mlp.down_proj.weight"], packed)


def test_verify_against_transformers_records_routes_of_a_model_that_reads_its_expert_stack(tmp_path, produced):
    """mlx-vlm's inkling reads its expert stack's down_proj before calling the stack: verify's router capture,
    standing in for the stack, still answers for it (surgery.Recorder), and the whole comparison runs."""
    from moequant.verify import verify

    src, _ = produced("inkling_mm_model")
    list(Conversion(src, None, dtype="float32", runner="mlx-vlm").run(tmp_path / "dst", pool="threads"))
    report = verify(tmp_path / "dst", src, _ids(), against_transformers=True)
    assert report.transformers.max_abs <= MAX_ABS and report.transformers.top1 == 1.0, report.transformers
    assert len(report.router_agreement) == 2 and report.min_router_agreement == 1.0


def test_verify_gives_a_block_diffusion_model_the_same_canvas_on_both_sides(tmp_path, produced):
    """DiffusionGemma's forward draws a random canvas unless given one: verify hands mlx-vlm's model and
    transformers' the prompt's own tokens as the canvas (registry.CANVAS), so the float output compares equal."""
    from moequant.verify import verify

    src, _ = produced("diffusion_gemma")
    list(Conversion(src, None, dtype="float32", runner="mlx-vlm").run(tmp_path / "dst", pool="threads"))
    report = verify(tmp_path / "dst", src, _ids(), against_transformers=True)
    for closeness in (report.closeness, report.transformers):
        assert closeness.max_abs <= PRODUCED_VLM["diffusion_gemma"].max_abs and closeness.top1 == 1.0, closeness


def test_diffusion_gemma_encoder_keeps_its_own_layer_scalars(tmp_path, produced):
    """DiffusionGemma's prompt encoder shares every weight with the canvas decoder but its layer_scalar buffers
    (saved apart, model.encoder.language_model.layers.*): made unlike the decoder's, they reach mlx-vlm."""
    src, _ = produced("diffusion_gemma")
    model = model_class("diffusion_gemma").from_pretrained(src, dtype=torch.float32).eval()
    for i, (encoder, decoder) in enumerate(zip(model.model.encoder.language_model.layers, model.model.decoder.layers)):
        encoder.layer_scalar.fill_(0.5 + 0.2 * i)
        decoder.layer_scalar.fill_(1.3 - 0.1 * i)
    with torch.inference_mode():
        reference = model(torch.from_numpy(TOKENS), **canvas_inputs("diffusion_gemma", "transformers")).logits.numpy()
    model.save_pretrained(tmp_path / "src")
    list(Conversion(tmp_path / "src", None, dtype="float32", runner="mlx-vlm").run(tmp_path / "dst", pool="threads"))
    closeness = compare_logits(mx.array(reference), _logits(load_float32(tmp_path / "dst"), "diffusion_gemma"))
    assert closeness.max_abs <= PRODUCED_VLM["diffusion_gemma"].max_abs and closeness.top1 == 1.0, closeness


def test_a_prompt_encoder_attending_both_ways_is_said(tmp_path, produced):
    """DiffusionGemma's use_bidirectional_attention "all" (transformers: the whole prompt both ways) is causal in
    mlx-vlm's encoder: the plan says so. Not measured: transformers 5.25's own encoder fails on it (is_causal
    passed twice to its attention)."""
    import shutil

    src, _ = produced("diffusion_gemma")
    assert not _differs(Conversion(src, None, dtype="float32", runner="mlx-vlm"), "mlx-vlm")  # "vision": none
    shutil.copytree(src, tmp_path / "src")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    config["text_config"]["use_bidirectional_attention"] = "all"
    (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    notes = _on_text(Conversion(tmp_path / "src", None, dtype="float32", runner="mlx-vlm"))
    assert len(notes) == 1 and "use_bidirectional_attention = 'all'" in notes[0], notes


def test_an_attention_scale_mlx_vlm_ignores_is_said(tmp_path):
    """transformers' Step-3.7 scales attention by query_pre_attn_scalar, mlx-vlm's step3p7 by head_dim: a
    release stating another scale converts with the plan saying so, and the logits do differ."""
    config = tiny_config("step3p7")
    config.text_config.query_pre_attn_scalar = 2 * config.text_config.head_dim
    model = model_class("step3p7").from_config(config, dtype=torch.float32).eval()
    redraw(model)
    with torch.inference_mode():
        reference = model(torch.from_numpy(TOKENS), use_cache=False).logits.numpy()
    model.save_pretrained(tmp_path / "src")
    conversion = Conversion(tmp_path / "src", None, dtype="float32", runner="mlx-vlm")
    assert [n for n in _differs(conversion, "mlx-vlm") if "query_pre_attn_scalar = 64" in n] == _differs(
        conversion, "mlx-vlm") != []
    list(conversion.run(tmp_path / "dst", pool="threads"))
    assert compare_logits(mx.array(reference), load_float32(tmp_path / "dst")(_ids())).max_abs > 100 * MAX_ABS


def test_audio_input_matches_transformers(tmp_path, produced):
    """inkling's audio tower (dMel bins summed through one embedding, normed) copied float: a prompt with three
    audio frames gives transformers' logits within 1e-4, both sides given the same token ids and bins."""
    src, _ = produced("inkling_mm_model")
    row = PRODUCED_VLM["inkling_mm_model"]
    ids = np.array([[5, 9, 17, row.extra["audio_bos_token_id"]] + [row.extra["audio_token_id"]] * 3 + [33, 40, 7]])
    buckets, mels = row.extra["audio_config"]["mel_vocab_size"], row.extra["audio_config"]["n_mel_bins"]
    bins = np.random.default_rng(0).integers(0, buckets, (1, 3, mels))
    model = model_class("inkling_mm_model").from_pretrained(src, dtype=torch.float32).eval()
    with torch.inference_mode():
        def forward(audio):
            return model(input_ids=torch.from_numpy(ids), audio_input_ids=torch.from_numpy(audio),
                         use_cache=False).logits.numpy()

        reference = mx.array(forward(bins))
        assert mx.abs(reference - mx.array(forward((bins + 1) % buckets))).max().item() > 0.01  # the audio reaches them
    list(Conversion(src, None, dtype="float32", runner="mlx-vlm").run(tmp_path / "dst", pool="threads"))
    ours = load_float32(tmp_path / "dst")
    closeness = compare_logits(reference, ours(mx.array(ids), audio_input_ids=mx.array(bins)))
    assert closeness.max_abs <= MAX_ABS and closeness.top1 == 1.0, closeness


def test_ernie4_5_vl_moe_config_reaches_mlx_vlm():
    # mlx-vlm's ernie4_5_moe_vl reads the language model's keys at the root of config.json, MoE layers as a span and
    # an interval, the expert sets as a list, the resampler's sizes under its own names, the tower's in the release's
    from mlx_vlm.models.ernie4_5_moe_vl.language import Ernie4_5_MoeMLP

    from moequant.ignored import ignored_notes
    from moequant.target import build_model, resolve_config

    config = tiny_config("ernie4_5_vl_moe")
    config.text_config.num_hidden_layers = 5
    config.text_config.mlp_layer_types = ["dense", "sparse", "dense", "sparse", "dense"]
    config.text_config.rms_norm_eps = 1e-6
    config.vision_config.update({"temporal_merge_size": 2, "rms_norm_eps": 1e-5})
    model = build_model(resolve_config(config.to_dict(), "mlx-vlm")[0])
    ours, text, vision = model.config, model.config.text_config, model.config.vision_config
    assert [isinstance(layer.mlp, Ernie4_5_MoeMLP) for layer in model.language_model.model.layers] == [
        t == "sparse" for t in config.text_config.mlp_layer_types]
    theirs = config.text_config
    assert (text.moe_num_experts, text.moe_intermediate_size, text.moe_k, text.moe_num_shared_experts) == (
        [E, E], theirs.moe_intermediate_size, theirs.moe_k, theirs.moe_num_shared_experts)
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads,
            text.vocab_size, text.rms_norm_eps, text.rope_theta, text.mrope_section, text.tie_word_embeddings) == (
        theirs.hidden_size, 5, theirs.num_attention_heads, theirs.num_key_value_heads, theirs.vocab_size, 1e-6,
        theirs.rope_parameters["rope_theta"], theirs.rope_parameters["mrope_section"], config.tie_word_embeddings)
    assert (ours.hidden_size, ours.pixel_hidden_size, ours.spatial_conv_size, ours.temporal_conv_size) == (
        theirs.hidden_size, config.vision_config.hidden_size, config.vision_config.spatial_merge_size, 2)
    assert (ours.image_token_id, ours.video_token_id, ours.image_start_token_id, ours.image_end_token_id) == (
        config.image_token_id, config.video_token_id, config.image_start_token_id, config.image_end_token_id)
    block = model.vision_tower.blocks[0]
    assert (vision.depth, vision.num_heads, vision.patch_size, vision.spatial_merge_size, block.norm1.eps,
            block.mlp.fc1.weight.shape[0]) == (2, 2, 14, 2, 1e-5, config.vision_config.intermediate_size)
    # the resampler's norms and the tower's rotary base, constants in mlx-vlm: said where transformers reads others
    notes = ignored_notes(resolve_config(config.to_dict(), "mlx-vlm")[0])
    assert [n.split(": ")[1] for n in notes if "on prompts with an image" in n] == [
        "image_start_token_id = 256", "rms_norm_eps = 1e-06", "vision_config.rms_norm_eps = 1e-05"]
    assert len(ignored_notes(resolve_config(tiny_config("ernie4_5_vl_moe").to_dict(), "mlx-vlm")[0])) == 1


def test_ernie4_5_vl_moe_layer_pattern_mlx_vlm_cannot_say_is_one_line():
    from moequant.target import resolve_config

    config = tiny_config("ernie4_5_vl_moe").to_dict()
    config["text_config"]["mlp_layer_types"] = ["sparse", "dense", "sparse"]  # MoE at 0 and 2: (l + 1) % n says no
    with pytest.raises(CheckpointError, match=r"mlp_layer_types \['sparse', 'dense', 'sparse'\] is not an MoE layer "
                                              r"every n within one span") as e:
        resolve_config(config, "mlx-vlm")
    assert "\n" not in str(e.value)


def test_ernie4_5_vl_moe_experts_are_checked_set_by_set(tmp_path, produced):
    # the multimodal experts have their own (smaller) intermediate size; one of them shaped otherwise is named
    from safetensors.numpy import load_file, save_file

    src, _ = produced("ernie4_5_vl_moe")
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in src.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    tensors = load_file(src / "model.safetensors")
    key = "model.layers.1.mlp.experts.6.up_proj.weight"
    tensors[key] = tensors[key][:32]
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LayoutError, match=rf"{key}: shape \(32, 128\); expected \(64, 128\) like expert 4"):
        list(Conversion(bad, None, dtype="float32", runner="mlx-vlm").run(tmp_path / "dst", pool="threads"))


def test_an_unlimited_ocr_sam_mlx_vlm_does_not_build_is_refused_in_one_line():
    """mlx-vlm's unlimited_ocr builds its SAM encoder at the release's sizes whatever sam_config says: a release with
    another SAM (global attention in other layers: the same tensor shapes) is refused, the release's converts."""
    from moequant.ignored import ignored_notes
    from moequant.target import resolve_config

    config = tiny_config("unlimited_ocr").to_dict()
    assert not [n for n in ignored_notes(resolve_config(config, "mlx-vlm")[0]) if "sam_config" in n]
    config["vision_config"]["sam_config"]["global_attn_indexes"] = [3, 7, 11]
    with pytest.raises(CheckpointError, match=r"vision_config\.sam_config = .*; expected the release's SAM") as e:
        ignored_notes(resolve_config(config, "mlx-vlm")[0])
    assert "\n" not in str(e.value) and "SAMViTConfig()" in str(e.value)
