"""Shared fixtures: tiny checkpoints built in tmp_path, a CLI runner, float references."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import mlx.core as mx
import pytest
from typer.testing import CliRunner

from moequant.cli import app
from moequant.evaluate import fixed_tokens, load_float32
from moequant.tiny import write_tiny_checkpoint

TOKENS = fixed_tokens(256)
# 2,048 characters of text: the tiny checkpoints' byte-level tokenizer makes each one a token
CALIB_TEXT = "".join(chr(32 + i % 95) for i in range(2048))


def assert_no_traceback(*outputs: str) -> None:
    """Whatever the outcome, the user never sees a traceback (issue 13)."""
    for text in outputs:
        assert "Traceback" not in (text or ""), text
        assert "Exception ignored" not in (text or ""), text


@pytest.fixture(scope="session", autouse=True)
def cache_home(tmp_path_factory):
    """moequant's cache (target.cache_dir) in a folder of this session's, never the user's."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("cache-home")
        mp.setenv("XDG_CACHE_HOME", str(path))
        yield path


@pytest.fixture
def cli():
    """The CLI in this process (Typer's CliRunner). Every test that runs the CLI goes through here
    or through `moequant` below: both check that no outcome shows a traceback."""
    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(app, [str(a) for a in args])
        # CliRunner keeps an uncaught exception in result.exception instead of printing it
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            f"uncaught {result.exception!r} (the user would see a traceback)\n{result.output}"
        assert_no_traceback(result.output)
        return result

    return invoke


def moequant(*args, env: dict | None = None, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """The CLI as a separate process (`python -m moequant`), as a user runs it: signals, exit codes
    and native crashes are real. No outcome may show a traceback."""
    result = subprocess.run([sys.executable, "-m", "moequant", *map(str, args)], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=timeout, **kwargs)
    assert_no_traceback(result.stdout, result.stderr)
    return result


@lru_cache(maxsize=None)
def _reference(arch: str, root: str) -> mx.array:
    src = write_tiny_checkpoint(Path(root) / f"{arch}-legacy", arch, style="legacy")
    logits = load_float32(src)(TOKENS)
    mx.eval(logits)
    return logits


@pytest.fixture(scope="session")
def reference_logits(tmp_path_factory):
    """Float logits of each tiny arch, computed by mlx-lm itself from a legacy-keyed config
    (rope_theta, num_experts: the names mlx-lm reads) and its own sanitize — independent of
    moequant's alias table and expert stacking."""
    root = str(tmp_path_factory.mktemp("reference"))
    return lambda arch: _reference(arch, root)


def logits_of(path: Path) -> mx.array:
    return load_float32(path)(TOKENS)


def layers_repeated(src: Path, dst: Path, layers: int, shards: int = 1) -> Path:
    """The tiny checkpoint `src` (one shard, float32: safetensors' numpy reader has no bfloat16) with its
    decoder layer 1 repeated to `layers` layers, in `shards` shards (a layer's tensors in one)."""
    from safetensors.numpy import load_file, save_file

    dst.mkdir()
    config = json.loads((src / "config.json").read_text())
    config["num_hidden_layers"] = layers
    (dst / "config.json").write_text(json.dumps(config))
    [shard] = src.glob("*.safetensors")
    parts, weight_map = [{} for _ in range(shards)], {}
    for key, value in load_file(shard).items():
        if ".layers." not in key:
            parts[0][key] = value
        elif ".layers.1." in key:
            for i in range(layers):
                parts[i * shards // layers][key.replace(".layers.1.", f".layers.{i}.")] = value
    for n, part in enumerate(parts):
        name = f"model-{n + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, dst / name, metadata={"format": "pt"})
        weight_map.update((k, name) for k in part)
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst
