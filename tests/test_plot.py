"""Pictures (issue 17): `inspect --plot`, `verify --plot` and `convert --plot` write PNGs of a fixed
size that are not blank; the model card shows the plan's picture when one was made; without
matplotlib each `--plot` is refused in one line before any work."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard
from matplotlib.image import imread

from moequant.card import CARD_FILE, PLOT_FILE
from moequant.convert import Conversion
from moequant.formats import Quant
from moequant.plan import Role
from moequant.plot import OUTSIDE, plan_grid
from moequant.tiny import write_tiny_checkpoint
from moequant.writer import MARK_FILE

from conftest import assert_no_traceback

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Variance of the pixels' grey level (0 to 1): 0 for a blank picture, 0.006 for empty axes with one line;
# the tiny models' pictures measure 0.05-0.09
VARIANCE_FLOOR = 0.01
EMBEDDED = f"]({PLOT_FILE})"


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """deepseek_v3: a dense first layer, then an MoE layer with shared experts."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("plot") / "tiny-ds", "deepseek_v3")


def assert_picture(file, size: tuple[int, int]) -> None:
    """`file` is a PNG of `size` (width, height) pixels whose pixels vary."""
    data = file.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", data[:16]
    assert struct.unpack(">II", data[16:24]) == size
    pixels = imread(file)
    assert pixels.shape[:2] == size[::-1]
    grey = pixels[..., :3].mean(axis=-1)
    assert grey.var() > VARIANCE_FLOOR, grey.var()


def test_inspect_plot_is_a_picture_of_the_plan(tmp_path, cli, src):
    result = cli("inspect", src, "--recipe", "moe", "--bits", "3", "--plot", tmp_path / "plan.png")
    assert result.exit_code == 0, result.output
    assert_picture(tmp_path / "plan.png", (1200, 800))


def test_plan_grid_holds_bits_per_weight_by_layer_and_role(src):
    columns, roles, bits = plan_grid(Conversion(src, Quant.make("affine", 3), recipe="moe").plan)
    assert columns == ["0", "1", OUTSIDE]
    cell = {(role, column): value for role, row in zip(roles, bits) for column, value in zip(columns, row)}
    assert cell[Role.ROUTED_EXPERTS, "1"] == 3.5  # 3 bits + a bf16 scale and bias per 64 weights
    assert math.isnan(cell[Role.ROUTED_EXPERTS, "0"])  # layer 0 is dense
    assert cell[Role.DENSE_MLP, "0"] == cell[Role.ATTENTION, "1"] == 5.5  # recipe moe: bits + 2
    assert cell[Role.ROUTER_GATE, "1"] == 16  # kept bfloat16
    assert cell[Role.EMBEDDING, OUTSIDE] == 5.5 and math.isnan(cell[Role.EMBEDDING, "0"])


def test_verify_plot_shows_router_agreement_and_kl_by_position(tmp_path, cli, src):
    list(Conversion(src, Quant.make("affine", 3)).run(tmp_path / "dst"))
    result = cli("verify", tmp_path / "dst", "--reference", src, "--plot", tmp_path / "verify.png", "--json", "-q")
    assert result.exit_code == 0, result.output
    assert_picture(tmp_path / "verify.png", (1200, 500))
    report = json.loads(result.stdout)
    by_position = report["kl_by_position"]
    assert len(by_position) == 64  # verify's default batch: 4 sequences of 64 tokens
    assert max(by_position) > min(by_position) >= 0
    assert sum(by_position) / len(by_position) == pytest.approx(report["closeness"]["kl"], rel=1e-4)


def test_convert_plot_writes_the_picture_and_the_card_shows_it(tmp_path, cli, src):
    result = cli("convert", src, tmp_path / "dst", "--plot", "--verify", "--quiet")
    assert result.exit_code == 0, result.output
    assert_picture(tmp_path / "dst" / PLOT_FILE, (1200, 800))
    assert PLOT_FILE in json.loads((tmp_path / "dst" / MARK_FILE).read_text())["files"]  # --force may replace it
    card = ModelCard.load(tmp_path / "dst" / CARD_FILE)
    assert EMBEDDED in card.text and "## Quality" in card.text  # kept when verify's figures were added
    assert "--plot" in card.text  # the command as given


def test_card_shows_no_picture_when_none_was_made(tmp_path, cli, src):
    assert cli("convert", src, tmp_path / "dst", "--quiet").exit_code == 0
    assert not (tmp_path / "dst" / PLOT_FILE).exists()
    assert EMBEDDED not in (tmp_path / "dst" / CARD_FILE).read_text()


# --- refusals ---------------------------------------------------------------------------------

WITHOUT_MATPLOTLIB = ("import sys; sys.modules['matplotlib'] = None; from moequant.cli import app; "
                      "app(prog_name='moequant')")


@pytest.mark.parametrize("command", ["inspect", "verify", "convert"])
def test_plot_without_matplotlib_is_one_line_before_any_work(tmp_path, src, command):
    args = {"inspect": [src, "--plot", tmp_path / "p.png"],
            "verify": [tmp_path / "dst", "--reference", src, "--plot", tmp_path / "p.png"],
            "convert": [src, tmp_path / "dst", "--plot"]}[command]
    if command == "verify":
        list(Conversion(src, Quant.make("affine", 4)).run(tmp_path / "dst"))
    result = subprocess.run([sys.executable, "-c", WITHOUT_MATPLOTLIB, command, *map(str, args)],
                            capture_output=True, text=True, timeout=300)
    assert_no_traceback(result.stdout, result.stderr)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: --plot: matplotlib is not installed; expected `pip install 'moequant[plot]'` "
        "(or `pip install matplotlib`)"], result.stderr
    assert not (tmp_path / "p.png").exists()
    if command == "convert":
        assert not (tmp_path / "dst").exists()


def test_plot_needs_a_png_name(tmp_path, cli, src):
    result = cli("inspect", src, "--plot", tmp_path / "plan.svg")
    assert result.exit_code == 1
    assert result.output.strip() == f"error: --plot {tmp_path / 'plan.svg'}: not a .png name; expected a PNG " \
                                    "file name, like plan.png"


def test_inspect_plot_of_a_quantized_checkpoint_asks_for_as_source(tmp_path, cli, src):
    list(Conversion(src, Quant.make("affine", 4)).run(tmp_path / "dst"))
    result = cli("inspect", tmp_path / "dst", "--plot", tmp_path / "plan.png")
    assert result.exit_code == 1 and "expected --as-source with it" in result.output
    result = cli("inspect", tmp_path / "dst", "--as-source", "--plot", tmp_path / "plan.png")
    assert result.exit_code == 0, result.output
    assert_picture(tmp_path / "plan.png", (1200, 800))
