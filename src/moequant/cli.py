"""The `moequant` command. The only module that prints: results on stdout, everything else on stderr."""

from __future__ import annotations

import json
import logging
import signal
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .errors import CheckpointError, MoequantError
from .names import layer_of
from .plan import DTYPES, RECIPES, ROUNDINGS, Mode, Override, Plan, Quant

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Convert Mixture-of-Experts checkpoints into quantized MLX checkpoints.")
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

BitsOpt = Annotated[Optional[int], typer.Option("--bits", help="Bits per weight (default: 4; 8 for mxfp8).")]
GroupOpt = Annotated[Optional[int], typer.Option("--group-size", help="Group size (default per mode: affine 64, mxfp4 32, nvfp4 16, mxfp8 32).")]
ModeOpt = Annotated[Mode, typer.Option("--mode", help="Quantization mode.")]
GateOpt = Annotated[str, typer.Option("--gate-bits", help="Router gates: 'float' (default) or 8 (affine, group 64).")]
NoQuantOpt = Annotated[bool, typer.Option("--no-quantize", help="Layout and dtype conversion only.")]
DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="dtype of unquantized tensors: bfloat16, float16, float32 (default: the checkpoint's).")]
GlobalScaleOpt = Annotated[bool, typer.Option("--global-scale/--no-global-scale", help="nvfp4: a per-expert tensor scale on expert stacks (Apple GPU; mlx's CPU gather_qmm refuses it).")]
RecipeOpt = Annotated[str, typer.Option("--recipe", help="uniform, moe, mixed_2_6, mixed_3_4, mixed_3_6 or mixed_4_6 (see README).")]
RoundingOpt = Annotated[str, typer.Option("--rounding", help="plain (mx.quantize's min/max); mse: per group, the clipped range with the least error (slower); gptq: affine modules rounded with GPTQ on --calib data (slowest).")]
TargetOpt = Annotated[Optional[float], typer.Option("--target-bpw", help="Size budget in bits per weight: bits and group size chosen per module (reads the weights).")]
CalibOpt = Annotated[Optional[Path], typer.Option("--calib", help="Calibration text (or .npy token ids) for --target-bpw (without it a data-free proxy is used) and --rounding gptq.")]
OverrideOpt = Annotated[Optional[list[str]], typer.Option("--override", help="PATTERN=SPEC, repeatable: '*.shared_expert.*=bits=8,group=64' or '*.mlp.gate=keep'.")]
RunnerOpt = Annotated[Optional[str], typer.Option("--for", help="mlx-lm (text only) or mlx-vlm (vision tower kept); default: mlx-vlm for a vision-language SRC when mlx-vlm is installed.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or info on stderr.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging on stderr.")]


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(1)


def _logging(quiet: bool, verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr, force=True)


def _choices(no_quantize: bool, mode: Mode, bits: int | None, group_size: int | None, gate_bits: str,
             dtype: str | None, global_scale: bool, recipe: str, overrides: list[str] | None, rounding: str,
             target_bpw: float | None = None, calib: Path | None = None) -> dict:
    """Conversion(...) keyword arguments from the plan options shared by convert and inspect."""
    if recipe not in RECIPES:
        raise MoequantError(f"--recipe {recipe}: expected one of {', '.join(RECIPES)}")
    if rounding not in ROUNDINGS:
        raise MoequantError(f"--rounding {rounding}: expected one of {', '.join(ROUNDINGS)}")
    if calib is not None and target_bpw is None and rounding != "gptq":
        raise MoequantError("--calib: only used with --target-bpw or --rounding gptq; expected one of them")
    if rounding == "gptq" and calib is None:
        raise MoequantError("--rounding gptq: needs calibration data; expected --calib FILE")
    if target_bpw is not None and not 1.0 < target_bpw <= 16.0:
        raise MoequantError(f"--target-bpw {target_bpw}: expected a budget between 1 and 16 bits per weight")
    if dtype is not None and dtype not in DTYPES:
        raise MoequantError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    return dict(quant=None if no_quantize else Quant.make(mode, bits, group_size), gate_bits=_gate_bits(gate_bits),
                dtype=dtype, global_scale=global_scale, recipe=recipe, rounding=rounding, target_bpw=target_bpw,
                calib=str(calib) if calib else None, overrides=tuple(Override.parse(o) for o in overrides or ()))


