"""The ground floor: how MLX stores a quantized weight, as values. The modes and what mlx 0.32's
`mx.quantize` accepts in each (the one mode table, defaults included, as mlx's
`_defaults_for_mode` keeps them), a quantization (`Quant`), the roundings, and the shape
arithmetic of packed weights and their scales, both ways. Imports nothing from moequant but errors."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import Enum

import mlx.core as mx

from .errors import PlanError


class StrEnum(str, Enum):
    """A str-valued Enum that prints as its value, as Python 3.11's `enum.StrEnum` does (moequant
    runs on 3.10): plan files, help and messages show the plain string."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Mode(str, Enum):
    AFFINE = "affine"
    MXFP4 = "mxfp4"
    NVFP4 = "nvfp4"
    MXFP8 = "mxfp8"


class Rounding(StrEnum):
    PLAIN = "plain"  # mx.quantize's min/max (affine) or absolute-max (fp modes) ranges
    MSE = "mse"  # per group, the clipped range with the least error (rounding.py)
    GPTQ = "gptq"  # affine modules, with the --calib inputs' moments (gptq.py); the rest plainly


@dataclass(frozen=True)
class ModeSpec:
    bits: tuple[int, ...]
    group_sizes: tuple[int, ...]
    default_bits: int
    default_group_size: int
    scale_bytes: int  # bytes per group for scales (+ biases for affine), per output element of the dtype
    has_biases: bool


# What mlx 0.32's mx.quantize accepts per mode (FORMATS.md, checked with tiny tensors).
MODES: dict[Mode, ModeSpec] = {
    Mode.AFFINE: ModeSpec((2, 3, 4, 5, 6, 8), (32, 64, 128), 4, 64, 0, True),
    Mode.MXFP4: ModeSpec((4,), (32,), 4, 32, 1, False),
    Mode.NVFP4: ModeSpec((4,), (16,), 4, 16, 1, False),
    Mode.MXFP8: ModeSpec((8,), (32,), 8, 32, 1, False),
}
FP_MODES = tuple(m for m, spec in MODES.items() if not spec.has_biases)  # uint8 scales, one (bits, group) each

DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}


def defaults(mode: str | Mode) -> tuple[int, int]:
    """(bits, group size) of `mode` when neither is given."""
    spec = MODES[Mode(mode)]
    return spec.default_bits, spec.default_group_size


@dataclass(frozen=True)
class Quant:
    mode: Mode
    bits: int
    group_size: int
    global_scale: bool = False  # nvfp4 expert stacks: one float32 tensor scale per expert

    @classmethod
    def make(cls, mode: str | Mode = "affine", bits: int | None = None, group_size: int | None = None,
             where: str = "--mode/--bits/--group-size") -> "Quant":
        try:
            mode = Mode(mode)
        except ValueError:
            raise PlanError(f"{where}: mode {mode!r}; expected one of {', '.join(m.value for m in Mode)}") from None
        spec = MODES[mode]
        q = cls(mode, spec.default_bits if bits is None else bits,
                spec.default_group_size if group_size is None else group_size)
        if q.bits not in spec.bits or q.group_size not in spec.group_sizes:
            raise PlanError(
                f"{where}: {mode.value} with bits={q.bits}, group_size={q.group_size}; expected bits in "
                f"{list(spec.bits)} and group_size in {list(spec.group_sizes)}"
            )
        return q

    def to_dict(self) -> dict:
        d = {"group_size": self.group_size, "bits": self.bits, "mode": self.mode.value}
        return {**d, "global_scale": True} if self.global_scale else d

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "Quant":
        """A config/plan entry; an entry that omits `mode` is affine (what to_quantized defaults to).
        Each field is checked for its type first: these come from files people edit."""
        if not isinstance(d, dict):
            raise PlanError(f"{where}: {json.dumps(d)}; expected an object like "
                            '{"mode": "affine", "bits": 4, "group_size": 64}')
        if unknown := sorted(set(d) - {"mode", "bits", "group_size", "global_scale"}):
            raise PlanError(f"{where}.{unknown[0]}: unknown field; expected mode, bits, group_size, global_scale")
        for key, kind, what in (("mode", str, "a string"), ("bits", int, "a whole number"),
                                ("group_size", int, "a whole number"), ("global_scale", bool, "true or false")):
            if key in d and (not isinstance(d[key], kind) or kind is int and isinstance(d[key], bool)):
                raise PlanError(f"{where}.{key}: {json.dumps(d[key])}; expected {what}")
        q = cls.make(d.get("mode", "affine"), d.get("bits"), d.get("group_size"), where)
        return cls(q.mode, q.bits, q.group_size, d.get("global_scale", False))

    def __str__(self) -> str:
        return f"{self.mode.value}·{self.bits}·g{self.group_size}" + ("·gs" if self.global_scale else "")

    def packed_bytes(self, shape: tuple[int, ...], dtype: str) -> int:
        """Bytes of weight + scales (+ biases) for a weight of `shape` quantized this way."""
        spec = MODES[self.mode]
        per_group = 2 * DTYPES[dtype].size if spec.has_biases else spec.scale_bytes
        global_scales = 4 * shape[0] if self.global_scale else 0
        return 4 * math.prod(packed_shape(shape, self)) + math.prod(scales_shape(shape, self)) * per_group + \
            global_scales


def divides(in_dim: int, quant: Quant) -> bool:
    """Whether an input dimension splits into whole groups of `quant` (else it cannot be packed)."""
    return in_dim % quant.group_size == 0


def packed_shape(shape: tuple[int, ...], quant: Quant) -> tuple[int, ...]:
    """The uint32 weight that a float weight of `shape` [..., in] packs into."""
    *lead, n_in = shape
    return (*lead, n_in * quant.bits // 32)


def scales_shape(shape: tuple[int, ...], quant: Quant) -> tuple[int, ...]:
    """Its scales (and affine biases): one per group of `quant.group_size` inputs."""
    *lead, n_in = shape
    return (*lead, n_in // quant.group_size)


# the fp modes by their one (bits, group size): what uint8 scales of a given packing can be
_FP_PACKINGS = {defaults(m): m for m in FP_MODES}


def infer_quant(packed_in: int, groups: int, uint8_scales: bool, n_in: int, global_scale: bool) -> Quant:
    """(mode, bits, group) of a packed weight from its last dims, given the float input size: the
    inverse of packed_shape and scales_shape."""
    bits, group = packed_in * 32 // n_in, n_in // max(groups, 1)
    mode = _FP_PACKINGS.get((bits, group), Mode.AFFINE) if uint8_scales else Mode.AFFINE
    return Quant(mode, bits, group, global_scale)


def infer_fp_quant(packed_in: int, groups: int, global_scale: bool) -> Quant | None:
    """An fp-mode (uint8 scales) packing read without knowing the float input size: each fp mode
    has one (bits, group), so the shapes either fit one or none."""
    for (bits, group), mode in _FP_PACKINGS.items():
        if packed_in * 32 // bits == group * groups:
            return Quant(mode, bits, group, global_scale)
    return None
