"""Write DST: shards + index + config.json + sidecar files into a temporary sibling folder, check the
result against the plan, then rename it into place. Nothing half-written ever looks finished."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import mlx.core as mx

from .checkpoint import INDEX_FILE, SIDECAR_PATTERNS, read_safetensors_header
from .errors import OutputError
from .plan import MODES, Plan

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 5 << 30  # bytes, as mlx-lm


def check_destination(dst: Path, force: bool) -> None:
    """Refuse an existing DST before any work is done."""
    if dst.exists() and not force:
        raise OutputError(f"{dst}: already exists; expected a new folder (or pass --force to replace it)")
    if not dst.parent.exists():
        raise OutputError(f"{dst.parent}: no such folder; expected DST's parent to exist")


class Output:
    """A temporary folder beside DST that becomes DST only when `finish` succeeds."""

    def __init__(self, dst: Path, force: bool = False, shard_size: int = DEFAULT_SHARD_SIZE):
        self.dst = Path(dst)
        self.force = force
        self.shard_size = shard_size
        self.tmp = self.dst.parent / f".{self.dst.name}.moequant-partial-{os.getpid()}"
        self.pending: dict[str, mx.array] = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []  # keys per written shard, in order
        self.total_bytes = 0

    def __enter__(self) -> "Output":
        check_destination(self.dst, self.force)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)  # after a successful finish it is already gone

    def add(self, tensors: dict[str, mx.array]) -> None:
        """Evaluate and queue tensors; a shard is written whenever the queue passes the size limit."""
        mx.eval(list(tensors.values()))
        size = sum(v.nbytes for v in tensors.values())
        if self.pending and self.pending_bytes + size > self.shard_size:
            self._flush()
        self.pending.update(tensors)
        self.pending_bytes += size

    def _flush(self) -> None:
        name = self.tmp / f"shard-{len(self.shards):05d}.safetensors"
        mx.save_safetensors(str(name), self.pending, metadata={"format": "mlx"})
        self.shards.append(sorted(self.pending))
        self.total_bytes += self.pending_bytes
        self.pending, self.pending_bytes = {}, 0

    def finish(self, config: dict, source: Path, plan: Plan) -> None:
        if self.pending or not self.shards:
            self._flush()
        n = len(self.shards)
        names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        weight_map = {}
        for i, (keys, name) in enumerate(zip(self.shards, names)):
            (self.tmp / f"shard-{i:05d}.safetensors").rename(self.tmp / name)
            weight_map.update((k, name) for k in keys)
        index = {"metadata": {"total_size": self.total_bytes, "total_parameters": plan.params},
                 "weight_map": dict(sorted(weight_map.items()))}
        (self.tmp / INDEX_FILE).write_text(json.dumps(index, indent=4))
        for pattern in SIDECAR_PATTERNS:
            for file in source.glob(pattern):
                if file.is_file() and not (self.tmp / file.name).exists():
                    shutil.copy(file, self.tmp / file.name)
        (self.tmp / "config.json").write_text(json.dumps(dict(sorted(config.items())), indent=4))
        verify_output(self.tmp, plan)
        if self.dst.exists():  # --force: the old DST goes only once the new one is complete
            old = self.dst.parent / f".{self.dst.name}.moequant-old-{os.getpid()}"
            self.dst.rename(old)
            shutil.rmtree(old)
        self.tmp.rename(self.dst)


def output_config(resolved_config: dict, plan: Plan) -> dict:
    """config.json for DST: the resolved source config, with `quantization` and its alias."""
    config = {k: v for k, v in resolved_config.items() if k not in ("quantization", "quantization_config")}
    quantization = plan.quantization_config()
    if quantization is not None:
        config["quantization"] = quantization
        config["quantization_config"] = dict(quantization)
    return config


def verify_output(folder: Path, plan: Plan) -> None:
    """Every module is stored as the plan says (packed or float, with its own parameters), and the
    config's quantization entries say the same. Any difference is an OutputError naming the module."""
    index = json.loads((folder / INDEX_FILE).read_text())["weight_map"]
    stored = {}
    for name in sorted(set(index.values())):
        stored.update(read_safetensors_header(folder / name))
    if set(stored) != set(index):
        odd = sorted(set(stored) ^ set(index))[0]
        raise OutputError(f"{INDEX_FILE}: disagrees with the shards about {odd}; expected the same tensors")
    config = json.loads((folder / "config.json").read_text())
    want = plan.quantization_config()
    for key in ("quantization", "quantization_config"):
        if config.get(key) != want:
            raise OutputError(f"config.json: {key} is {config.get(key)!r}; expected {want!r} from the plan")
    for row in plan.rows:
        weight = stored.get(f"{row.path}.weight")
        if weight is None:
            continue  # modules whose parameters are not named weight (rare) are checked by load tests
        scales = stored.get(f"{row.path}.scales")
        if row.quant is None:
            if not weight.is_float or scales is not None or weight.shape != row.shape:
                raise OutputError(
                    f"{row.path}: stored as {weight.dtype} {list(weight.shape)}"
                    f"{' with scales' if scales is not None else ''}; expected float {list(row.shape)} (plan: keep)"
                )
            continue
        q, spec = row.quant, MODES[row.quant.mode]
        *lead, n_in = row.shape
        packed = (*lead, n_in * q.bits // 32)
        groups = (*lead, n_in // q.group_size)
        biases, global_scale = stored.get(f"{row.path}.biases"), stored.get(f"{row.path}.global_scale")
        ok = (
            weight.dtype == "U32" and weight.shape == packed and scales is not None and scales.shape == groups
            and (scales.dtype != "U8") == spec.has_biases and (biases is not None) == spec.has_biases
            and (global_scale is not None) == q.global_scale
        )
        if not ok:
            got = f"{weight.dtype} {list(weight.shape)}" + (
                f", scales {scales.dtype} {list(scales.shape)}" if scales is not None else ", no scales")
            raise OutputError(f"{row.path}: stored as {got}; expected uint32 {list(packed)} with scales "
                              f"{list(groups)} for {q} (plan)")
