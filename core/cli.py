"""The ``dclszoo`` command line (console script ``dclszoo``, or ``python -m dclszoo``).

Commands, one private module each (imported when the command runs; heavy packages only inside them):

- ``plugins`` (:mod:`._cli_plugins`): installed plugins and what they support;
- ``convert`` (:mod:`._cli_convert`): a dense timm / transformers model -> DCLS, saved in Hub format;
- ``finetune`` (:mod:`._cli_finetune`): train with / without DCLS or delays, save, reload, evaluate;
- ``inspect`` (:mod:`._cli_inspect`): summary table and PNG plots of learned positions and delays;
- ``export`` (:mod:`._cli_export`): to plain torch convolutions, integer delays or NIR.

Exit codes: 0 success, 1 failure (one ``dclszoo <command>: error: ...`` line on stderr; ``DCLSZOO_TRACEBACK=1``
shows the traceback), 2 usage error (argparse), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

__all__ = ["main", "build_parser", "COMMANDS"]

COMMANDS = {
    "plugins": ("dclszoo._cli_plugins", "list installed plugins and what they support"),
    "convert": ("dclszoo._cli_convert", "convert a dense timm / transformers model to DCLS and save it"),
    "finetune": ("dclszoo._cli_finetune", "fine-tune with and without DCLS (or delays), save, reload, evaluate"),
    "inspect": ("dclszoo._cli_inspect", "summarise a checkpoint's DCLS positions and delays, with PNG plots"),
    "export": ("dclszoo._cli_export", "export a checkpoint to dense convolutions, integer delays or NIR"),
}

TRACEBACK_ENV = "DCLSZOO_TRACEBACK"

DESCRIPTION = """\
DCLS convolutions and learnable synaptic delays for timm, transformers and SpikingJelly models.

Start with `dclszoo finetune` (offline, a few minutes on a CPU), then `dclszoo inspect runs/digits/model`.
"""


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    from .version import __version__

    parser = argparse.ArgumentParser(prog="dclszoo", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"dclszoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parsers = {}
    for name, (module_name, summary) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=summary, description=getattr(module, "DESCRIPTION", summary),
                           epilog=getattr(module, "EPILOG", None), formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        parsers[name] = p
    return parser, parsers


def _fail(command: str, message: str) -> int:
    print(f"dclszoo {command}: error: {message}", file=sys.stderr, flush=True)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    parser, parsers = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        check = getattr(importlib.import_module(COMMANDS[args.command][0]), "check_options", None)
        if check is not None:  # a command's own usage rules (exit 2 like argparse's)
            check(args, parsers[args.command])
    except SystemExit as exc:  # --help / --version (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    from ._cli_common import CliError

    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"dclszoo {args.command}: interrupted", file=sys.stderr)
        return 130
    except CliError as exc:
        return _fail(args.command, str(exc))
    except Exception as exc:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        from .hub import CheckpointError

        detail = str(exc) if isinstance(exc, (CheckpointError, ValueError, TypeError)) else f"{type(exc).__name__}: {exc}"
        return _fail(args.command, f"{detail} (set {TRACEBACK_ENV}=1 to see the traceback)")


if __name__ == "__main__":
    sys.exit(main())
