"""Vision-language MoE checkpoints converted for mlx-vlm: tiny release (vision tower included) ->
convert -> the real `mlx_vlm.load` (model and processor) -> forward on text, and on an image, with
logits compared against mlx-vlm's own float model of the source checkpoint."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from moequant.convert import Conversion
from moequant.errors import CheckpointError, LayoutError
from moequant.evaluate import compare_logits, load_float32
from moequant.registry import VISION_LANGUAGE
from moequant.formats import Quant
from moequant.plan import GATE_ROLES, Role
from moequant.tiny import VLM_ARCHS, write_tiny_checkpoint

from conftest import TOKENS

import mlx_vlm  # the test extra installs it: a missing mlx-vlm is an error here, not a skip

# (cosine, KL nats/token) against mlx-vlm's float model of the source, measured on these tiny models
# (mlx 0.32.4, mlx-vlm 0.7.10, Linux CPU): text tokens at 4-bit affine g64, at mxfp4, then one image.
SEEN = {
    "qwen3_5_moe": (0.9592, 0.0396, 0.9418, 0.0568, 0.9631, 0.0357),  # mlx-lm text-only: 0.9591, 0.0394, …
    "llama4": (0.9601, 0.0393, 0.9366, 0.0619, 0.9532, 0.0484),  # mlx-lm text-only: 0.9598, 0.0394, …
    "kimi_vl": (0.9544, 0.0474, 0.9264, 0.0751, 0.9358, 0.0660),
    "kimi_k25": (0.9275, 0.0728, 0.9279, 0.0735, 0.9435, 0.0578),
    "qwen3_vl_moe": (0.9653, 0.0336, 0.9569, 0.0421, 0.9803, 0.0185),  # mlx-lm text-only: 0.9654, 0.0335, …
    "glm4v_moe": (0.9704, 0.0295, 0.9524, 0.0471, 0.9718, 0.0268),
    "gemma4": (0.8122, 0.1800, 0.7536, 0.2277, 0.8479, 0.1453),  # mlx-lm text-only: 0.8125, 0.1780, … (see test_archs)
    "qwen4_exp": (0.9416, 0.0560, 0.9222, 0.0757, 0.9268, 0.0689),
    "glm5_next": (0.9331, 0.0647, 0.9087, 0.0922, 0.9576, 0.0394),
    "minimax_m3_vl": (0.9528, 0.0481, 0.9148, 0.0866, 0.9532, 0.0418),  # mlx-lm text-only: 0.9528, 0.0483, …
    "ernie4_5_moe_vl": (0.9044, 0.0936, 0.8554, 0.1434, 0.9441, 0.0573),  # tied: the 4-bit embedding is the lm_head
}
COSINE_MARGIN, KL_FACTOR = 0.01, 1.25  # as tests/test_archs.py


def _qwen_image(processor, config: dict) -> dict:
    """input_ids, pixel_values, image_grid_thw for one 48x48 image and a short prompt, through the
    checkpoint's own processor (as mlx_vlm.load built it)."""
    rng = np.random.default_rng(0)
    from PIL import Image

    image = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    text = "<|vision_start|><|image_pad|><|vision_end|>what is it?"
    inputs = processor(text=[text], images=[image], return_tensors="np")
    assert (inputs["input_ids"] == config["image_token_id"]).sum() > 1  # the image became several tokens
    return {k: mx.array(np.asarray(inputs[k])) for k in ("input_ids", "pixel_values", "image_grid_thw")}


def _pixels(token_key: str, tokens: int, shape: tuple[int, ...], **extra):
    """Image inputs built by hand (for releases whose tiny processor files are not written): a prompt
    with `tokens` image tokens (config[token_key]) among text, pixel_values of `shape`, and `extra`
    keyword arguments (grid sizes) as arrays."""
    def inputs(processor, config: dict) -> dict:
        rng = np.random.default_rng(0)
        ids = [ord(c) for c in "look: "] + [config[token_key]] * tokens + [ord(c) for c in " what is it?"]
        pixels = rng.standard_normal(shape).astype(np.float32)
        return {"input_ids": mx.array([ids]), "pixel_values": mx.array(pixels),
                **{k: mx.array(v) for k, v in extra.items()}}
    return inputs