def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _gate_bits(value: str) -> int | None:
    if value == "float":
        return None
    if value == "8":
        return 8
    raise MoequantError(f"--gate-bits {value}: expected 'float' or 8 (router gates never go below 8 bits)")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return ""


def _parse_size(value: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "K": 10**3, "M": 10**6, "G": 10**9, "B": 1}
    text = value.strip().upper()
    for unit, factor in sorted(units.items(), key=lambda u: -len(u[0])):
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * factor)
            except ValueError:
                break
    try:
        return int(text)
    except ValueError:
        raise MoequantError(f"--shard-size {value}: expected a size like 5GB, 500MB or a byte count") from None


def summary_line(plan: Plan, where: str) -> str:
    counts = ", ".join(f"{n} {k}" for k, n in sorted(plan.counts().items()))
    return (f"{where}: {plan.bits_per_weight:.2f} bits/weight, {_size(plan.bytes_after)} "
            f"(from {_size(plan.bytes_before)}); modules: {counts}")


def _ranges(ids: list[int]) -> str:
    spans, start = [], ids[0]
    for prev, cur in zip(ids, ids[1:] + [None]):
        if cur != prev + 1:
            spans.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return ",".join(spans)


def plan_table(plan: Plan, expand: bool = False) -> Table:
    """One row per module; unless `expand`, rows that differ only in their layer index are one row
    (`model.layers.{0-46}.mlp.gate`), with the byte columns summed."""
    table = Table(title=f"plan for {plan.model_type}", show_lines=False)
    for name, justify in (("module", "left"), ("role", "left"), ("shape", "left"), ("source", "left"),
                          ("decision", "left"), ("rule", "left"), ("bytes before", "right"), ("bytes after", "right")):
        table.add_column(name, justify=justify, overflow="fold")
    groups: dict[tuple, list] = {}
    for r in plan.rows:
        where = None if expand else layer_of(r.path)
        pattern = r.path if where is None else f"{where[0]}.{{}}{r.path[len(where[0]) + len(str(where[1])) + 1:]}"
        groups.setdefault((pattern, r.role, r.shape, r.origin, r.action, r.rule), []).append((where, r))
    for (pattern, role, shape, origin, action, rule), members in groups.items():
        path = pattern if members[0][0] is None else pattern.replace(
            "{}", "{" + _ranges([w[1] for w, _ in members]) + "}" if len(members) > 1 else str(members[0][0][1]), 1)
        table.add_row(path, role.value, "×".join(map(str, shape)), origin, action, rule,
                      _size(sum(r.bytes_before for _, r in members)), _size(sum(r.bytes_after for _, r in members)))
    return table


def role_table(plan: Plan) -> Table:
    table = Table(title=f"{plan.model_type}: where the size goes")
    for name in ("role", "modules", "parameters", "decisions", "bytes before", "bytes after", "bits/weight"):
        table.add_column(name, justify="left" if name in ("role", "decisions") else "right")
    for role, rows in plan.by_role().items():
        params, after = sum(r.params for r in rows), sum(r.bytes_after for r in rows)
        decisions = sorted({f"{r.action} ({r.rule})" for r in rows})
        table.add_row(role.value, str(len(rows)), f"{params:,}", ", ".join(decisions),
                      _size(sum(r.bytes_before for r in rows)), _size(after), f"{8 * after / params:.2f}")
    return table


