"""Error-minimizing rounding: never worse than plain rounding, same formats, loads in mlx-lm."""

from __future__ import annotations

import mlx.core as mx
import pytest

from moequant.convert import Conversion
from moequant.evaluate import compare_logits
from moequant.formats import Quant
from moequant.rounding import quantize_searched, reconstruction_error
from moequant.tiny import write_tiny_checkpoint

from conftest import CALIB_TEXT, logits_of

QUANTS = [Quant.make("affine", 2), Quant.make("affine", 3), Quant.make("affine", 4), Quant.make("affine", 4, 128),
          Quant.make("affine", 8, 32), Quant.make("mxfp4"), Quant.make("nvfp4"), Quant.make("mxfp8")]


def _weights(seed: int, shape=(64, 256), dtype=mx.bfloat16) -> mx.array:
    """Normal weights with a few large outliers, one all-zero row and one tiny-magnitude row."""
    key = mx.random.key(seed)
    k1, k2, k3 = mx.random.split(key, 3)
    w = mx.random.normal(shape, key=k1) * 0.02
    outliers = mx.random.uniform(shape=shape, key=k2) < 0.003
    w = mx.where(outliers, mx.random.normal(shape, key=k3) * 0.5, w)
    w[..., 0, :] = 0
    w[..., 1, :] = w[..., 1, :] * 1e-4
    return w.astype(dtype)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("quant", QUANTS, ids=str)
def test_searched_rounding_never_increases_the_reconstruction_error(quant, seed):
    w = _weights(seed)
    plain = mx.quantize(w, quant.group_size, quant.bits, mode=quant.mode.value)
    searched = quantize_searched(w, quant)
    before = reconstruction_error(w, plain[0], plain[1], plain[2] if len(plain) > 2 else None, quant)
    after = reconstruction_error(w, *searched, quant)
    assert after <= before
    for ours, theirs in zip(searched, plain):  # the same format, bit layout and dtype
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype


def test_searched_rounding_helps_where_outliers_stretch_the_groups():
    w = _weights(0)
    quant = Quant.make("affine", 3)
    plain = mx.quantize(w, 64, 3)
    assert reconstruction_error(w, *quantize_searched(w, quant), quant) < 0.97 * reconstruction_error(w, *plain, quant)


def test_searched_rounding_keeps_each_experts_global_scale():
    w = mx.stack([_weights(s, (32, 128)) for s in range(3)])
    quant = Quant.make("nvfp4")
    for e in range(3):
        gs = mx.abs(w[e]).max().astype(mx.float32)
        plain = mx.quantize(w[e], 16, 4, mode="nvfp4", global_scale=gs)
        searched = quantize_searched(w[e], quant, gs)
        assert reconstruction_error(w[e], *searched, quant, gs) <= reconstruction_error(w[e], plain[0], plain[1],
                                                                                         None, quant, gs)


@pytest.mark.parametrize("mode", ["affine", "nvfp4"])
def test_mse_rounding_output_loads_in_mlx_lm_and_differs_from_plain(tmp_path, cli, reference_logits, mode):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    assert cli("convert", src, tmp_path / "mse", "--mode", mode, "--rounding", "mse", "--quiet").exit_code == 0
    assert cli("convert", src, tmp_path / "plain", "--mode", mode, "--quiet").exit_code == 0
    a = mx.load(str(tmp_path / "mse" / "model.safetensors"))
    b = mx.load(str(tmp_path / "plain" / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape for k in a)
    assert not mx.array_equal(a["model.layers.1.mlp.switch_mlp.up_proj.weight"],
                              b["model.layers.1.mlp.switch_mlp.up_proj.weight"])
    closeness = compare_logits(reference_logits("qwen3_moe"), logits_of(tmp_path / "mse"))
    assert closeness.cosine >= 0.95, closeness
    plan = Conversion(src, Quant.make(mode), rounding="mse").plan.to_json()
    assert plan["options"]["rounding"] == "mse"


def test_gptq_rounding_needs_calibration_data(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    result = cli("convert", src, tmp_path / "dst", "--rounding", "gptq", "--quiet")
    assert result.exit_code != 0
    assert "--rounding gptq: needs calibration data; expected --calib FILE" in result.output
    assert not (tmp_path / "dst").exists()


def test_gptq_rounding_lowers_each_modules_error_on_the_calibration_inputs(tmp_path, cli, reference_logits):
    """--rounding gptq with --calib: same format as plain rounding, loads in mlx-lm, and each
    quantized module's output error on the calibration inputs, tr(ΔW H ΔWᵀ), is at most plain's."""
    from moequant.gptq import calibration_error

    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", dtype="float32")
    calib = tmp_path / "calib.txt"
    calib.write_text(CALIB_TEXT)
    assert cli("convert", src, tmp_path / "gptq", "--rounding", "gptq", "--calib", calib, "--quiet").exit_code == 0
    assert cli("convert", src, tmp_path / "plain", "--quiet").exit_code == 0
    a = mx.load(str(tmp_path / "gptq" / "model.safetensors"))
    b = mx.load(str(tmp_path / "plain" / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape for k in a)
    weights = mx.load(str(src / "model.safetensors"))
    conversion = Conversion(src, Quant.make("affine", 4), rounding="gptq", calib=str(calib))
    assert any("--rounding gptq" in note for note in conversion.plan.notes)
    paths = {r.path for r in conversion.plan.rows if r.quant is not None and r.role.value != "embedding"}
    moments = conversion._moments()
    assert paths <= set(moments)
    q, lower = Quant.make("affine", 4), 0
    for path in ["lm_head", "model.layers.1.self_attn.q_proj", "model.layers.0.mlp.switch_mlp.down_proj"]:
        if "switch_mlp" in path:  # per-expert tensors in SRC
            name = path.replace("switch_mlp", "experts.{e}")
            w = mx.stack([weights[f"{name.format(e=e)}.weight"] for e in range(4)])
        else:
            w = weights[f"{path}.weight"]
        w = w.astype(a[f"{path}.scales"].dtype)  # what was quantized: SRC in the output dtype
        ours = calibration_error(w, a[f"{path}.weight"], a[f"{path}.scales"], a[f"{path}.biases"], moments[path], q)
        plain = calibration_error(w, b[f"{path}.weight"], b[f"{path}.scales"], b[f"{path}.biases"], moments[path], q)
        assert (ours <= plain * (1 + 1e-5)).all(), path
        lower += ours.sum() < 0.95 * plain.sum()
    assert lower >= 2
    closeness = compare_logits(reference_logits("qwen3_moe"), logits_of(tmp_path / "gptq"))
    assert closeness.cosine >= 0.95, closeness
