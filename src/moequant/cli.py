"""The `moequant` command. The only module that prints: results on stdout, everything else on stderr."""

from __future__ import annotations

import copy
import functools
import gc
import json
import logging
import time
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from contextlib import closing
from inspect import Parameter, signature
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from typer.core import TyperArgument, TyperCommand, TyperGroup

from . import __version__
from .card import PLOT_FILE, short_size
from .errors import CheckpointError, MoequantError, os_reason
from .names import layer_of
from .formats import DTYPES, MODES, Mode, Quant
from .plan import Override, Plan
from .writer import MARK_FILE


class _App(typer.Typer):
    """The Typer app; run as a program, the process ends quietly however it is interrupted."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except KeyboardInterrupt:  # before a command took over the signals (while importing)
            err.print("error: interrupted", highlight=False)
            raise SystemExit(130) from None
        finally:
            # The command is over (its output in place, or nothing written): a signal during
            # interpreter shutdown must not turn into "Exception ignored in atexit callback".
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
            # What is left goes with the process: the interpreter's collections at exit need not walk
            # it (40-80 ms of a conversion's end on the 2-core VM)
            gc.freeze()


def _tidy(params: list) -> list:
    """Help that reads like the README: flags without a `<bool>` type, arguments named in capitals
    (SRC, DST) without `<str>`."""
    for p in params:
        if getattr(p, "is_flag", False):
            p.metavar = ""
        elif isinstance(p, TyperArgument):
            p.metavar = p.metavar or p.name.upper()
            p.type = copy.copy(p.type)  # its own: the type objects are shared
            p.type.get_metavar = lambda *args, **kwargs: ""  # no type shown: the name says it
    return params


class _Group(TyperGroup):
    def get_params(self, ctx):
        return _tidy(super().get_params(ctx))


class _Command(TyperCommand):
    """A command whose usage line is `moequant convert [OPTIONS] SRC DST` (see _tidy)."""

    def get_params(self, ctx):
        return _tidy(super().get_params(ctx))

    def collect_usage_pieces(self, ctx) -> list[str]:
        args = [p for p in self.get_params(ctx) if isinstance(p, TyperArgument)]
        return [self.options_metavar, *(p.metavar if p.required else f"[{p.metavar}]" for p in args)]


app = _App(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
           context_settings={"help_option_names": ["-h", "--help"]},
           help="Convert Mixture-of-Experts checkpoints into quantized MLX checkpoints.")


def _examples(*lines: str) -> str:
    """A command's epilog: examples, one per line."""
    return "[bold]Examples[/bold]\n\n" + "\n".join(f"  $ {line}" for line in lines)


def _version(value: bool) -> None:
    if value:
        print(f"moequant {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print moequant's version and exit.")] = False) -> None:
    """Convert Mixture-of-Experts checkpoints into quantized MLX checkpoints."""
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

# the defaults in --bits and --group-size's help, from the one mode table
_BITS_DEFAULTS = "; ".join([str(MODES[Mode.AFFINE].default_bits)] + [
    f"{spec.default_bits} for {mode.value}" for mode, spec in MODES.items() if spec.default_bits != MODES[Mode.AFFINE].default_bits])
