"""Model surgery on a built mlx-lm or mlx-vlm model: the module at a path, the expert containers,
a stand-in that records what a module is called with, and one for a whole decoder layer. Nothing
here reads a checkpoint."""

from __future__ import annotations

import importlib
import importlib.util
from contextlib import contextmanager
from typing import Callable, Iterator

import mlx.core as mx
import mlx.nn as nn


def parent_and_key(model: nn.Module, path: str) -> tuple[nn.Module | list, str | int]:
    """(the module or list holding `path`, its key there): `parent[key]` is the module at `path`."""
    *parents, last = path.split(".")
    node = model
    for part in parents:
        node = node[int(part)] if isinstance(node, (list, tuple)) else node[part]
    return node, (int(last) if isinstance(node, (list, tuple)) else last)


def module_at(model: nn.Module, path: str):
    """The module (or list of modules) at a dotted path such as `model.layers.3.mlp`."""
    parent, key = parent_and_key(model, path)
    return parent[key]


def _runner_modules(model: nn.Module) -> list:
    """mlx-lm's switch_layers, and mlx-vlm's when `model` is built from mlx-vlm's classes (imported
    only then: importing mlx-vlm takes seconds)."""
    modules = [importlib.import_module("mlx_lm.models.switch_layers")]
    if importlib.util.find_spec("mlx_vlm") is not None and any(
            type(m).__module__.startswith("mlx_vlm.") for _, m in model.named_modules()):
        modules.append(importlib.import_module("mlx_vlm.models.switch_layers"))
    return modules


def expert_stack_types(model: nn.Module) -> tuple[type, ...]:
    """The expert-stack classes (`[E, out, in]` weights) `model` may hold: mlx-lm's and mlx-vlm's
    SwitchLinear and QuantizedSwitchLinear."""
    return tuple(getattr(m, name) for m in _runner_modules(model) for name in ("SwitchLinear", "QuantizedSwitchLinear"))


def natural_order(path: str) -> tuple:
    """Sort key putting `layers.2` before `layers.10`."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.split("."))


def expert_containers(model: nn.Module) -> dict[str, str]:
    """MoE block path -> path of the module it calls with the selected experts' indices: every
    module with an expert-stack child (a `SwitchGLU` / `SwitchMLP`), keyed by its parent; in layer
    order."""
    stacks = expert_stack_types(model)
    containers = {}
    for path, module in model.named_modules():
        children = [v for v in module.values() if isinstance(v, nn.Module)]
        if path and any(isinstance(c, stacks) for c in children):
            containers[path.rpartition(".")[0]] = path
    return dict(sorted(containers.items(), key=lambda kv: natural_order(kv[0])))


class Recorder(nn.Module):
    """Stands in for a module: calls `seen(x, indices)` with each call's input and, for an expert
    container, the selected experts' indices (None otherwise), then runs the module."""

    def __init__(self, inner: nn.Module, seen: Callable[[mx.array, mx.array | None], None]):
        super().__init__()
        self.inner = inner
        object.__setattr__(self, "_seen", seen)  # a plain attribute, not part of the module tree

    def __getattr__(self, key: str):
        """The module's own attributes too: a caller may read them before calling it (mlx-vlm's inkling reads
        its expert stack's down_proj)."""
        try:
            return super().__getattr__(key)
        except AttributeError:
            if "inner" not in self:  # still being built
                raise
            return getattr(self["inner"], key)

    def __call__(self, x, *args, **kwargs):
        indices = args[0] if args else kwargs.get("indices")
        routed = isinstance(indices, mx.array) and mx.issubdtype(indices.dtype, mx.integer)
        self._seen(x, indices if routed else None)
        return self.inner(x, *args, **kwargs)


@contextmanager
def standing_in(model: nn.Module, stand_ins: dict[str, Callable[[nn.Module], nn.Module]]) -> Iterator[None]:
    """Inside the block, the module at each path of `stand_ins` is replaced by what its function makes
    of it; the original modules are put back on exit."""
    swapped = []
    try:
        for path, make in stand_ins.items():
            parent, key = parent_and_key(model, path)
            original = parent[key]
            parent[key] = make(original)
            swapped.append((parent, key, original))
        yield
    finally:
        for parent, key, original in reversed(swapped):
            parent[key] = original


def recording(model: nn.Module, seen: dict[str, Callable[[mx.array, mx.array | None], None]]):
    """Inside the block, each module at a path of `seen` reports every call to its callback (see
    Recorder). The original modules are put back on exit."""
    return standing_in(model, {path: (lambda m, c=callback: Recorder(m, c)) for path, callback in seen.items()})


class StopForward(Exception):
    """Ends a forward pass once the decoder layers' inputs are known (or, in transformers, the last has run)."""


class Handed:
    """What a LayerStandIn returns beside the hidden states where the model's layers return more
    (Gemma 4's keys, values and offset): a mark that shows whether the model's forward hands it on
    to a later layer."""


def skeleton(value):
    """A decoder layer's structure as built, before any weights are loaded into it: the same classes
    and plain attributes, its arrays the lazy ones it was built with (never evaluated: no memory),
    so that loading the layer's weights leaves it untouched and releasing them is not held up by it."""
    if isinstance(value, nn.Module):
        out = type(value).__new__(type(value))
        out.__dict__.update(value.__dict__)
        for key, item in value.items():
            dict.__setitem__(out, key, skeleton(item))
        return out
    if isinstance(value, (list, tuple)):
        return type(value)(skeleton(v) for v in value)
    if isinstance(value, dict):
        return {k: skeleton(v) for k, v in value.items()}
    return value


class LayerStandIn(nn.Module):
    """Stands in for a decoder layer in the model's own forward: keeps in `calls` what it is called
    with ((x, args, kwargs): the masks and such each layer gets; the `last` one then raises
    StopForward) and returns `out` if set, else its input (with `outputs` - 1 Handed marks after it
    where the layers return that many values). Its other attributes are `layer`'s (`is_linear`,
    `layer_type`, …, which a hybrid model's forward reads to pick each layer's mask or cache;
    `self_attn.rotary_emb`, through which mlx-vlm's Qwen3-VL computes every layer's positions): a
    skeleton where the layer's weights must not be held."""

    def __init__(self, layer: nn.Module, calls: list | None = None, last: bool = False, outputs: int = 1):
        super().__init__()
        object.__setattr__(self, "_layer", layer)
        object.__setattr__(self, "_calls", calls)
        object.__setattr__(self, "_last", last)
        object.__setattr__(self, "_outputs", outputs)
        object.__setattr__(self, "out", None)

    def __getattr__(self, key):
        try:
            return super().__getattr__(key)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_layer"), key)

    def __call__(self, x, *args, **kwargs):
        if self._calls is not None:
            self._calls.append((x, args, kwargs))
            if self._last:
                raise StopForward
        h = x if self.out is None else self.out
        return h if self._outputs == 1 else (h, *(Handed() for _ in range(self._outputs - 1)))
