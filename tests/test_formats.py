"""The mode table and the shape arithmetic of packed weights, held against mlx itself."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest

import moequant
from moequant.errors import PlanError
from moequant.formats import (DTYPES, FP_MODES, MODES, Mode, Quant, Rounding, defaults, divides, infer_fp_quant,
                              infer_quant, packed_shape, scales_shape)

PACKAGE = Path(moequant.__file__).parent
SETTINGS = [(mode, bits, group) for mode, spec in MODES.items() for bits in spec.bits for group in spec.group_sizes]


@pytest.mark.parametrize("mode", list(Mode))
def test_defaults_are_those_of_mlx(mode):
    layer = nn.QuantizedLinear(256, 8, bias=False, mode=mode.value)  # mlx's _defaults_for_mode picks them
    assert defaults(mode) == (layer.bits, layer.group_size) == (Quant.make(mode).bits, Quant.make(mode).group_size)


@pytest.mark.parametrize("mode,bits,group", SETTINGS)
@pytest.mark.parametrize("shape", [(3, 256), (2, 3, 256)])
def test_every_setting_in_the_table_packs_into_the_shapes_and_bytes_said(mode, bits, group, shape):
    q = Quant.make(mode, bits, group)
    packed, scales, *biases = mx.quantize(mx.ones(shape, mx.bfloat16), group, bits, mode=mode.value)
    assert packed.dtype == mx.uint32 and tuple(packed.shape) == packed_shape(shape, q)
    assert tuple(scales.shape) == scales_shape(shape, q)
    assert (scales.dtype == mx.uint8) == (mode in FP_MODES) == (not MODES[mode].has_biases) == (not biases)
    assert q.packed_bytes(shape, "bfloat16") == sum(a.nbytes for a in (packed, scales, *biases))


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_packed_bytes_count_biases_in_the_output_dtype_and_one_global_scale_per_expert(dtype):
    w = mx.ones((4, 8, 128), DTYPES[dtype])
    packed, scales, biases = mx.quantize(w, 64, 4)
    assert Quant.make("affine", 4, 64).packed_bytes(w.shape, dtype) == packed.nbytes + scales.nbytes + biases.nbytes
    nvfp4 = Quant(Mode.NVFP4, 4, 16, global_scale=True)
    packed, scales = mx.quantize(w, 16, 4, mode="nvfp4")
    assert nvfp4.packed_bytes(w.shape, dtype) == packed.nbytes + scales.nbytes + 4 * 4


@pytest.mark.parametrize("mode", FP_MODES)
def test_the_fp_modes_take_exactly_their_one_setting(mode):
    w = mx.ones((2, 256), mx.bfloat16)
    for bits in range(1, 9):
        for group in (16, 32, 64, 128):
            try:
                mx.eval(mx.quantize(w, group, bits, mode=mode.value))
                takes = True
            except ValueError:
                takes = False
            assert takes == ((bits, group) == defaults(mode)), (bits, group)


@pytest.mark.parametrize("mode,bits,group", SETTINGS)
@pytest.mark.parametrize("global_scale", [False, True])
def test_a_packing_is_read_back_from_its_shapes(mode, bits, group, global_scale):
    q, n_in = Quant(mode, bits, group, global_scale), 384
    packed_in, groups = packed_shape((8, n_in), q)[-1], scales_shape((8, n_in), q)[-1]
    assert infer_quant(packed_in, groups, mode in FP_MODES, n_in, global_scale) == q
    if mode in FP_MODES:  # without the float input size, from the packing alone
        assert infer_fp_quant(packed_in, groups, global_scale) == q


def test_divides_is_whole_groups():
    assert divides(128, Quant.make("affine", 4, 64)) and divides(192, Quant.make("affine", 4, 64))
    assert not divides(96, Quant.make("affine", 4, 64)) and divides(96, Quant.make("affine", 4, 32))
    assert divides(48, Quant.make("nvfp4")) and not divides(48, Quant.make("mxfp4"))


def test_a_setting_outside_the_table_is_refused_naming_what_the_mode_takes():
    with pytest.raises(PlanError, match=r"mxfp4 with bits=4, group_size=64; expected bits in \[4\] and "
                                        r"group_size in \[32\]"):
        Quant.make("mxfp4", 4, 64)
    with pytest.raises(PlanError, match=r"mode 'int4'; expected one of affine, mxfp4, nvfp4, mxfp8"):
        Quant.make("int4")


def test_roundings_read_and_print_as_their_plain_names():
    assert [r.value for r in Rounding] == ["plain", "mse", "gptq"]
    assert Rounding("gptq") is Rounding.GPTQ and Rounding.GPTQ == "gptq"
    assert f"--rounding {Rounding.MSE}" == "--rounding mse" and json.dumps([Rounding.PLAIN]) == '["plain"]'


@pytest.mark.parametrize("command", ["convert", "inspect"])
def test_cli_help_gives_each_modes_defaults_from_the_table(command):
    from typer.main import get_command

    from moequant.cli import app

    options = {p.name: p for p in get_command(app).commands[command].params}
    for mode, spec in MODES.items():
        assert f"{mode.value} {spec.default_group_size}" in options["group_size"].help
        assert mode.value in options["mode"].metavar.split("|")
    assert options["bits"].help == "Bits per weight (default: 4; 8 for mxfp8)."


def _imports(path: Path) -> list[ast.ImportFrom]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)]


def test_formats_imports_nothing_of_moequant_but_errors():
    assert {n.module for n in _imports(PACKAGE / "formats.py") if n.level} == {"errors"}


def test_no_module_takes_a_value_type_from_the_planner():
    """Mode, Quant and the mode table come from formats.py, never by way of plan.py (which imports them)."""
    plan = ast.parse((PACKAGE / "plan.py").read_text()).body
    own = {n.name for n in plan if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    own |= {t.id for n in plan if isinstance(n, (ast.Assign, ast.AnnAssign))
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
    for path in [*PACKAGE.glob("*.py"), *Path(__file__).parent.glob("*.py")]:
        for n in _imports(path):
            if n.level == 1 and n.module == "plan" or n.module == "moequant.plan":
                assert {a.name for a in n.names} <= own, (path.name, n.lineno)
