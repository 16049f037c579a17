"""MLX-quantized sources, with per-path overrides: the DESIGN.md bugs, one regression test each."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest
from mlx_lm.utils import load_model

from moequant.convert import Conversion
from moequant.evaluate import compare_logits
from moequant.formats import Quant
from moequant.tiny import write_tiny_checkpoint

from conftest import logits_of


def _mlx_source(tmp_path, arch="qwen2_moe", quant=None, gate_bits=8, **kw):
    src = write_tiny_checkpoint(tmp_path / "hf", arch)
    list(Conversion(src, quant or Quant.make("affine", 4), gate_bits=gate_bits, **kw).run(tmp_path / "mlx"))
    return tmp_path / "mlx"


def _edit_config(path, edit):
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))


def test_mlx_source_that_matches_the_plan_is_copied_not_rounded_twice(tmp_path):
    src = _mlx_source(tmp_path)
    conversion = Conversion(src, Quant.make("affine", 4), gate_bits=8)
    list(conversion.run(tmp_path / "again"))
    assert all(r.as_stored for r in conversion.plan.rows if r.quant)
    before, after = mx.load(str(src / "model.safetensors")), mx.load(str(tmp_path / "again" / "model.safetensors"))
    assert before.keys() == after.keys()
    assert all(before[k].dtype == after[k].dtype and mx.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("placement", ["quantization", "quantization_config", "text_config"])
def test_gate_listed_in_per_path_overrides_is_read_wherever_the_config_puts_it(tmp_path, placement):
    src = _mlx_source(tmp_path)
    reference = logits_of(src)

    def keep_one(config):
        entry = config.pop("quantization")
        config.pop("quantization_config")
        (config.setdefault("text_config", {}) if placement == "text_config" else config)[
            "quantization" if placement == "text_config" else placement] = entry

    _edit_config(src, keep_one)
    list(Conversion(src, dtype="float32").run(tmp_path / "float"))
    assert compare_logits(reference, logits_of(tmp_path / "float")).max_abs <= 1e-4


def test_gate_override_with_its_own_bits_and_group_is_dequantized_with_them(tmp_path):
    """The runner bug: a global nvfp4 (4-bit, group 16) default, the gate 8-bit/group-64 per path.
    Reading the gate with the global parameters gives garbage (or an empty tensor)."""
    src = _mlx_source(tmp_path, quant=Quant.make("nvfp4"))
    quantization = json.loads((src / "config.json").read_text())["quantization"]
    assert quantization["mode"] == "nvfp4" and quantization["model.layers.0.mlp.gate"]["bits"] == 8
    reference = logits_of(src)  # mlx-lm itself honours the per-path entry
    list(Conversion(src, dtype="float32").run(tmp_path / "float"))
    assert compare_logits(reference, logits_of(tmp_path / "float")).max_abs <= 1e-4
    gate = mx.load(str(tmp_path / "float" / "model.safetensors"))["model.layers.0.mlp.gate.weight"]
    assert gate.shape == (4, 128) and gate.dtype == mx.float32


def test_config_entry_that_contradicts_the_tensors_is_refused_naming_both_readings(tmp_path, cli):
    src = _mlx_source(tmp_path)
    _edit_config(src, lambda c: [c[k].update({"model.layers.1.mlp.gate": {"bits": 4, "group_size": 16}})
                                 for k in ("quantization", "quantization_config")])
    result = cli("convert", src, tmp_path / "dst", "--quiet")
    assert result.exit_code == 1
    assert result.output.strip() == ("error: config.json: quantization['model.layers.1.mlp.gate']: config.json "
                                     "says affine·4·g16; its tensors say affine·8·g64")
    assert not (tmp_path / "dst").exists()


def test_gate_without_to_quantized_listed_in_source_config_converts_instead_of_crashing(tmp_path, cli):
    """nemotron_h's MoEGate crash: a per-path entry for a module with no to_quantized. DeepSeek's
    MoEGate is such a module; a source that stores it packed crashes mlx-lm's loader."""
    src = _mlx_source(tmp_path, arch="deepseek_v3")
    weights = mx.load(str(src / "model.safetensors"))
    gate = "model.layers.1.mlp.gate"
    weights[f"{gate}.weight"], weights[f"{gate}.scales"], weights[f"{gate}.biases"] = mx.quantize(
        weights[f"{gate}.weight"], group_size=64, bits=8)
    mx.save_safetensors(str(src / "model.safetensors"), weights)
    _edit_config(src, lambda c: [c[k].update({gate: {"group_size": 64, "bits": 8, "mode": "affine"}})
                                 for k in ("quantization", "quantization_config")])
    with pytest.raises(Exception):  # the bug, as mlx-lm has it
        load_model(src)
    inspected = cli("inspect", src, "--check", "--json")
    assert inspected.exit_code == 1
    problems = {r["path"]: r["problem"] for r in json.loads(inspected.stdout) if r["problem"]}
    assert problems == {gate: "config.json lists it, but mlx-lm's module has no to_quantized (the loader crashes)"}
    result = cli("convert", src, tmp_path / "dst", "--quiet")
    assert result.exit_code == 0, result.output
    out = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert gate not in out["quantization"] and gate not in out["quantization_config"]
    assert mx.load(str(tmp_path / "dst" / "model.safetensors"))[f"{gate}.weight"].dtype == mx.bfloat16
    load_model(tmp_path / "dst")  # loads


