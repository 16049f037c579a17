"""The `moequant` command (and `python -m moequant`)."""

from .malloc import keep_freed_memory


def main() -> None:
    keep_freed_memory()  # before mlx is imported and any thread allocates
    from .cli import app

    app(prog_name="moequant")


if __name__ == "__main__":
    main()
