"""--rounding gptq with the input moments in files (calibrate.Moments): the same bytes whatever the
workers, processes or threads, and the files removed however the conversion ends."""

from __future__ import annotations

import multiprocessing.util
import os
import signal
import subprocess
import sys
import tempfile
import time

import mlx.core as mx
import numpy as np
import pytest

from moequant.card import CARD_FILE
from moequant.convert import Conversion
from moequant.formats import Quant
from moequant.tiny import write_tiny_checkpoint

from test_streaming import _slow_checkpoint

GPTQ = ("--rounding", "gptq", "--calib-sequences", "2", "--calib-length", "32")


def _files(folder):
    """Every file's bytes but the model card's, which names DST (tests/test_card.py checks it)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != CARD_FILE}


@pytest.fixture
def temp(tmp_path, monkeypatch):
    """This process's temporary folder (where the moments' files go), empty."""
    folder = tmp_path / "temp"
    folder.mkdir()
    # multiprocessing's own folder (the forkserver's socket) made first, where it always is: a pytest
    # tmp_path is too long for an AF_UNIX socket path, and it is cached for the whole process
    multiprocessing.util.get_temp_dir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _ids(path, n: int = 64):
    np.save(path, np.random.default_rng(1).integers(0, 256, n))
    return path


@pytest.mark.parametrize("budget", [(), ("--target-bpw", "4")], ids=["moments", "target-bpw"])
def test_one_and_many_workers_processes_and_threads_write_the_same_bytes(tmp_path, cli, temp, budget):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", shards=2)
    calib = _ids(tmp_path / "ids.npy")
    runs = {"p1": ("--workers", "1"), "p2": ("--workers", "2"), "p5": ("--workers", "5"),  # p5: layers shared
            "t1": ("--workers", "1", "--pool", "threads"), "t3": ("--workers", "3", "--pool", "threads")}
    for name, args in runs.items():
        result = cli("convert", src, tmp_path / name, "--calib", calib, *GPTQ, *budget, "--quiet", *args)
        assert result.exit_code == 0, result.output
        assert not list(temp.glob("moequant-*")), name  # the moments' files are gone
    first = _files(tmp_path / "p1")
    assert len(first) > 3
    for name in runs:
        assert _files(tmp_path / name) == first, name
    plain = cli("convert", src, tmp_path / "plain", "--quiet", *budget, *(("--calib", calib, *GPTQ[2:]) if budget else ()))
    assert plain.exit_code == 0 and _files(tmp_path / "plain") != first  # GPTQ rounded something


@pytest.mark.parametrize("budget", [{}, {"target_bpw": 4.0}], ids=["moments", "target-bpw"])
@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_the_moments_files_are_removed_when_a_conversion_fails(tmp_path, temp, budget, pool):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    conversion = Conversion(src, Quant.make("affine", 4), rounding="gptq", calib=str(_ids(tmp_path / "ids.npy")),
                            calib_sequences=2, calib_length=32, **budget)
    steps = conversion.run(tmp_path / "dst", workers=2, pool=pool)
    next(steps)
    assert list(temp.glob("moequant-moments-*"))  # in use
    for error in (KeyboardInterrupt, RuntimeError):
        with pytest.raises(error):
            steps.throw(error)
        assert not list(temp.glob("moequant-*")) and not (tmp_path / "dst").exists()
        steps = conversion.run(tmp_path / "dst", workers=2, pool=pool)  # measures again
        next(steps)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals")
def test_an_interrupted_gptq_conversion_leaves_no_moments_files(tmp_path):
    src = _slow_checkpoint(tmp_path / "src")
    temp = tmp_path / "temp"
    temp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "moequant", "convert", str(src), str(tmp_path / "dst"), *GPTQ,
                             "--calib", str(_ids(tmp_path / "ids.npy")), "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(temp)})
    deadline = time.time() + 120
    # wait until the workers quantize with the moments
    while not (list(temp.glob("moequant-moments-*")) and list(tmp_path.glob(".dst.moequant-partial-*"))):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "error: interrupted; DST was not written" in stderr
    assert not list(temp.glob("moequant-*")) and not (tmp_path / "dst").exists()


def _tensors(folder):
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in mx.load(str(f)).items()}


def test_non_gated_experts_are_rounded_by_gptq_and_a_module_the_pass_never_reaches_is_named(tmp_path, cli, temp):
    """Nemotron-H's experts (fc1, relu², fc2: no gate) had no moments and were rounded plainly under
    --rounding gptq without a word; they now take GPTQ like any expert stack. A module the text never
    reaches (a vision block quantized by an override) is rounded plainly, and a note names it."""
    calib = _ids(tmp_path / "ids.npy", 256)
    src = write_tiny_checkpoint(tmp_path / "nemotron", "nemotron_h")
    gptq_args = ("--calib", calib, "--rounding", "gptq", "--calib-sequences", "2", "--calib-length", "128")
    for name, args in {"gptq": gptq_args, "plain": ()}.items():
        result = cli("convert", src, tmp_path / name, *args, "--quiet")
        assert result.exit_code == 0, result.output
    gptq, plain = _tensors(tmp_path / "gptq"), _tensors(tmp_path / "plain")
    stacks = [k for k in gptq if ".switch_mlp.fc" in k and k.endswith(".weight")]
    assert {k.rsplit(".", 2)[1] for k in stacks} == {"fc1", "fc2"}
    for key in stacks:
        assert gptq[key].shape == plain[key].shape and not (gptq[key] == plain[key]).all().item(), key

    src = write_tiny_checkpoint(tmp_path / "vl", "qwen3_vl_moe", vision=True)
    result = cli("convert", src, tmp_path / "vl-gptq", "--calib", calib, *GPTQ, "--override",
                 "vision_tower.blocks.*.attn.qkv=bits=4,group=32")
    assert result.exit_code == 0, result.output
    assert ("--rounding gptq: 2 affine modules rounded plainly, no moments of their inputs measured (modules the "
            "text never reaches; MLA's per-head embed_q): vision_tower.blocks.0.attn.qkv, "
            "vision_tower.blocks.1.attn.qkv") in " ".join(result.output.split())


def test_mlas_unembed_out_is_rounded_by_gptq_and_embed_q_is_named(tmp_path, cli, temp):
    """MLA's unembed_out (mlx-lm's MultiLinear) is called on its input, the latent, in prefill: it takes
    GPTQ on that input's moments. embed_q is called there on the latent transposed (its input, the
    queries, never seen): rounded plainly, and the note names it."""
    calib = _ids(tmp_path / "ids.npy", 256)
    src = write_tiny_checkpoint(tmp_path / "deepseek", "deepseek_v3")
    outputs = {}
    for name, args in {"gptq": ("--calib", calib, *GPTQ), "plain": ()}.items():
        result = cli("convert", src, tmp_path / name, *args)
        assert result.exit_code == 0, result.output
        outputs[name] = (_tensors(tmp_path / name), " ".join(result.output.split()))
    (gptq, said), (plain, _) = outputs["gptq"], outputs["plain"]
    for layer in (0, 1):
        attention = f"model.layers.{layer}.self_attn"
        assert not (gptq[f"{attention}.unembed_out.weight"] == plain[f"{attention}.unembed_out.weight"]).all().item()
        assert (gptq[f"{attention}.embed_q.weight"] == plain[f"{attention}.embed_q.weight"]).all().item()
    assert ("--rounding gptq: 2 affine modules rounded plainly, no moments of their inputs measured (modules the "
            "text never reaches; MLA's per-head embed_q): model.layers.0.self_attn.embed_q, "
            "model.layers.1.self_attn.embed_q") in said