_GROUP_DEFAULTS = ", ".join(f"{mode.value} {spec.default_group_size}" for mode, spec in MODES.items())
BitsOpt = Annotated[Optional[int], typer.Option("--bits", metavar="N", rich_help_panel="Plan", help=f"Bits per weight (default: {_BITS_DEFAULTS}).")]
GroupOpt = Annotated[Optional[int], typer.Option("--group-size", metavar="G", rich_help_panel="Plan", help=f"Group size (default per mode: {_GROUP_DEFAULTS}).")]
ModeOpt = Annotated[Optional[Mode], typer.Option("--mode", metavar="|".join(m.value for m in Mode), rich_help_panel="Plan", help=f"Quantization mode (default: {Mode.AFFINE.value}).", show_default=False)]
GateOpt = Annotated[Optional[str], typer.Option("--gate-bits", metavar="float|8", rich_help_panel="Plan", help="Router gates: 'float' (default) or 8 (affine, group 64).")]
NoQuantOpt = Annotated[bool, typer.Option("--no-quantize", rich_help_panel="Plan", help="Layout and dtype conversion only.")]
DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", metavar="bfloat16|float16|float32", rich_help_panel="Plan", help="dtype of unquantized tensors: bfloat16, float16, float32 (default: the checkpoint's).")]
GlobalScaleOpt = Annotated[Optional[bool], typer.Option("--global-scale/--no-global-scale", rich_help_panel="Plan", help="nvfp4: a per-expert tensor scale on expert stacks (default: on; Apple GPU; mlx's CPU gather_qmm refuses it).", show_default=False)]
RecipeOpt = Annotated[Optional[str], typer.Option("--recipe", metavar="NAME", rich_help_panel="Plan", help="uniform (default), moe, mixed_2_6, mixed_3_4, mixed_3_6 or mixed_4_6 (see README).")]
RoundingOpt = Annotated[Optional[str], typer.Option("--rounding", metavar="plain|mse|gptq", rich_help_panel="Plan", help="plain (default: mx.quantize's min/max); mse: per group, the clipped range with the least error (slower); gptq: affine modules rounded with GPTQ on --calib data (slowest).")]
TargetOpt = Annotated[Optional[float], typer.Option("--target-bpw", metavar="BPW", rich_help_panel="Plan", help="Size budget in bits per weight: bits and group size chosen per module (reads the weights).")]
CalibOpt = Annotated[Optional[Path], typer.Option("--calib", metavar="FILE", rich_help_panel="Plan", help="Calibration data for --target-bpw (without it a data-free proxy is used) and --rounding gptq: text or .jsonl (a text, or chat messages, per line) tokenized by SRC's own tokenizer, or .npy token ids.")]
CalibSeqOpt = Annotated[Optional[int], typer.Option("--calib-sequences", metavar="N", rich_help_panel="Plan", help="Sequences read from --calib, spread over the file (default 8).")]
CalibLenOpt = Annotated[Optional[int], typer.Option("--calib-length", metavar="TOKENS", rich_help_panel="Plan", help="Tokens per calibration sequence (default 512).")]
OverrideOpt = Annotated[Optional[list[str]], typer.Option("--override", metavar="PATTERN=SPEC", rich_help_panel="Plan", help="Repeatable: '*.shared_expert.*=bits=8,group=64' or '*.mlp.gate=keep'.")]
RunnerOpt = Annotated[Optional[str], typer.Option("--for", metavar="mlx-lm|mlx-vlm", rich_help_panel="Plan", help="mlx-lm (text only) or mlx-vlm (vision tower kept); default: mlx-vlm for a vision-language SRC when mlx-vlm is installed, and for a text model only mlx-vlm runs.")]
JsonOpt = Annotated[bool, typer.Option("--json", rich_help_panel="Output", help="Print JSON instead of a table.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", rich_help_panel="Run", help="No progress or info on stderr.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", rich_help_panel="Run", help="Debug logging on stderr (and how config.json was read).")]

# The plan options of convert and inspect, declared once (name: type and help, default): a command
# decorated with _plan_options takes them all and receives them as one dict, `choices`.
PLAN_OPTIONS: dict[str, tuple[object, object]] = {
    "bits": (BitsOpt, None), "group_size": (GroupOpt, None), "mode": (ModeOpt, None), "gate_bits": (GateOpt, None),
    "no_quantize": (NoQuantOpt, False), "dtype": (DtypeOpt, None), "global_scale": (GlobalScaleOpt, None),
    "recipe": (RecipeOpt, None), "override": (OverrideOpt, None), "rounding": (RoundingOpt, None),
    "target_bpw": (TargetOpt, None), "calib": (CalibOpt, None), "calib_sequences": (CalibSeqOpt, None),
    "calib_length": (CalibLenOpt, None),
}

MinTop1Opt = Annotated[Optional[float], typer.Option("--min-top1", metavar="X", rich_help_panel="Quality", help="Exit 1 if top-1 agreement is below this.")]
MaxKlOpt = Annotated[Optional[float], typer.Option("--max-kl", metavar="X", rich_help_panel="Quality", help="Exit 1 if the mean KL (nats/token) is above this.")]
MinRouterOpt = Annotated[Optional[float], typer.Option("--min-router", metavar="X", rich_help_panel="Quality", help="Exit 1 if any MoE layer's router top-k agreement is below this.")]

PrivateOpt = Annotated[bool, typer.Option("--private", rich_help_panel="Output", help="Upload: create the hub repo private.")]

MAX_TINY_SHARDS = 8  # make-tiny: every shard of a tiny checkpoint holds tensors


def _fail(message: str, code: int = 1, as_json: bool = False) -> None:
    """One line on stderr (with --json: {"error", "path"} on stdout, for scripts), then exit `code`."""
    if as_json:
        where, sep, _ = message.partition(": ")
        _print_json({"error": message, "path": where if sep else None, "exit_code": code})
    else:
        err.print(f"[red]error:[/red] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: unwinds like Ctrl-C (threads joined, temporary files removed), then
    exits 128 + the signal number (130, 143)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.code = 128 + signum


def _on_signal(signum, frame) -> None:
    if getattr(_on_signal, "pending", None) is not None:  # a second signal while cleaning up: now
        err.print("error: interrupted again; stopping now (what is left is removed by the next run)",
                  highlight=False)
        os._exit(_on_signal.pending)
    _on_signal.pending = 128 + signum
    raise Interrupted(signum)


def _command(interrupted: str = "interrupted"):
    """Every command: MoequantError and OSError become one line (JSON with --json), SIGINT/SIGTERM
    exit 130/143 with one line (`interrupted` says what became of the output). Any other
    exception is a bug and keeps its traceback."""

    def wrap(fn):
        @functools.wraps(fn)
        def command(*args, **kwargs):
            as_json = bool(kwargs.get("json_out"))
            main = threading.current_thread() is threading.main_thread()
            saved = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
            _on_signal.pending = None
            try:
                return fn(*args, **kwargs)
            except MoequantError as e:
                _fail(str(e), as_json=as_json)
            except OSError as e:
                where = e.filename if e.filename is not None else "a file"
                _fail(f"{where}: {os_reason(e)}; expected a path moequant can read (or write, for DST)",
                      as_json=as_json)
            except KeyboardInterrupt as e:
                _fail(interrupted, getattr(e, "code", 130), as_json)
            finally:
                for sig, handler in saved.items():
                    signal.signal(sig, handler)
                _on_signal.pending = None

        return command

    return wrap


def _logging(quiet: bool, verbose: bool, notices_later: bool = False) -> None:
    """Log lines on stderr; with `notices_later`, the notes that change the result (logged with
    extra={"notice": True}) are held back: the command prints them once, after its summary line."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr, force=True)
    if notices_later:
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda record: not getattr(record, "notice", False))


def _print_notices(notices: list[str]) -> None:
    """The notes that change the result, once each, on stderr (after the summary line)."""
    for note in dict.fromkeys(notices):
        err.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)


def _given(**options) -> list[str]:
    """The options the user gave, as typed (`--bits 3`, `--no-global-scale`), from the command's
    values: None, False and [] mean not given."""
    shown = []
    for name, value in options.items():
        option = "--" + name.replace("_", "-")
        if value is None or value is False and name != "global_scale" or value == []:
            continue
        if isinstance(value, bool):
            shown.append(option if value else option.replace("--", "--no-", 1))
        elif isinstance(value, list):
            shown += [f"{option} {v}" for v in value]
        else:
            shown.append(f"{option} {value.value if isinstance(value, Mode) else value}")
    return shown


def _command_line(command: str, *args: str, **options) -> str:
    """The command as a user would type it again (shell-quoted): `moequant convert SRC DST --bits 3`,
    for the model card; only the options given (see _given)."""
    words = ["moequant", command, *map(str, args)]
    for option in _given(**options):
        words += option.split(" ", 1)
    return shlex.join(words)


def _plan_options(fn):
    """Typer sees PLAN_OPTIONS in place of `fn`'s parameter `choices`; `fn` gets them there as one dict."""
    own = signature(fn, eval_str=True)
    params = list(own.parameters.values())
    at = next(i for i, p in enumerate(params) if p.name == "choices")
    shared = [Parameter(name, Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
              for name, (annotation, default) in PLAN_OPTIONS.items()]
    rest = [p.replace(kind=Parameter.KEYWORD_ONLY) for p in params[at + 1:]]

    @functools.wraps(fn)
    def command(*args, **kwargs):
        return fn(*args, choices={name: kwargs.pop(name) for name in PLAN_OPTIONS}, **kwargs)

    command.__signature__ = own.replace(parameters=[*params[:at], *shared, *rest])
    command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}
    return command


def _choices(*, no_quantize, mode, bits, group_size, gate_bits, dtype, global_scale, recipe, override, rounding,
             target_bpw, calib, calib_sequences, calib_length) -> dict:
    """Conversion(...) keyword arguments from the plan options as given (PLAN_OPTIONS). Options
    given together that cannot be are refused here, never silently ignored; every value is checked
    by plan.Options.validate."""
    if no_quantize and (given := _given(bits=bits, group_size=group_size, mode=mode, gate_bits=gate_bits,
                                        global_scale=global_scale, recipe=recipe, target_bpw=target_bpw)):
        raise MoequantError(f"--no-quantize {given[0]}: {given[0].split()[0]} only shapes quantization, which "
                            "--no-quantize turns off; expected one of them, not both")
    for name, value in (("--calib-sequences", calib_sequences), ("--calib-length", calib_length)):
        if value is not None and calib is None:
            raise MoequantError(f"{name} {value}: only used with --calib; expected --calib FILE too")
    return dict(quant=None if no_quantize else Quant.make(mode or Mode.AFFINE, bits, group_size),
                gate_bits=_gate_bits(gate_bits or "float"), dtype=dtype,
                global_scale=True if global_scale is None else global_scale, recipe=recipe or "uniform",
                rounding=rounding or "plain", target_bpw=target_bpw, calib=str(calib) if calib else None,
                calib_sequences=8 if calib_sequences is None else calib_sequences,
                calib_length=512 if calib_length is None else calib_length,
                overrides=tuple(Override.parse(o) for o in override or ()))


def _failures(report, min_top1: float | None, max_kl: float | None, min_router: float | None) -> list[str]:
    """The thresholds `verify`'s report misses, one phrase each ('top-1 agreement 0.6875 < 0.9')."""
    c, t = report.closeness, report.transformers
    return [f"{name} {value:.4g} {op} {limit}" for name, value, op, limit, bad in (
        ("top-1 agreement", c.top1, "<", min_top1, min_top1 is not None and c.top1 < min_top1),
        ("KL", c.kl, ">", max_kl, max_kl is not None and c.kl > max_kl),
        ("top-1 agreement with transformers", t.top1 if t else 1.0, "<", min_top1,
         t is not None and min_top1 is not None and t.top1 < min_top1),
        ("KL against transformers", t.kl if t else 0.0, ">", max_kl, t is not None and max_kl is not None and t.kl > max_kl),
        ("router agreement", report.min_router_agreement, "<", min_router, min_router is not None
         and report.min_router_agreement is not None and report.min_router_agreement < min_router),
    ) if bad]


def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _gate_bits(value: str) -> int | None:
    if value == "float":
        return None
    if value == "8":
        return 8
    raise MoequantError(f"--gate-bits {value}: expected 'float' or 8 (router gates never go below 8 bits)")


def _parse_size(value: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "K": 10**3, "M": 10**6, "G": 10**9, "B": 1}
    text = value.strip().upper()
    for unit, factor in sorted(units.items(), key=lambda u: -len(u[0])):
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * factor)
            except (ValueError, OverflowError):
                break
    try:
        return int(text)
    except ValueError:
        raise MoequantError(f"--shard-size {value}: expected a size like 5GB, 500MB or a byte count") from None


def _shard_size(value: str) -> int:
    size = _parse_size(value)
    if size <= 0:
        raise MoequantError(f"--shard-size {value}: {size} bytes; expected a size above 0, like 5GB or 500MB")
    return size


def summary_line(plan: Plan, where: str) -> str:
    counts = ", ".join(f"{n} {k}" for k, n in sorted(plan.counts().items()))
    return (f"{where}: {plan.bits_per_weight:.2f} bits/weight, {short_size(plan.bytes_after)} "
            f"(from {short_size(plan.bytes_before)}); modules: {counts}")


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
                      short_size(sum(r.bytes_before for _, r in members)), short_size(sum(r.bytes_after for _, r in members)))
    return table