@pytest.mark.parametrize("target", [("affine", 8), ("mxfp4", None), ("nvfp4", None)])
def test_mlx_source_requantized_to_another_mode_stays_close(tmp_path, target):
    src = _mlx_source(tmp_path, arch="mixtral")
    reference = logits_of(src)
    list(Conversion(src, Quant.make(target[0], target[1])).run(tmp_path / "dst"))
    closeness = compare_logits(reference, logits_of(tmp_path / "dst"))
    assert closeness.cosine >= 0.9, closeness


def test_nvfp4_global_scale_source_is_read_per_expert(tmp_path):
    src = _mlx_source(tmp_path, arch="qwen3_moe", quant=Quant.make("nvfp4"))
    assert "model.layers.1.mlp.switch_mlp.up_proj.global_scale" in mx.load(str(src / "model.safetensors"))
    reference = logits_of(src)
    list(Conversion(src, dtype="float32").run(tmp_path / "float"))
    assert compare_logits(reference, logits_of(tmp_path / "float")).max_abs <= 1e-4


def test_stale_gate_entry_for_a_float_moegate_converts_with_a_note(tmp_path, cli, caplog):
    """The seed bug's layout as it reaches users: nemotron_h written by transformers, converted,
    then a per-path 8-bit entry added for its router gate, which is stored float because mlx-lm's
    MoEGate has no to_quantized. mlx-lm's loader crashes on it; the tensors decide: read float,
    the entry called stale in one line."""
    import logging

    import producer

    producer.write_produced(tmp_path / "hf", "nemotron_h")
    list(Conversion(tmp_path / "hf", Quant.make("affine", 4)).run(tmp_path / "mlx"))
    src, gate = tmp_path / "mlx", "backbone.layers.1.mixer.gate"
    reference = logits_of(src)
    _edit_config(src, lambda c: [c[k].update({gate: {"group_size": 64, "bits": 8}})
                                 for k in ("quantization", "quantization_config")])
    with pytest.raises(ValueError, match="Unable to quantize model of type.*MoEGate"):  # the bug, as mlx-lm has it
        load_model(src)
    with caplog.at_level(logging.WARNING, logger="moequant.stored"):
        conversion = Conversion(src, dtype="float32")
    stale = [n for n in conversion.plan.notes if "is stale" in n]
    assert stale == [f"config.json: quantization[{gate!r}] is stale: it says affine·8·g64, but the module is stored "
                     "F32 and mlx-lm's module has no to_quantized; read as stored (F32), entry not written"]
    # moequant's warnings only: transformers warns once per process (its reference mamba kernel) during the producer
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("moequant")] == stale
    list(conversion.run(tmp_path / "float"))
    assert compare_logits(reference, logits_of(tmp_path / "float")).max_abs <= 1e-4
    inspected = cli("inspect", src, "--check", "--json")  # still a problem for mlx-lm: --check says so
    assert inspected.exit_code == 1
    assert "stale entry" in {r["path"]: r["problem"] for r in json.loads(inspected.stdout)}[gate]


def test_gate_with_ollama_singular_aux_names_is_read_as_the_8bit_module_it_is(tmp_path):
    """`<m>.weight.scale` / `<m>.weight.bias` (Ollama-created blobs) beside an 8-bit gate listed
    per path: the same module as `<m>.scales` / `<m>.biases`, not a mismatch with its config."""
    src = _mlx_source(tmp_path, arch="qwen3_moe")
    reference = logits_of(src)
    weights = mx.load(str(src / "model.safetensors"))
    for key in [k for k in weights if ".mlp.gate." in k and k.endswith((".scales", ".biases"))]:
        weights[key.rsplit(".", 1)[0] + {"scales": ".weight.scale", "biases": ".weight.bias"}[key.rsplit(".", 1)[1]]] \
            = weights.pop(key)
    assert "model.layers.1.mlp.gate.weight.scale" in weights
    mx.save_safetensors(str(src / "model.safetensors"), weights, metadata={"format": "mlx"})
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: "model.safetensors" for k in weights}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    conversion = Conversion(src, dtype="float32")
    gate = conversion.plan.by_path["model.layers.1.mlp.gate"]
    assert gate.source == Quant.make("affine", 8, 64) and gate.origin.startswith("mlx affine·8·g64")
    list(conversion.run(tmp_path / "float"))
    assert compare_logits(reference, logits_of(tmp_path / "float")).max_abs <= 1e-4