@app.command()
def convert(
    src: Annotated[str, typer.Argument(help="Checkpoint folder or hub id (resolved through the local cache).")],
    dst: Annotated[Path, typer.Argument(help="Output folder (must not exist unless --force).")],
    bits: BitsOpt = None, group_size: GroupOpt = None, mode: ModeOpt = Mode.AFFINE, gate_bits: GateOpt = "float",
    no_quantize: NoQuantOpt = False, dtype: DtypeOpt = None, global_scale: GlobalScaleOpt = True,
    recipe: RecipeOpt = "uniform", override: OverrideOpt = None, rounding: RoundingOpt = "plain",
    target_bpw: TargetOpt = None, calib: CalibOpt = None, runner: RunnerOpt = None,
    plan_file: Annotated[Optional[Path], typer.Option("--plan", help="Convert exactly this plan (the JSON of `inspect --json`); plan options are then ignored.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace DST if it exists.")] = False,
    shard_size: Annotated[str, typer.Option("--shard-size", help="Largest output shard.")] = "5GB",
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Decoder layers converted at once, one process each (default: one per core, fewer if memory is short).")] = None,
    pool: Annotated[str, typer.Option("--pool", help="Workers as `processes` (default) or `threads` (one process; the GIL serializes them).")] = "processes",
    json_out: JsonOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False,
) -> None:
    """Convert SRC into a quantized MLX checkpoint in DST."""
    from .convert import Conversion
    from .writer import check_destination

    _logging(quiet, verbose)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        check_destination(dst, force)
        choices = _choices(no_quantize, mode, bits, group_size, gate_bits, dtype, global_scale, recipe, override,
                           rounding, target_bpw, calib)
        conversion = (Conversion(src, plan=_read_plan(plan_file), runner=runner, **choices) if plan_file
                      else Conversion(src, runner=runner, **choices))
        if pool not in ("processes", "threads"):
            raise MoequantError(f"--pool {pool}: expected processes or threads")
        steps = conversion.run(dst, force=force, shard_size=_parse_size(shard_size), workers=workers, pool=pool)
        total = conversion.ckpt.nbytes
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[done]}"),
                      TimeRemainingColumn(), console=err, disable=quiet, transient=True) as progress:
            task = progress.add_task("converting", total=total, done="")
            for step in steps:
                progress.update(task, advance=step.bytes_read, description=f"{step.group} ({step.index}/{step.total})",
                                done=f"{_size(progress.tasks[0].completed + step.bytes_read)} of {_size(total)}")
    except MoequantError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted; DST was not written")
    plan = conversion.plan
    if json_out:
        _print_json({"dst": str(dst), **plan.to_json()["totals"], "counts": plan.counts()})
    else:
        out.print(summary_line(plan, str(dst)), highlight=False, soft_wrap=True)