# How each smoke test builds its image input: (processor, config) -> the model's keyword arguments
IMAGES = {
    "qwen3_vl_moe": _qwen_image,
    "qwen3_5_moe": _qwen_image,
    "llama4": _pixels("image_token_index", 4, (1, 3, 64, 64)),  # (64 / patch 16)² patches, pixel shuffle 0.5: 4
    # 4x4 patches of 14x14 pixels, merged 2x2: 4 tokens
    "kimi_vl": _pixels("media_placeholder_token_id", 4, (16, 3, 14, 14), image_grid_hws=[[4, 4]]),
    "kimi_k25": _pixels("image_token_id", 4, (16, 3, 14, 14), image_grid_hws=[[4, 4]]),  # as kimi_vl
    # 4x4 patches of 2 frames x 14x14 pixels x 3 channels, merged 2x2: 4 tokens
    "glm4v_moe": _pixels("image_token_id", 4, (16, 3 * 2 * 14 * 14), image_grid_thw=[[1, 4, 4]]),
    "qwen4_exp": _qwen_image,
    "glm5_next": _pixels("image_token_id", 4, (16, 3 * 2 * 14 * 14), image_grid_thw=[[1, 4, 4]]),  # as glm4v_moe
    "gemma4": _pixels("image_token_id", 4, (1, 3, 64, 64)),  # (64 / patch 16)² patches, pooled 2x2: 4
    # 4x4 patches of 2 frames x 14x14 pixels x 3 channels, merged 2x2: 4 tokens
    "minimax_m3_vl": _pixels("image_token_index", 4, (16, 3 * 2 * 14 * 14), image_grid_thw=[[1, 4, 4]]),
    # 4x4 patches of 14x14 pixels x 3 channels (one frame), merged 2x2: 4 tokens
    "ernie4_5_moe_vl": _pixels("im_patch_id", 4, (16, 3 * 14 * 14), image_grid_thw=[[1, 4, 4]]),
}


def _logits(model, inputs: dict) -> mx.array:
    inputs = dict(inputs)
    out = model.model(inputs.pop("input_ids"), **inputs)
    return getattr(out, "logits", out)


@pytest.mark.parametrize("arch", VLM_ARCHS)
def test_vlm_converts_loads_in_mlx_vlm_and_stays_close_to_its_float_model(tmp_path, arch):
    src = write_tiny_checkpoint(tmp_path / "src", arch, vision=True)
    config = json.loads((src / "config.json").read_text())
    reference_model = load_float32(src)  # mlx-vlm's float model, its own sanitize of the release layout
    reference = reference_model(TOKENS)
    _, processor = mlx_vlm.load(str(src))
    image = IMAGES[arch](processor, config)
    image_reference = _logits(reference_model, image)
    text_only = reference_model(image["input_ids"])  # the same tokens without the image
    assert mx.abs(image_reference - text_only).max().item() > 0.1  # the image reaches the logits
    mx.eval(reference, image_reference)

    list(Conversion(src).run(tmp_path / "float"))
    float_model = load_float32(tmp_path / "float")
    exact = compare_logits(reference, float_model(TOKENS))
    assert exact.max_abs <= 1e-4, f"--no-quantize: {exact}"
    exact = compare_logits(image_reference, _logits(float_model, image))  # the vision tower as mlx-vlm reads it
    assert exact.max_abs <= 1e-4, f"--no-quantize, image: {exact}"

    affine_cos, affine_kl, fp_cos, fp_kl, image_cos, image_kl = SEEN[arch]
    for mode, cos, kl in (("affine", affine_cos, affine_kl), ("mxfp4", fp_cos, fp_kl)):
        dst = tmp_path / mode
        conversion = Conversion(src, Quant.make(mode))
        list(conversion.run(dst))
        rows = conversion.plan.rows
        vision = [r for r in rows if r.role == Role.VISION]
        assert all(r.quant is None for r in vision)
        assert {r.rule for r in vision if r.quantizable} == {"vision"}
        assert [r for r in rows if r.role == Role.VISION] and [r for r in rows if r.role == Role.ROUTED_EXPERTS]
        gates = [r for r in rows if r.role in GATE_ROLES]
        assert gates and all(r.quant is None for r in gates)
        assert all(r.quant is not None for r in rows if r.role == Role.ROUTED_EXPERTS)

        out = json.loads((dst / "config.json").read_text())
        # the language model's keys in text_config, or at the root where mlx-vlm reads them there (ERNIE-4.5-VL)
        assert (out.get("text_config") or VISION_LANGUAGE[arch].text_at_root) and all(
            out[k] for k in VISION_LANGUAGE[arch].vision_keys)
        assert out["quantization"]["mode"] == mode and out["quantization"] == out["quantization_config"]
        sidecars = [f.name for f in src.glob("*.json") if f.name not in ("config.json", "model.safetensors.index.json")]
        assert "tokenizer.json" in sidecars
        for name in sidecars:  # tokenizer, processor and chat-template files copied as they are
            assert (dst / name).read_bytes() == (src / name).read_bytes(), name

        model, processor = mlx_vlm.load(str(dst))  # the real loader: model and processor
        stored = mx.load(str(dst / "model.safetensors"))
        assert all(f"{r.path}.weight" in stored and f"{r.path}.scales" not in stored for r in vision if r.quantizable)
        experts = [r.path for r in rows if r.role == Role.ROUTED_EXPERTS]
        assert all(p.startswith("language_model.") and f"{p}.scales" in stored for p in experts)
        text = compare_logits(reference, load_float32(dst)(TOKENS))
        assert text.cosine >= cos - COSINE_MARGIN and text.kl <= kl * KL_FACTOR, f"{mode}: {text}"
        if mode == "affine":
            seen = compare_logits(image_reference, _logits(load_float32(dst), IMAGES[arch](processor, config)))
            assert seen.cosine >= image_cos - COSINE_MARGIN and seen.kl <= image_kl * KL_FACTOR, f"image: {seen}"