def role_table(plan: Plan) -> Table:
    table = Table(title=f"{plan.model_type}: where the size goes")
    for name in ("role", "modules", "parameters", "decisions", "bytes before", "bytes after", "bits/weight"):
        table.add_column(name, justify="left" if name in ("role", "decisions") else "right")
    for role, rows in plan.by_role().items():
        params, after = sum(r.params for r in rows), sum(r.bytes_after for r in rows)
        decisions = sorted({f"{r.action} ({r.rule})" for r in rows})
        table.add_row(role.value, str(len(rows)), f"{params:,}", ", ".join(decisions),
                      short_size(sum(r.bytes_before for r in rows)), short_size(after), f"{8 * after / params:.2f}")
    return table


@app.command(cls=_Command, epilog=_examples(
    "moequant convert Qwen/Qwen3-30B-A3B qwen3-30b-4bit",
    "moequant convert tiny-mixtral mixtral-mxfp4 --mode mxfp4 --gate-bits 8 --verify --min-top1 0.6",
    "moequant convert SRC DST2 --plan DST/moequant_plan.json      (the same weights again)"))
@_command(interrupted="interrupted; DST was not written")
@_plan_options
def convert(
    src: Annotated[str, typer.Argument(help="Checkpoint folder or hub id (resolved through the local cache).")],
    dst: Annotated[Path, typer.Argument(help="Output folder (must not exist unless --force).")],
    choices: dict,  # PLAN_OPTIONS
    runner: RunnerOpt = None,
    plan_file: Annotated[Optional[Path], typer.Option("--plan", metavar="FILE", rich_help_panel="Plan", help="Convert exactly this plan (the JSON of `inspect --json`); no other plan option may be given.")] = None,
    force: Annotated[bool, typer.Option("--force", rich_help_panel="Output", help=f"Replace DST if it is a previous moequant output (it holds {MARK_FILE} and only the files listed there) or an empty folder; never a file or any other folder.")] = False,
    shard_size: Annotated[str, typer.Option("--shard-size", metavar="SIZE", rich_help_panel="Output", help="Largest output shard.")] = "5GB",
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, metavar="N", rich_help_panel="Run", help="Decoder layers converted at once, one process each (default: one per core, fewer if memory is short).")] = None,
    pool: Annotated[str, typer.Option("--pool", metavar="processes|threads", rich_help_panel="Run", help="Workers as `processes` (default) or `threads` (one process; the GIL serializes them).")] = "processes",
    upload_repo: Annotated[Optional[str], typer.Option("--upload-repo", metavar="ORG/NAME", rich_help_panel="Output", help="Then upload DST to this hub repo (after --verify passes, if given); checked before any work.")] = None,
    private: PrivateOpt = False,
    verify_after: Annotated[bool, typer.Option("--verify", rich_help_panel="Quality", help="Then run `verify` against SRC: its figures go into the model card and --json.")] = False,
    min_top1: MinTop1Opt = None, max_kl: MaxKlOpt = None, min_router: MinRouterOpt = None,
    plot: Annotated[bool, typer.Option("--plot", rich_help_panel="Output", help=f"Also draw the plan into DST ({PLOT_FILE}: bits per weight by layer and role, bytes by role), shown in the model card; needs matplotlib.")] = False,
    json_out: JsonOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False,
) -> None:
    """Convert SRC into a quantized MLX checkpoint in DST."""
    ahead = None
    if pool == "processes" and choices.get("calib") is None:  # not idle through a calibration pass
        from . import procpool

        # the workers' forkserver imports, then the workers are forked, while this process imports,
        # reads SRC and plans (Conversion.run takes them over)
        ahead = procpool.Workers(procpool.ahead_count(workers))
    try:
        from .convert import Conversion
        from .writer import check_destination

        _logging(quiet, verbose, notices_later=True)
        if plot:
            from .plot import check_target

            check_target(None)  # matplotlib missing: refused before any work
        if not verify_after and (given := _given(min_top1=min_top1, max_kl=max_kl, min_router=min_router)):
            raise MoequantError(f"{given[0]}: a threshold on `verify`'s figures; expected --verify with it")
        if private and upload_repo is None:
            raise MoequantError("--private: only used with --upload-repo; expected --upload-repo ORG/NAME with it")
        if upload_repo is not None:
            from .publish import check_can_upload

            check_can_upload(upload_repo)  # offline, no token, a bad repo id: refused before any work
        local = Path(src).expanduser()
        check_destination(dst, force, local if local.is_dir() else None)
        size = _shard_size(shard_size)
        started = time.monotonic()
        if plan_file is not None:
            if given := _given(**choices):
                raise MoequantError(f"--plan {plan_file} {given[0]}: the plan file decides every module and its "
                                    f"options; expected no plan option beside --plan (edit the plan instead)")
            conversion = Conversion(src, plan=_read_plan(plan_file), plan_where=str(plan_file), runner=runner)
        else:
            conversion = Conversion(src, runner=runner, **_choices(**choices))
        if pool not in ("processes", "threads"):
            raise MoequantError(f"--pool {pool}: expected processes or threads")
        command = _command_line("convert", src, dst, **choices, plan=plan_file, plot=plot, **{"for": runner},
                                shard_size=shard_size if shard_size != "5GB" else None)
        total, planned = conversion.ckpt.nbytes, time.monotonic()
        with closing(conversion.run(dst, force=force, shard_size=size, workers=workers, pool=ahead or pool,
                                    command=command, plot=plot)) as steps, \
                Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[done]}"),
                         TimeRemainingColumn(), console=err, disable=quiet, transient=True) as progress:
            task = progress.add_task("converting", total=total, done="")
            for step in steps:
                progress.update(task, advance=step.bytes_read, description=f"{step.group} ({step.index}/{step.total})",
                                done=f"{short_size(progress.tasks[0].completed + step.bytes_read)} of {short_size(total)}")
    finally:
        if ahead is not None:
            ahead.close()
    plan, quality = conversion.plan, None
    # phases: plan (calibration and allocation for --target-bpw included), convert (GPTQ's calibration included)
    seconds = {"plan": planned - started, "convert": time.monotonic() - planned, **conversion.timings}
    if verify_after:
        from .verify import verify as run_verify

        if not quiet:
            err.print(f"verifying {dst} against {src}", highlight=False)
        report = run_verify(dst, src)
        quality = {**report.to_dict(), "reference": src, "failed": _failures(report, min_top1, max_kl, min_router)}
        conversion.update_card(dst, command, quality)
    if json_out:
        _print_json({"dst": str(dst), **plan.to_json()["totals"], "counts": plan.counts(),
                     "notices": conversion.notices, "seconds": seconds, **({"verify": quality} if quality else {})})
    else:
        out.print(summary_line(plan, str(dst)), highlight=False, soft_wrap=True)
        if quality:
            c = report.closeness
            out.print(f"{dst} vs {src}: top-1 agreement {c.top1:.4f}, KL {c.kl:.5f} nats/token, logit cosine "
                      f"{c.cosine:.5f}" + (f", router agreement ≥ {report.min_router_agreement:.4f}"
                                           if report.min_router_agreement is not None else ""),
                      highlight=False, soft_wrap=True)
    _print_notices(conversion.notices)
    if quality and quality["failed"]:
        if json_out:
            raise typer.Exit(1)  # the JSON above lists them under verify.failed
        _fail(f"{dst}: {'; '.join(quality['failed'])}; the output is written and valid, just below the bar "
              "(its model card records the figures)" + ("; not uploaded" if upload_repo else ""))
    if upload_repo is not None:
        from .publish import upload as run_upload

        url = run_upload(dst, upload_repo, private)
        err.print(f"uploaded {dst} to {url}", highlight=False, soft_wrap=True)


