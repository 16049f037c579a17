"""--target-bpw: budgets met, one choice per expert stack, gates untouched, every expert calibrated."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from moequant.calibrate import measure
from moequant.convert import Conversion
from moequant.formats import Quant
from moequant.plan import GATE_ROLES, Role
from moequant.target import build_model
from moequant.tiny import ARCHS, write_tiny_checkpoint

from conftest import CALIB_TEXT


@pytest.mark.parametrize("arch", ARCHS)
def test_target_bpw_lands_within_002_of_the_budget(tmp_path, arch):
    src = write_tiny_checkpoint(tmp_path / "src", arch)
    for target in (2.75, 3.5, 4.25, 5.0, 6.5):
        plan = Conversion(src, Quant.make("affine", 4), target_bpw=target).plan
        assert abs(plan.bits_per_weight - target) <= 0.02, (target, plan.bits_per_weight)
        for row in plan.rows:
            if row.role in GATE_ROLES:
                assert row.quant is None  # float whatever the budget
            if row.role == Role.ROUTED_EXPERTS:
                assert row.quant is not None and row.rule == "target-bpw"


def test_written_size_matches_the_budget_and_each_stack_has_one_quantization(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen2_moe")
    assert cli("convert", src, tmp_path / "dst", "--target-bpw", "3.8", "--gate-bits", "8", "--quiet").exit_code == 0
    index = json.loads((tmp_path / "dst" / "model.safetensors.index.json").read_text())
    plan = json.loads(cli("inspect", src, "--target-bpw", "3.8", "--gate-bits", "8", "--json").stdout)
    assert abs(index["metadata"]["total_size"] * 8 / plan["totals"]["params"] - 3.8) <= 0.02
    config = json.loads((tmp_path / "dst" / "config.json").read_text())
    weights = mx.load(str(tmp_path / "dst" / "model.safetensors"))
    for row in plan["modules"]:
        if row["role"] == "routed_experts":  # one (bits, group) for the whole [E, out, in] stack
            q = row["quant"]
            w, s = weights[row["path"] + ".weight"], weights[row["path"] + ".scales"]
            assert w.shape[-1] * 32 // q["bits"] == row["shape"][-1] == s.shape[-1] * q["group_size"]
        if row["role"] == "router_gate":
            assert config["quantization"][row["path"]] == {"group_size": 64, "bits": 8, "mode": "affine"}
    assert "data-free proxy" in plan["notes"][-1]


def test_target_bpw_below_what_fits_is_refused(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral")
    result = cli("convert", src, tmp_path / "dst", "--target-bpw", "1.5", "--quiet")
    assert result.exit_code == 1 and "--target-bpw: the smallest choice for every module needs" in result.output


def test_calibration_measures_an_expert_the_router_never_picks(tmp_path):
    """Every token goes through every expert for the statistics; routing only weights them."""
    from moequant.calibrate import _Experts
    from moequant.evaluate import load_float32
    from moequant.surgery import module_at

    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", dtype="float32")
    list(Conversion(src).run(tmp_path / "float"))
    model = load_float32(tmp_path / "float")
    container = "model.layers.1.mlp.switch_mlp"
    never = 3
    x = mx.random.normal((4, 64, 128), key=mx.random.key(0))
    indices = mx.random.randint(0, 3, (4, 64, 2), key=mx.random.key(1))  # experts 0-2 only
    recorder = _Experts(module_at(model, container), moments=False)
    recorder(x, indices)
    energy = recorder.energy(container)
    for name in ("gate_proj", "up_proj", "down_proj"):
        stats = energy[f"{container}.{name}"]
        assert stats.shape[0] == 4 and bool(mx.all(mx.isfinite(stats)).item())
        assert stats[never].sum().item() > 0  # measured although never routed
    # gate/up inputs are the same hidden states for every expert, weighted half uniformly, half by
    # routing frequency (weights average 1): the never-routed expert gets exactly half the mean
    up = energy[f"{container}.up_proj"]
    assert mx.allclose(up[never], 0.5 * up.sum(0) / 4, rtol=1e-5).item()
    assert all(mx.all(up[e] > up[never]).item() for e in range(3))
    down = energy[f"{container}.down_proj"]  # its own activations, not a copy of another expert's
    assert not mx.allclose(down[never] / down[never].sum(), down[0] / down[0].sum()).item()


def test_channel_energy_covers_every_quantizable_linear_of_the_model(tmp_path):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    tokens = mx.array(np.random.default_rng(0).integers(0, 256, (2, 32)).astype(np.int32))
    conversion = Conversion(src, Quant.make("affine", 4))
    wanted = {r.path for r in conversion.plan.rows if r.quant is not None and r.role != Role.EMBEDDING}
    energy = measure(build_model(conversion.config), conversion._normalized_groups(), tokens, energy=wanted).energy
    assert set(energy) == wanted
    assert energy["lm_head"].shape == (128,) and energy["model.layers.0.mlp.switch_mlp.down_proj"].shape == (4, 64)


def test_calibrated_allocation_says_so_in_the_plan(tmp_path):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    calib = tmp_path / "calib.txt"
    calib.write_text(CALIB_TEXT)
    plan = Conversion(src, Quant.make("affine", 4), target_bpw=4.0, calib=str(calib)).plan
    assert abs(plan.bits_per_weight - 4.0) <= 0.02
    assert any("calibrated on" in n and "2,048 tokens" in n for n in plan.notes)
    assert all("calibrated on" in r.reason for r in plan.rows if r.rule == "target-bpw")


def test_errors_measured_a_layer_behind_the_pass_choose_as_those_measured_ahead_of_it(tmp_path, monkeypatch):
    """Weight samples larger than SAMPLES_AHEAD are read and measured as the pass hands on each
    decoder layer's energies (convert._Arriving), while it runs on: the same choices as samples read
    before the pass and weighted by the energies after it."""
    from moequant import convert

    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    calib = tmp_path / "calib.txt"
    calib.write_text(CALIB_TEXT)
    make = lambda: Conversion(src, Quant.make("affine", 4), target_bpw=4.0, calib=str(calib)).plan  # noqa: E731
    ahead = make()
    got, get = [], convert._Arriving.get
    monkeypatch.setattr(convert._Arriving, "get", lambda self, path: (get(self, path), got.append((path, self.over)))[0])
    monkeypatch.setattr(convert, "SAMPLES_AHEAD", 0)
    behind = make()
    assert [(r.path, r.quant) for r in behind.rows] == [(r.path, r.quant) for r in ahead.rows]
    layer0 = [over for path, over in got if path.startswith("model.layers.0.")]
    assert layer0 and not any(layer0)  # layer 0's energies handed on while the pass was still running
    assert {path for path, _ in got} == {r.path for r in ahead.rows if r.rule == "target-bpw"}


def test_a_failed_pass_stops_the_reading_behind_it(tmp_path, monkeypatch):
    import threading

    from moequant import calibrate, convert

    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    calib = tmp_path / "calib.txt"
    calib.write_text(CALIB_TEXT)
    monkeypatch.setattr(convert, "SAMPLES_AHEAD", 0)

    def tail(*args):
        raise RuntimeError("the tail failed")

    monkeypatch.setattr(calibrate, "_tail", tail)
    with pytest.raises(RuntimeError, match="the tail failed"):
        Conversion(src, Quant.make("affine", 4), target_bpw=4.0, calib=str(calib))
    assert not [t.name for t in threading.enumerate() if t.name.startswith("moequant-allocate")]


def test_model_errors_scale_each_module_by_its_measured_kl_at_the_probe():
    from moequant.allocate import model_errors
    from moequant.calibrate import PROBE

    other = Quant.make("affine", 8, 64)
    errors = {"a": {PROBE: 0.2, other: 0.01}, "b": {PROBE: 0.1, other: 0.005}, "c": {PROBE: 0.4, other: 0.02}}
    scaled = model_errors(errors, {"a": 0.02, "b": 0.5}, PROBE)
    assert scaled["a"][PROBE] == pytest.approx(0.02) and scaled["a"][other] == pytest.approx(0.001)
    assert scaled["b"][PROBE] == pytest.approx(0.5) and scaled["b"][other] == pytest.approx(0.025)
    median = (0.02 / 0.2 + 0.5 / 0.1) / 2  # c was not measured: the median factor
    assert scaled["c"][other] == pytest.approx(0.02 * median)
