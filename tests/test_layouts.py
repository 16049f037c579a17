"""Expert layouts (per-expert, fused, stacked) and FP8 block-scaled sources convert to the same model."""

from __future__ import annotations

import json
import math

import mlx.core as mx
import numpy as np
import pytest

from moequant.checkpoint import read_safetensors_header
from moequant.convert import Conversion
from moequant.evaluate import compare_logits
from moequant.names import AUX_RENAMES
from moequant.formats import Quant
from moequant.tiny import ARCHS, save_safetensors, tiny_tensor, write_tiny_checkpoint

from conftest import logits_of


@pytest.mark.parametrize("layout", ["fused", "stacked"])
@pytest.mark.parametrize("arch", ARCHS)
def test_fused_and_stacked_layouts_convert_identically_to_per_expert(tmp_path, arch, layout):
    for name, kind in (("a", "per_expert"), ("b", layout)):
        src = write_tiny_checkpoint(tmp_path / f"src-{name}", arch, layout=kind)
        list(Conversion(src, Quant.make("affine", 4)).run(tmp_path / name))
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("mode", ["affine", "nvfp4", "mxfp4"])
def test_fused_experts_are_really_quantized(tmp_path, mode):
    """The NVFP4-export bug: fused experts written as bf16 while the export 'succeeded'."""
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", layout="fused")
    list(Conversion(src, Quant.make(mode)).run(tmp_path / "dst"))
    weights = mx.load(str(tmp_path / "dst" / "model.safetensors"))
    for proj in ("gate_proj", "up_proj", "down_proj"):
        key = f"model.layers.1.mlp.switch_mlp.{proj}"
        assert weights[f"{key}.weight"].dtype == mx.uint32 and weights[f"{key}.weight"].shape[0] == 4
        assert f"{key}.scales" in weights


@pytest.mark.parametrize("block", [(128, 128), (48, 48)])  # 48: partial edge blocks on 64/128/256 dims
def test_fp8_block_scaled_weights_are_dequantized_exactly(tmp_path, block):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral", source="fp8", block_size=block)
    list(Conversion(src, dtype="float32").run(tmp_path / "dst"))
    out = mx.load(str(tmp_path / "dst" / "model.safetensors"))
    raw = mx.load(str(src / "model.safetensors"))
    b0, b1 = block
    for key in ("model.layers.0.self_attn.o_proj.weight", "model.layers.1.block_sparse_moe.experts.2.w2.weight"):
        values = np.array(mx.from_fp8(raw[key], dtype=mx.float32))
        scales = np.array(raw[key.replace(".weight", ".weight_scale_inv")])
        expected = values * np.kron(scales, np.ones((b0, b1), np.float32))[: values.shape[0], : values.shape[1]]
        if "experts" in key:
            got = np.array(out["model.layers.1.block_sparse_moe.switch_mlp.down_proj.weight"][2])
        else:
            got = np.array(out[key])
        np.testing.assert_array_equal(got, expected)
        original = tiny_tensor(key, values.shape, 0)
        assert np.abs(got - original).max() <= 0.07 * np.abs(original).max()  # e4m3: 3 mantissa bits


@pytest.mark.parametrize("arch", ARCHS)
def test_fp8_source_quantized_stays_close_to_float(tmp_path, reference_logits, arch):
    src = write_tiny_checkpoint(tmp_path / "src", arch, source="fp8")
    list(Conversion(src, Quant.make("affine", 4)).run(tmp_path / "dst"))
    closeness = compare_logits(reference_logits(arch), logits_of(tmp_path / "dst"))
    # seen: cosine ≥ 0.93 (deepseek_v3), ≥ 0.97 others — like a float source at 4 bits
    assert closeness.cosine >= 0.90, closeness
    config = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert config["quantization_config"]["mode"] == "affine"  # the FP8 quantization_config is gone


def test_expert_zero_all_zeros_does_not_spoil_the_other_experts_scales(tmp_path):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", dtype="float32")
    weights = mx.load(str(src / "model.safetensors"))
    weights["model.layers.1.mlp.experts.0.up_proj.weight"] = mx.zeros((64, 128))
    mx.save_safetensors(str(src / "model.safetensors"), weights)
    list(Conversion(src, Quant.make("nvfp4")).run(tmp_path / "dst"))
    out = mx.load(str(tmp_path / "dst" / "model.safetensors"))
    key = "model.layers.1.mlp.switch_mlp.up_proj"
    global_scale = out[f"{key}.global_scale"]  # one per expert, each from its own weights
    for e in range(4):
        source = weights[f"model.layers.1.mlp.experts.{e}.up_proj.weight"]
        assert global_scale[e].item() == mx.abs(source).max().item(), e
        deq = mx.dequantize(out[f"{key}.weight"][e], out[f"{key}.scales"][e], None, group_size=16, bits=4,
                            mode="nvfp4", global_scale=global_scale[e], dtype=mx.float32)
        if e == 0:
            assert mx.all(deq == 0).item()
        else:
            assert (mx.abs(deq - source).max() <= 0.25 * mx.abs(source).max()).item(), e


def _fails(cli, tmp_path, src, match):
    result = cli("convert", src, tmp_path / "dst", "--quiet")
    assert result.exit_code == 1 and result.output.startswith("error: "), result.output
    assert match in result.output, result.output
    assert not (tmp_path / "dst").exists() and not list(tmp_path.glob(".dst.moequant-*"))