def _read_plan(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise MoequantError(f"--plan {file}: not found; expected the JSON of `moequant inspect SRC --json`") from None
    except IsADirectoryError:
        raise MoequantError(f"--plan {file}: a folder; expected the JSON of `moequant inspect SRC --json`") from None
    except OSError as e:
        raise MoequantError(f"--plan {file}: {os_reason(e)}; expected a readable JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MoequantError(f"--plan {file}: not JSON ({e}); expected the output of `moequant inspect SRC --json`") from None


@app.command(cls=_Command, epilog=_examples(
    "moequant inspect Qwen/Qwen3-30B-A3B --recipe mixed_3_6",
    "moequant inspect tiny-mixtral --json > plan.json       (edit it, then convert --plan plan.json)",
    "moequant inspect mixtral-4bit --check                  (an MLX-quantized checkpoint: config vs tensors)"))
@_command()
@_plan_options
def inspect(
    path: Annotated[str, typer.Argument(help="Checkpoint folder or hub id.")],
    choices: dict,  # PLAN_OPTIONS
    runner: RunnerOpt = None, json_out: JsonOpt = False,
    expand: Annotated[bool, typer.Option("--all", rich_help_panel="Output", help="One row per module (no collapsing across layers).")] = False,
    check: Annotated[bool, typer.Option("--check", rich_help_panel="Quality", help="MLX-quantized PATH: exit 1 if config and tensors disagree.")] = False,
    as_source: Annotated[bool, typer.Option("--as-source", rich_help_panel="Output", help="MLX-quantized PATH: print its conversion plan instead of what it stores.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", metavar="FILE", rich_help_panel="Output", help="Also draw the plan as a PNG: bits per weight by layer and role, bytes by role (needs matplotlib).")] = None,
    quiet: QuietOpt = False, verbose: VerboseOpt = False,
) -> None:
    """Print the plan for PATH (headers only, nothing converted); for an MLX-quantized PATH, what it stores."""
    from .convert import inspect_checkpoint

    _logging(quiet, verbose, notices_later=True)
    if plot is not None:
        from .plot import check_target

        check_target(plot)
    inspection = inspect_checkpoint(path, as_source=as_source, runner=runner, **_choices(**choices))
    if inspection.stored is not None:
        if plot is not None:
            raise MoequantError(f"--plot {plot}: {path} is MLX-quantized and the picture is of a conversion plan; "
                                "expected --as-source with it")
        _print_stored(inspection.stored, json_out)
        if check and any(r.problem for r in inspection.stored):
            raise typer.Exit(1)
        return
    plan = inspection.plan
    if json_out:
        _print_json(plan.to_json())
    else:
        out.print(plan_table(plan, expand))
        out.print(role_table(plan))
        out.print(f"{plan.params:,} parameters; " + summary_line(plan, "output"), highlight=False, soft_wrap=True)
    if plot is not None:
        from .plot import plan_png

        _write_picture(plot, plan_png(plan), quiet)
    _print_notices(inspection.notices)


def _write_picture(file: Path, png: bytes, quiet: bool) -> None:
    file.write_bytes(png)
    if not quiet:
        err.print(f"wrote {file}", highlight=False, soft_wrap=True)


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


def _print_layers(report, explicit: float | None, flagged: list[int]) -> None:
    """`verify`'s layer-by-layer comparison with transformers: why, a row per decoder layer, the flagged ones."""
    from .verify import LAYER_FLOOR, LAYER_SPREAD, layer_tolerance

    out.print(f"against transformers layer by layer: {report.layerwise_reason}", highlight=False)
    table = Table(title="DST's decoder layers on transformers' input of each")
    for name in ("layer", "max abs error", "relative RMS error", "router top-k agreement", "note"):
        table.add_column(name, justify="right")
    for e in report.layers:
        table.add_row(str(e.layer), f"{e.max_abs:.3g}", f"{e.rel_rms:.3g}",
                      "" if e.router_agreement is None else f"{e.router_agreement:.4f}",
                      "beyond tolerance" if e.layer in flagged else "")
    out.print(table)
    tolerance = layer_tolerance(report.layers, explicit)
    rule = "--max-layer-error" if explicit is not None else f"{LAYER_SPREAD:g}x the median layer, at least {LAYER_FLOOR:g}"
    out.print(f"decoder layers beyond {tolerance:.3g} relative RMS error ({rule}): "
              f"{', '.join(map(str, flagged)) if flagged else 'none'}", highlight=False)


@app.command(cls=_Command, epilog=_examples(
    "moequant verify mixtral-4bit --reference tiny-mixtral --min-top1 0.6",
    "moequant verify mixtral-4bit --reference tiny-mixtral --prompt 'def fib(n):' --json",
    "moequant verify mixtral-4bit --reference tiny-mixtral --against transformers --layerwise"))
@_command()
def verify(
    dst: Annotated[Path, typer.Argument(help="A converted checkpoint.")],
    reference: Annotated[str, typer.Option("--reference", metavar="SRC", help="The source it was converted from (folder or hub id).")],
    prompt: Annotated[Optional[str], typer.Option("--prompt", metavar="TEXT", help="Text to run (tokenized with DST's tokenizer) instead of a fixed random batch.")] = None,
    min_top1: MinTop1Opt = None, max_kl: MaxKlOpt = None, min_router: MinRouterOpt = None,
    against: Annotated[Optional[str], typer.Option("--against", metavar="transformers", help="'transformers': also compare with SRC's own transformers forward pass (needs torch); the thresholds then apply to both references.")] = None,
    layerwise: Annotated[bool, typer.Option("--layerwise", help="With --against transformers: compare decoder layer by decoder layer, one layer in memory at a time (automatic when SRC would not fit whole).")] = False,
    max_layer_error: Annotated[Optional[float], typer.Option("--max-layer-error", metavar="X", rich_help_panel="Quality", help="Layer by layer: exit 1 if any decoder layer's relative RMS error is above this (default: flag, without failing, layers 10x above the median).")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", metavar="FILE", rich_help_panel="Output", help="Also draw a PNG: router top-k agreement by layer, KL by token position (needs matplotlib).")] = None,
    json_out: JsonOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False,
) -> None:
    """Run the same tokens through DST and SRC with mlx-lm; compare logits and expert choices."""
    from .verify import layer_tolerance, tokens_for_prompt
    from .verify import verify as run_verify

    _logging(quiet, verbose)
    if plot is not None:
        from .plot import check_target

        check_target(plot)
    if against not in (None, "transformers", "mlx-lm"):
        raise CheckpointError(f"--against {against}: expected transformers (or mlx-lm, the default)")
    if against != "transformers" and (given := _given(layerwise=layerwise, max_layer_error=max_layer_error)):
        raise MoequantError(f"{given[0]}: compares with SRC's transformers layers; expected --against transformers")
    tokens = tokens_for_prompt(dst, prompt) if prompt is not None else None
    report = run_verify(dst, reference, tokens, against_transformers=against == "transformers", layerwise=layerwise)
    c, t = report.closeness, report.transformers
    failed = _failures(report, min_top1, max_kl, min_router)
    flagged = report.flagged_layers(max_layer_error)
    if max_layer_error is not None and flagged:
        failed.append(f"decoder layers {', '.join(map(str, flagged))} relative error > {max_layer_error}")
    if json_out:
        layers = {"flagged_layers": flagged, "layer_tolerance": layer_tolerance(report.layers, max_layer_error)}
        _print_json({**report.to_dict(), **(layers if report.layers else {}), "failed": failed})
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
        if report.layers:
            _print_layers(report, max_layer_error, flagged)
    if plot is not None:
        from .plot import verify_png

        _write_picture(plot, verify_png(report, f"{dst} vs {reference} ({report.tokens} tokens)"), quiet)
    if failed and json_out:
        raise typer.Exit(1)  # the JSON above lists them under "failed"
    if failed:
        _fail("; ".join(failed))


@app.command(cls=_Command, epilog=_examples("moequant upload qwen3-30b-4bit my-org/Qwen3-30B-A3B-4bit",
                                            "moequant upload mixtral-mxfp4 my-org/tiny-mixtral-mxfp4 --private"))
@_command()
def upload(
    dst: Annotated[Path, typer.Argument(help="A moequant output (its model card, README.md, is checked first).")],
    repo: Annotated[str, typer.Argument(metavar="ORG/NAME", help="Hub model repo to upload to (created if missing).")],
    private: PrivateOpt = False,
) -> None:
    """Upload a moequant output to the Hugging Face hub (huggingface_hub's upload_folder)."""
    from .publish import upload as run_upload

    url = run_upload(dst, repo, private)
    out.print(f"uploaded {dst} to {url}", highlight=False, soft_wrap=True)


@app.command(cls=_Command, epilog=_examples("moequant archs --status supported", "moequant archs --json"))
@_command()
def archs(
    status: Annotated[Optional[str], typer.Option("--status", metavar="STATUS", help="Only rows with this status: supported, blocked, 'not yet'.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List the MoE architectures of mlx-lm / mlx-vlm and whether moequant supports each."""
    from .registry import Status, arch_rows

    if status is not None and status not in {s.value for s in Status}:
        _fail(f"--status {status!r}: expected one of {', '.join(s.value for s in Status)}", as_json=json_out)
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


@app.command("make-tiny", cls=_Command, epilog=_examples("moequant make-tiny mixtral tiny-mixtral",
                                                           "moequant make-tiny qwen3_moe tiny-qwen --shards 2"))
@_command(interrupted="interrupted; DST was not written")
def make_tiny(
    arch: Annotated[str, typer.Argument(help="Architecture: a supported model_type (see `moequant archs`).")],
    dst: Annotated[Path, typer.Argument(help="Folder to write (created; an existing one must be empty).")],
    dtype: Annotated[str, typer.Option(metavar="bfloat16|float16|float32", help="bfloat16, float16 or float32.")] = "bfloat16",
    shards: Annotated[int, typer.Option(metavar="N", help="Number of safetensors shards.")] = 1,
    seed: Annotated[int, typer.Option(metavar="S", help="Seed for the random weights.")] = 0,
) -> None:
    """Write a tiny random checkpoint in the real published layout of ARCH."""
    from .tiny import ALL_ARCHS, write_tiny_checkpoint

    if arch not in ALL_ARCHS:
        _fail(f"ARCH {arch!r}: expected one of {', '.join(ALL_ARCHS)}")
    if dtype not in DTYPES:
        _fail(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    if not 1 <= shards <= MAX_TINY_SHARDS:
        _fail(f"--shards {shards}: expected 1 to {MAX_TINY_SHARDS} (a tiny checkpoint has few tensors)")
    if dst.is_symlink() or dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        what = "a file" if dst.exists() and not dst.is_dir() else "a link" if dst.is_symlink() else \
            "a folder that is not empty"
        _fail(f"{dst}: already exists ({what}); expected a new or empty folder (make-tiny never overwrites)")
    if dst.parent.exists() and not dst.parent.is_dir():
        _fail(f"{dst.parent}: not a folder; expected DST's parent to be one")
    # written beside DST and renamed into place: an interrupted or failed run leaves no half checkpoint
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.moequant-tiny-", dir=dst.parent))
    try:
        write_tiny_checkpoint(tmp / "out", arch, dtype=dtype, shards=shards, seed=seed)
        if dst.is_dir():
            dst.rmdir()  # empty, checked above
        (tmp / "out").rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out.print(f"{dst}: tiny {arch} ({ALL_ARCHS[arch].about})", highlight=False, soft_wrap=True)


@app.command(cls=_Command, epilog=_examples("moequant demo", "moequant demo --arch mixtral --out my-demo"))
@_command()
def demo(
    arch: Annotated[str, typer.Option("--arch", metavar="MODEL_TYPE", help="Tiny architecture to use (see `moequant archs`).")] = "qwen3_moe",
    out_dir: Annotated[Optional[Path], typer.Option("--out", metavar="DIR", help="Folder for the tiny checkpoint and its 4-bit output, new or empty (default: a new folder in the system's temporary folder).")] = None,
) -> None:
    """Build a tiny MoE, convert it at 4 bits, load it with mlx-lm and compare with float."""
    from .convert import Conversion
    from .evaluate import compare_logits, fixed_tokens, load_float32
    from .tiny import ALL_ARCHS, write_tiny_checkpoint

    if arch not in ALL_ARCHS:
        _fail(f"--arch {arch!r}: expected one of {', '.join(ALL_ARCHS)}")
    if out_dir is not None and (out_dir.is_symlink() or out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir()))):
        _fail(f"--out {out_dir}: already exists and is not an empty folder; expected a new or empty folder")
    _logging(True, False)
    root = out_dir if out_dir is not None else Path(tempfile.mkdtemp(prefix="moequant-demo-"))
    src, q4 = root / f"tiny-{arch}", root / f"{arch}-4bit"
    write_tiny_checkpoint(src, arch)
    err.print(f"1. wrote a tiny random {arch} checkpoint ({ALL_ARCHS[arch].about})", highlight=False)
    quantized = Conversion(src, Quant.make("affine", 4, 64))
    list(quantized.run(q4, command=shlex.join(["moequant", "convert", str(src), str(q4), "--bits", "4"])))
    with tempfile.TemporaryDirectory(prefix="moequant-demo-float-") as tmp:
        list(Conversion(src).run(Path(tmp) / "float"))
        err.print("2. converted it at 4 bits (and once unquantized, as the float reference):", highlight=False)
        out.print(role_table(quantized.plan))
        out.print(summary_line(quantized.plan, "4-bit output"), highlight=False, soft_wrap=True)
        tokens = fixed_tokens(quantized.config["vocab_size"])
        closeness = compare_logits(load_float32(Path(tmp) / "float")(tokens), load_float32(q4)(tokens))
    err.print("3. loaded both with mlx-lm and ran the same tokens through them:", highlight=False)
    out.print(f"4-bit vs float logits: {closeness}", highlight=False, soft_wrap=True)
    q = shlex.quote
    out.print(f"\noutput: {q4} (with its model card, README.md, and plan, moequant_plan.json)\nnext, try:\n"
              f"  moequant inspect {q(str(src))} --recipe mixed_3_6\n"
              f"  moequant verify {q(str(q4))} --reference {q(str(src))}\n"
              f"  moequant convert {q(str(src))} {q(str(root / f'{arch}-mxfp4'))} --mode mxfp4 --verify",
              highlight=False, soft_wrap=True, markup=False)