# mlx-lm text-only outputs that mlx-lm itself cannot load (mlx-lm 0.32.2): xfail(strict), so a fix shows
MLX_LM_CANNOT = {
    # mlx_lm.models.kimi_vl builds DeepSeek-V3's MLA (embed_q / unembed_out) but its sanitize never splits the
    # release's self_attn.kv_b_proj: mlx_lm.load of the release itself fails ("parameters not in model")
    "kimi_vl": ("mlx-lm's kimi_vl sanitize does not split self_attn.kv_b_proj", LayoutError),
    # mlx-lm 0.32.2 has no glm4v_moe module: the conversion refuses it with one line
    "glm4v_moe": ("mlx-lm has no glm4v_moe model", CheckpointError),
    "qwen4_exp": ("mlx-lm has no qwen4_exp model", CheckpointError),
    "glm5_next": ("mlx-lm has no glm5_next model", CheckpointError),
    "ernie4_5_moe_vl": ("mlx-lm has no ernie4_5_moe_vl model", CheckpointError),
}


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.xfail(
    strict=True, raises=MLX_LM_CANNOT[a][1], reason=MLX_LM_CANNOT[a][0])) if a in MLX_LM_CANNOT else a
    for a in VLM_ARCHS])
def test_for_mlx_lm_writes_the_language_model_only(tmp_path, arch):
    src = write_tiny_checkpoint(tmp_path / "src", arch, vision=True)
    conversion = Conversion(src, Quant.make("affine"), runner="mlx-lm")
    assert not [r for r in conversion.plan.rows if r.role == Role.VISION]
    assert any("output for mlx-lm (asked)" in n for n in conversion.plan.notes)
    list(conversion.run(tmp_path / "dst"))
    out = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert not set(VISION_LANGUAGE[arch].vision_keys) & set(out)
    from mlx_lm.utils import load_model

    model, _ = load_model(tmp_path / "dst")
    assert model(TOKENS).shape == (*TOKENS.shape, out["text_config"]["vocab_size"])


def test_a_vision_language_source_defaults_to_mlx_vlm_and_says_so(tmp_path):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_vl_moe", vision=True)
    notes = Conversion(src, Quant.make("affine")).plan.notes
    assert any(n.startswith("output for mlx-vlm (a vision-language checkpoint)") for n in notes), notes


def test_for_mlx_vlm_on_a_text_only_source_is_one_clear_error(tmp_path):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_vl_moe")  # language model only, no vision_config
    with pytest.raises(CheckpointError, match=r"--for mlx-vlm: config.json model_type 'qwen3_vl_moe' has no vision_config"):
        Conversion(src, runner="mlx-vlm")
    with pytest.raises(CheckpointError, match=r"--for mlx-vlm: .*'qwen3_moe' is not a vision-language model"):
        Conversion(write_tiny_checkpoint(tmp_path / "text", "qwen3_moe"), runner="mlx-vlm")


