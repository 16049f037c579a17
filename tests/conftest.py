"""Shared fixtures: tiny checkpoints built in tmp_path, a CLI runner, float references."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import mlx.core as mx
import pytest
from typer.testing import CliRunner

from moequant.cli import app
from moequant.evaluate import fixed_tokens, load_float32
from moequant.tiny import write_tiny_checkpoint

TOKENS = fixed_tokens(256)


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


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
