"""Streaming conversion: interrupted runs leave nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from moequant.card import CARD_FILE
from moequant.checkpoint import Stacked, read_checkpoint
from moequant.target import build_model, resolve_config
from moequant.tiny import ALL_ARCHS, write_tiny_checkpoint

from conftest import assert_no_traceback


def _slow_checkpoint(path):
    """A qwen3_moe checkpoint in mlx-lm's own stacked layout, large enough (~200 MB bf16) that a
    conversion with --rounding mse takes several seconds on a CPU."""
    config = json.loads((write_tiny_checkpoint(path, "qwen3_moe", style="legacy") / "config.json").read_text())
    config.update(hidden_size=512, num_hidden_layers=8, num_experts=16, moe_intermediate_size=512,
                  num_attention_heads=8, head_dim=64)
    model = build_model(resolve_config(config)[0])
    weights = {k: v.astype(mx.bfloat16) for k, v in tree_flatten(model.parameters())}
    (path / "model.safetensors").unlink()
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_conversion_leaves_neither_dst_nor_its_temporary_folder(tmp_path, sig, code):
    """Ctrl-C exits 130 and SIGTERM 143, each with one line: no traceback, no 'Exception ignored',
    no native abort (the worker threads are joined and their mlx streams released)."""
    src = _slow_checkpoint(tmp_path / "src")
    dst = tmp_path / "dst"
    proc = subprocess.Popen([sys.executable, "-m", "moequant", "convert", str(src), str(dst), "--rounding", "mse"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".dst.moequant-partial-*")):  # wait until it is writing
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert_no_traceback(stdout, stderr)
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [
        "error: interrupted; DST was not written"], stderr
    assert not stdout
    assert not dst.exists() and not list(tmp_path.glob(".dst.moequant-*"))


def test_a_killed_runs_leftover_folder_is_removed_by_the_next_run(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    leftover = tmp_path / f".dst.moequant-partial-{2**22 + 12345}"  # no such process
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    assert cli("convert", src, tmp_path / "dst", "--quiet").exit_code == 0
    assert not leftover.exists() and (tmp_path / "dst" / "model.safetensors").exists()
    assert os.path.exists(tmp_path / "dst" / "config.json")


@pytest.mark.parametrize("mode", ["affine", "nvfp4"])
def test_two_worker_threads_write_the_same_bytes_as_one(tmp_path, cli, mode):
    src = write_tiny_checkpoint(tmp_path / "src", "deepseek_v3", shards=2)
    for workers in ("1", "2"):
        result = cli("convert", src, tmp_path / f"w{workers}", "--mode", mode, "--workers", workers,
                     "--shard-size", "200KB", "--quiet")
        assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "w1").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "w2").iterdir()) and len(names) > 4
    for name in set(names) - {CARD_FILE}:  # the model card names DST (tests/test_card.py checks it)
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name


@pytest.mark.parametrize("arch,mode", [("qwen3_moe", "affine"), ("mixtral", "affine"), ("qwen3_moe", "mxfp4"),
                                       ("mixtral", "nvfp4")])
def test_expert_stacks_written_expert_by_expert_equal_the_stacked_quantization(tmp_path, cli, monkeypatch, arch,
                                                                                mode):
    """Per-expert SRC tensors are quantized and written expert by expert, a few at a time (never
    stacked in memory): the bytes equal those of quantizing the stacked tensor."""
    import moequant.quantize as quantize
    import moequant.writer as writer

    src = write_tiny_checkpoint(tmp_path / "src", arch)
    seen = []
    real = quantize.Quantizer.run

    def counting(quantizer, weights):
        out = real(quantizer, weights)
        seen.extend(k for k, v in out.items() if isinstance(v, Stacked))
        return out

    def stacked(quantizer, weights):  # every expert stack built before it is quantized
        return real(quantizer, {k: mx.stack(v.parts) if isinstance(v, Stacked) else v for k, v in weights.items()})

    monkeypatch.setattr(writer, "PARTS_AT_ONCE", 3)  # tiny checkpoints have 4 experts: chunks of 3 + 1
    monkeypatch.setattr(quantize.Quantizer, "run", counting)
    # --pool threads: the patches above live in this process, not in worker processes
    assert cli("convert", src, tmp_path / "parts", "--mode", mode, "--shard-size", "100KB", "--quiet",
               "--pool", "threads").exit_code == 0
    assert seen and all(k.split(".")[-1] in ("weight", "scales", "biases", "global_scale") for k in seen)
    assert any(k.endswith(".global_scale") for k in seen) == (mode == "nvfp4")
    monkeypatch.setattr(quantize.Quantizer, "run", stacked)
    assert cli("convert", src, tmp_path / "whole", "--mode", mode, "--shard-size", "100KB", "--quiet",
               "--pool", "threads").exit_code == 0
    names = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "parts").iterdir()) and len(names) > 4
    for name in set(names) - {CARD_FILE}:  # the model card names DST
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "parts" / name).read_bytes(), name


def test_tensor_bytes_are_c_order_for_views_and_copies():
    import numpy as np

    from moequant.checkpoint import tensor_bytes

    a = mx.arange(24, dtype=mx.float32).reshape(2, 3, 4)
    for view in (a, a.transpose(0, 2, 1), a[:, ::2], a.astype(mx.bfloat16).T, mx.array(7, dtype=mx.uint8)):
        expected = np.array(view.astype(mx.float32))
        got = np.frombuffer(bytes(tensor_bytes(view)), dtype=np.uint8)
        assert got.size == view.nbytes
        assert np.array_equal(np.array(mx.array(got).view(view.dtype).reshape(view.shape).astype(mx.float32)), expected)


@pytest.mark.parametrize("arch", sorted(ALL_ARCHS))
def test_every_architecture_is_read_a_decoder_layer_at_a_time(tmp_path, arch):
    """A conversion holds one group of tensors at a time (a decoder layer, or the rest): DBRX's
    `transformer.blocks.N` were read as no decoder layers at all, so its whole model was one group
    (DBRX's 132B parameters in memory at once)."""
    ckpt = read_checkpoint(write_tiny_checkpoint(tmp_path / "src", arch))
    groups = ckpt.groups()
    layers = [g for g in groups if g.name != "rest"]
    rest = sum(ckpt.tensors[k].nbytes for g in groups if g.name == "rest" for k in g.keys)
    assert len(layers) >= 2 and rest < 0.4 * sum(t.nbytes for t in ckpt.tensors.values()), [g.name for g in groups]