def test_cli_for_option(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_vl_moe", vision=True)
    result = cli("convert", src, tmp_path / "dst", "--for", "mlx-lm", "--quiet")
    assert result.exit_code == 0, result.output
    assert "vision_config" not in json.loads((tmp_path / "dst" / "config.json").read_text())
    result = cli("convert", src, tmp_path / "bad", "--for", "mlx-xyz")
    assert result.exit_code == 1 and "--for mlx-xyz: expected one of mlx-lm, mlx-vlm" in result.output


# rows not smoke-tested with mlx_vlm.load (model and processor), and why; the note says so instead of VLM_DONE
NOT_LOADED_WHOLE = {
    # mlx_vlm/models/qwen3_omni_moe/processing_qwen3_omni_moe.py builds Qwen3VLVideoProcessor, which needs torchvision
    "qwen3_omni_moe": "mlx-vlm's processor needs torchvision",
}


def test_every_vision_language_row_has_a_tiny_release_and_a_supported_arch_row():
    from moequant.registry import ARCHITECTURES, CANVAS, VLM_DONE, Status

    # a row without a tiny release of its own is one transformers writes (tests/test_producer_vlm.py)
    assert {m for m, part in VISION_LANGUAGE.items() if part.fixture} == set(VLM_ARCHS)
    rows = {a.model_type: a for a in ARCHITECTURES}
    # a block-diffusion model (registry.CANVAS: mlx-vlm's names are not language_model.*) says what it does itself
    done = sorted(set(VISION_LANGUAGE) - set(CANVAS))
    for arch in VISION_LANGUAGE:
        assert rows[arch].status == Status.SUPPORTED
        if arch in NOT_LOADED_WHOLE:
            assert NOT_LOADED_WHOLE[arch] in rows[arch].note
        else:
            assert (VLM_DONE in rows[arch].note) == (arch in done)
    assert sorted(a.model_type for a in ARCHITECTURES if VLM_DONE in a.note) == sorted(set(done) - set(NOT_LOADED_WHOLE))


# transformers' class for each release (its checkpoint loading knows the published names); None: not in
# transformers 5.23 (the release ships remote code), so the names follow mlx-vlm's sanitize and the model card
TRANSFORMERS_CLASS = {
    "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
    "qwen3_5_moe": "Qwen3_5MoeForConditionalGeneration",
    "llama4": "Llama4ForConditionalGeneration",
    "kimi_vl": None,  # moonshotai/Kimi-VL-A3B-Instruct: trust_remote_code
    "kimi_k25": "Kimi_K25ForConditionalGeneration",
    "glm4v_moe": "Glm4vMoeForConditionalGeneration",
    "gemma4": "Gemma4ForConditionalGeneration",
    "qwen4_exp": "Qwen4ExpForConditionalGeneration",
    "glm5_next": "Glm5NextForConditionalGeneration",
    "minimax_m3_vl": "MiniMaxM3SparseForConditionalGeneration",
    # the release's config.json (flat, model_type ernie4_5_moe_vl) is not transformers' (ernie4_5_vl_moe, nested);
    # transformers' own save of the layout is tests/producer.py's (test_producer_vlm.py)
    "ernie4_5_moe_vl": None,
}


@pytest.mark.parametrize("arch", [a for a in VLM_ARCHS if TRANSFORMERS_CLASS[a]])
def test_tiny_release_is_the_layout_transformers_loads(tmp_path, arch):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers", minversion="5.0")
    src = write_tiny_checkpoint(tmp_path / "src", arch, vision=True, dtype="float32")
    model_class = getattr(transformers, TRANSFORMERS_CLASS[arch])
    model, info = model_class.from_pretrained(src, dtype=torch.float32, output_loading_info=True)
    assert type(model).__name__ == TRANSFORMERS_CLASS[arch]
    assert {k: v for k, v in info.items() if v} == {}  # no missing, unexpected or mismatched key


def test_verify_finds_the_routers_of_an_mlx_vlm_output(tmp_path):
    """mlx-vlm's models hold their experts in mlx-vlm's own SwitchLinear: verify's router
    agreement must find them (it once knew mlx-lm's class only and reported no MoE layer)."""
    from moequant.verify import verify

    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_vl_moe", vision=True)
    list(Conversion(src, Quant.make("affine", 8)).run(tmp_path / "q8", pool="threads"))
    report = verify(tmp_path / "q8", src)
    assert len(report.router_agreement) == 2 and all(v > 0.5 for v in report.router_agreement.values())