def _read_plan(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise MoequantError(f"--plan {file}: not found; expected the JSON of `moequant inspect SRC --json`") from None
    except json.JSONDecodeError as e:
        raise MoequantError(f"--plan {file}: not JSON ({e}); expected the output of `moequant inspect SRC --json`") from None


@app.command()
def inspect(
    path: Annotated[str, typer.Argument(help="Checkpoint folder or hub id.")],
    bits: BitsOpt = None, group_size: GroupOpt = None, mode: ModeOpt = Mode.AFFINE, gate_bits: GateOpt = "float",
    no_quantize: NoQuantOpt = False, dtype: DtypeOpt = None, global_scale: GlobalScaleOpt = True,
    recipe: RecipeOpt = "uniform", override: OverrideOpt = None, rounding: RoundingOpt = "plain",
    target_bpw: TargetOpt = None, calib: CalibOpt = None, runner: RunnerOpt = None, json_out: JsonOpt = False,
    expand: Annotated[bool, typer.Option("--all", help="One row per module (no collapsing across layers).")] = False,
    check: Annotated[bool, typer.Option("--check", help="MLX-quantized PATH: exit 1 if config and tensors disagree.")] = False,
    as_source: Annotated[bool, typer.Option("--as-source", help="MLX-quantized PATH: print its conversion plan instead of what it stores.")] = False,
    quiet: QuietOpt = False, verbose: VerboseOpt = False,
) -> None:
    """Print the plan for PATH (headers only, nothing converted); for an MLX-quantized PATH, what it stores."""
    from .checkpoint import mlx_quantization, read_checkpoint
    from .convert import Conversion
    from .plan import find_roles
    from .stored import read_stored
    from .target import build_model, resolve_config

    _logging(quiet, verbose)
    try:
        ckpt = read_checkpoint(path)
        if (quantization := mlx_quantization(ckpt.config)) is not None and not as_source:
            rows = read_stored(ckpt, find_roles(build_model(resolve_config(ckpt.config)[0])), quantization)
            _print_stored(rows, json_out)
            if check and any(r.problem for r in rows):
                raise typer.Exit(1)
            return
        conversion = Conversion(
            path, runner=runner, **_choices(no_quantize, mode, bits, group_size, gate_bits, dtype, global_scale,
                                            recipe, override, rounding, target_bpw, calib))
        conversion.manifest()  # every layout and shape check, from headers
        plan = conversion.plan
    except MoequantError as e:
        _fail(str(e))
    if json_out:
        _print_json(plan.to_json())
        return
    out.print(plan_table(plan, expand))
    out.print(role_table(plan))
    out.print(f"{plan.params:,} parameters; " + summary_line(plan, "output"), highlight=False, soft_wrap=True)


def _print_stored(rows, json_out: bool) -> None:
    if json_out:
        _print_json([{"path": r.path, "shape": list(r.shape), "stored": str(r.stored),
                      "config": str(r.config) if r.config else None, "problem": r.problem or None} for r in rows])
        return
    table = Table(title="stored quantization (from tensor shapes) vs config.json")
    for name in ("module", "shape", "stored", "config.json says", "problem"):
        table.add_column(name, overflow="fold")
    for r in rows:
        table.add_row(r.path, "×".join(map(str, r.shape)), str(r.stored), str(r.config) if r.config else "-",
                      f"[red]{r.problem}[/red]" if r.problem else "")
    out.print(table)
    bad = sum(bool(r.problem) for r in rows)
    out.print(f"{len(rows)} modules; {bad} disagree with config.json", highlight=False)


@app.command()
def verify(
    dst: Annotated[Path, typer.Argument(help="A converted checkpoint.")],
    reference: Annotated[str, typer.Option("--reference", help="The source it was converted from (folder or hub id).")],
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Text to run (tokenized with DST's tokenizer) instead of a fixed random batch.")] = None,
    min_top1: Annotated[Optional[float], typer.Option("--min-top1", help="Exit 1 if top-1 agreement is below this.")] = None,
    max_kl: Annotated[Optional[float], typer.Option("--max-kl", help="Exit 1 if the mean KL (nats/token) is above this.")] = None,
    min_router: Annotated[Optional[float], typer.Option("--min-router", help="Exit 1 if any MoE layer's router top-k agreement is below this.")] = None,
    against: Annotated[Optional[str], typer.Option("--against", help="'transformers': also compare with SRC's own transformers forward pass (needs torch); the thresholds then apply to both references.")] = None,
    json_out: JsonOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False,
) -> None:
    """Run the same tokens through DST and SRC with mlx-lm; compare logits and expert choices."""
    from .verify import tokens_for_prompt
    from .verify import verify as run_verify

    _logging(quiet, verbose)
    try:
        if against not in (None, "transformers", "mlx-lm"):
            raise CheckpointError(f"--against {against}: expected transformers (or mlx-lm, the default)")
        tokens = tokens_for_prompt(dst, prompt) if prompt is not None else None
        report = run_verify(dst, reference, tokens, against_transformers=against == "transformers")
    except MoequantError as e:
        _fail(str(e))
    c, t = report.closeness, report.transformers
    failed = [f"{name} {value:.4g} {op} {limit}" for name, value, op, limit, bad in (
        ("top-1 agreement", c.top1, "<", min_top1, min_top1 is not None and c.top1 < min_top1),
        ("KL", c.kl, ">", max_kl, max_kl is not None and c.kl > max_kl),
        ("top-1 agreement with transformers", t.top1 if t else 1.0, "<", min_top1,
         t is not None and min_top1 is not None and t.top1 < min_top1),
        ("KL against transformers", t.kl if t else 0.0, ">", max_kl, t is not None and max_kl is not None and t.kl > max_kl),
        ("router agreement", report.min_router_agreement, "<", min_router, min_router is not None
         and report.min_router_agreement is not None and report.min_router_agreement < min_router),
    ) if bad]
    if json_out:
        _print_json({**report.to_dict(), "failed": failed})
    else:
        table = Table(title=f"{dst} vs {reference} ({report.tokens} tokens)")
        table.add_column("measure")
        table.add_column("value", justify="right")
        for name, value in (("top-1 agreement", f"{c.top1:.4f}"), ("KL (nats/token)", f"{c.kl:.5f}"),
                            ("logit cosine", f"{c.cosine:.5f}"), ("relative RMS error", f"{c.rel_rms:.4f}")):
            table.add_row(name, value)
        if t is not None:
            for name, value in (("top-1 agreement with transformers", f"{t.top1:.4f}"),
                                ("KL against transformers (nats/token)", f"{t.kl:.5f}"),
                                ("logit cosine with transformers", f"{t.cosine:.5f}")):
                table.add_row(name, value)
        for block, agreement in report.router_agreement.items():
            table.add_row(f"router top-{report.top_k.get(block, '?')} agreement {block}", f"{agreement:.4f}")
        out.print(table)
    if failed:
        _fail("; ".join(failed))


@app.command()
def archs(
    status: Annotated[Optional[str], typer.Option("--status", help="Only rows with this status: supported, blocked, 'not yet'.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List the MoE architectures of mlx-lm / mlx-vlm and whether moequant supports each."""
    from .archs import Status, arch_rows

    if status is not None and status not in {s.value for s in Status}:
        _fail(f"--status {status!r}: expected one of {', '.join(s.value for s in Status)}")
    rows = arch_rows(status)
    if json_out:
        _print_json([a.to_dict() for a in rows])
        return
    table = Table(title="MoE architectures")
    for name in ("model_type", "runner", "status", "release", "note"):
        table.add_column(name, overflow="fold")
    for a in rows:
        table.add_row(a.model_type, f"{a.runner} ({a.module})", a.status.value, a.release, a.note)
    out.print(table)
    counts = {s.value: sum(a.status == s for a in rows) for s in Status}
    out.print(", ".join(f"{n} {s}" for s, n in counts.items() if n), highlight=False)


@app.command("make-tiny")
def make_tiny(
    arch: Annotated[str, typer.Argument(help="Architecture: a supported model_type (see `moequant archs`).")],
    dst: Annotated[Path, typer.Argument(help="Folder to write (created).")],
    dtype: Annotated[str, typer.Option(help="bfloat16, float16 or float32.")] = "bfloat16",
    shards: Annotated[int, typer.Option(help="Number of safetensors shards.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed for the random weights.")] = 0,
) -> None:
    """Write a tiny random checkpoint in the real published layout of ARCH."""
    from .tiny import ALL_ARCHS, write_tiny_checkpoint

    if arch not in ALL_ARCHS:
        _fail(f"ARCH {arch!r}: expected one of {', '.join(ALL_ARCHS)}")
    if dtype not in DTYPES:
        _fail(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    write_tiny_checkpoint(dst, arch, dtype=dtype, shards=shards, seed=seed)
    out.print(f"{dst}: tiny {arch} ({ALL_ARCHS[arch].about})", highlight=False, soft_wrap=True)


@app.command()
def demo(arch: Annotated[str, typer.Option(help="Tiny architecture to use.")] = "qwen3_moe") -> None:
    """Build a tiny MoE, convert it at 4 bits, load it with mlx-lm and compare with float."""
    from .convert import Conversion
    from .evaluate import compare_logits, fixed_tokens, load_float32
    from .tiny import ALL_ARCHS, write_tiny_checkpoint

    if arch not in ALL_ARCHS:
        _fail(f"--arch {arch!r}: expected one of {', '.join(ALL_ARCHS)}")
    _logging(True, False)
    with tempfile.TemporaryDirectory(prefix="moequant-demo-") as tmp:
        src = write_tiny_checkpoint(Path(tmp) / "src", arch)
        err.print(f"1. wrote a tiny random {arch} checkpoint ({ALL_ARCHS[arch].about})", highlight=False)
        quantized = Conversion(src, Quant.make("affine", 4, 64))
        list(quantized.run(Path(tmp) / "q4"))
        reference = Conversion(src)
        list(reference.run(Path(tmp) / "float"))
        err.print("2. converted it at 4 bits (and once unquantized, as the float reference):", highlight=False)
        out.print(role_table(quantized.plan))
        out.print(summary_line(quantized.plan, "4-bit output"), highlight=False, soft_wrap=True)
        tokens = fixed_tokens(quantized.config["vocab_size"])
        closeness = compare_logits(load_float32(Path(tmp) / "float")(tokens), load_float32(Path(tmp) / "q4")(tokens))
        err.print("3. loaded both with mlx-lm and ran the same tokens through them:", highlight=False)
        out.print(f"4-bit vs float logits: {closeness}", highlight=False, soft_wrap=True)
