"""The `moequant` command (`python -m moequant` too): starts the workers' forkserver, where the
command line asks for one, before it imports the CLI.

This module imports nothing heavy: the `moequant` script imports it in each worker process too
(multiprocessing runs the parent's main script there as __mp_main__), so the forkserver need not
import the CLI (typer, rich) for them."""

import sys


def _forkserver_early(argv: list[str]) -> None:
    """Start the workers' forkserver (procpool) before the CLI's imports (typer, rich: a tenth of a
    second) and typer's parsing, when the arguments say `convert` with its default worker processes:
    the forkserver's own imports take longer than this process's work until the workers start
    (with --calib, they overlap the calibration pass instead of following it; with `--rounding
    gptq` it imports GPTQ's modules too). A guess from the raw arguments: when it is wrong
    (`convert --help`) the forkserver idles and exits with the process."""
    if argv[:1] == ["convert"] and not {"--pool", "-h", "--help"} & {a.split("=")[0] for a in argv}:
        from .procpool import start_server

        rounding = None  # the last --rounding given, as typer takes it
        for a, b in zip(argv, [*argv[1:], ""]):
            rounding = b if a == "--rounding" else a.split("=", 1)[1] if a.startswith("--rounding=") else rounding
        start_server(gptq=rounding == "gptq")


def main() -> None:
    _forkserver_early(sys.argv[1:])
    from .cli import app

    app(prog_name="moequant")


if __name__ == "__main__":
    main()