def _edit(src, edit):
    """Change tensors of a tiny checkpoint, keeping each tensor's safetensors dtype tag (F8_E4M3…)."""
    file = src / "model.safetensors"
    tags = {k: t.dtype for k, t in read_safetensors_header(file).items()}
    weights = mx.load(str(file))
    edit(weights)
    save_safetensors(file, {k: (tags.get(k, "F32"), v) for k, v in weights.items()})


def test_fp8_scale_tensor_with_too_few_blocks(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", source="fp8", block_size=(48, 48))
    key = "model.layers.0.self_attn.q_proj.weight_scale_inv"
    weights = mx.load(str(src / "model.safetensors"))
    assert tuple(weights[key].shape) == (3, 3)
    _edit(src, lambda w: w.__setitem__(key, w[key][:2]))
    _fails(cli, tmp_path, src, f"{key}: shape (2, 3); expected (3, 3) for weight (128, 128) in 48×48 blocks")


def test_fp8_block_size_that_does_not_match_the_scales(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", source="fp8", block_size=(48, 48))
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"]["weight_block_size"] = [128, 128]
    (src / "config.json").write_text(json.dumps(config))
    _fails(cli, tmp_path, src, "weight_scale_inv: shape (3, 2); expected (1, 1) for weight (128, 64) in 128×128 blocks (weight_block_size)")


def test_fused_tensor_with_an_odd_row_count(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", layout="fused")
    key = "model.layers.1.mlp.experts.gate_up_proj"
    _edit(src, lambda w: w.__setitem__(key, w[key][:, :127]))
    _fails(cli, tmp_path, src, f"{key}: 127 rows; expected an even count (2·I: gate and up rows)")


def test_unknown_aux_suffix_is_reported(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    _edit(src, lambda w: w.__setitem__("model.layers.0.self_attn.q_proj.weight_zeropoint", mx.zeros((128, 2))))
    _fails(cli, tmp_path, src, "model.layers.0.self_attn.q_proj.weight_zeropoint: (128, 2) mlx.core.float32 "
                               "matches no parameter")


def test_aux_rename_rows_are_disjoint():
    suffixes = [s for s, _ in AUX_RENAMES]
    assert not [(a, b) for a in suffixes for b in suffixes if a != b and a.endswith(b)]


def test_fp8_tags_are_what_releases_use(tmp_path):
    src = write_tiny_checkpoint(tmp_path / "src", "deepseek_v3", source="fp8")
    header = read_safetensors_header(src / "model.safetensors")
    assert header["model.layers.1.mlp.experts.0.up_proj.weight"].dtype == "F8_E4M3"
    assert header["model.layers.1.mlp.experts.0.up_proj.weight_scale_inv"].shape == (1, 1)
    assert header["model.layers.1.mlp.gate.weight"].dtype == "BF16"  # gates stay bf16 in FP8 releases
    assert math.prod(header["model.embed_tokens.weight"].shape) == 256 * 128


@pytest.mark.parametrize("kind, origin", [
    (dict(layout="per_expert"), {"model.layers.1.mlp.switch_mlp.up_proj": "BF16 per-expert", "lm_head": "BF16"}),
    (dict(layout="fused"), {"model.layers.1.mlp.switch_mlp.up_proj": "BF16 fused"}),
    (dict(layout="stacked"), {"model.layers.1.mlp.switch_mlp.up_proj": "BF16 stacked"}),
    (dict(source="fp8"), {"model.layers.0.self_attn.q_proj": "F8_E4M3 (fp8)", "model.layers.0.mlp.gate": "BF16"}),
    (dict(source="nvfp4"), {"model.layers.1.mlp.switch_mlp.up_proj": "nvfp4 nvfp4·4·g16·gs per-expert"}),
])
def test_inspect_shows_what_src_holds_for_each_module(tmp_path, cli, kind, origin):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", **kind)
    rows = {r["path"]: r for r in json.loads(cli("inspect", src, "--json").stdout)["modules"]}
    for path, want in origin.items():
        assert rows[path]["origin"] == want, path


def test_per_expert_fp8_into_a_model_class_whose_sanitize_wants_fused_tensors(tmp_path, reference_logits):
    """The KeyError bug: per-expert FP8 weights reaching a sanitize that expects the fused
    experts.gate_up_proj (mlx-lm's qwen3_5_moe). moequant stacks them itself."""
    from moequant.evaluate import load_float32

    from conftest import TOKENS

    fused = write_tiny_checkpoint(tmp_path / "fused", "qwen3_5_moe", layout="fused")
    per_expert = write_tiny_checkpoint(tmp_path / "per_expert", "qwen3_5_moe", layout="per_expert")
    fp8 = write_tiny_checkpoint(tmp_path / "fp8", "qwen3_5_moe", layout="per_expert", source="fp8")
    for src in (fused, per_expert, fp8):
        list(Conversion(src).run(tmp_path / f"{src.name}-out"))
    reference = load_float32(tmp_path / "fused-out")(TOKENS)
    assert compare_logits(reference, logits_of(tmp_path / "per_expert-out")).max_abs == 0
    closeness = compare_logits(reference, logits_of(tmp_path / "fp8-out"))
    assert closeness.cosine >= 0.99, closeness  # seen 0.9968: FP8 rounding of the weights only
    raw = mx.load(str(fp8 / "model.safetensors"))
    assert any(k.endswith(".experts.0.gate_proj.weight_scale_inv") for k in raw)  # really per-expert FP8
