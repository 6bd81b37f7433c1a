"""The `edgeinfer` command. Documented errors become one line on stderr and exit code 2.

Each command group lives in a module of its own (making.py, running.py, device.py), with its parsers
beside its handlers; this module assembles them and turns what goes wrong into one line.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Callable

from ..errors import EdgeInferError
from . import device, making, running


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeinfer", description="Edge packages and adaptive inference.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (making, running, device):
        group.add_commands(sub)
    return parser


def _show_progress_lines() -> None:
    """Off a terminal, long stages log a line now and then (progress.py); the CLI shows them on stderr."""
    import logging

    class CurrentStderr(logging.Handler):  # whatever sys.stderr is when a line is written
        def emit(self, record: logging.LogRecord) -> None:
            sys.stderr.write(f"edgeinfer: {record.getMessage()}\n")

    logger = logging.getLogger("edgeinfer")
    if not any(type(h).__name__ == "CurrentStderr" for h in logger.handlers):
        logger.addHandler(CurrentStderr())
        logger.setLevel(logging.INFO)
        logger.propagate = False


EXPORT_MODULES = ("torch", "transformers", "safetensors", "onnx", "scipy", "tqdm", "matplotlib")
NEEDS = {  # command -> (extra, modules it imports): checked before any work starts
    "export": ("export", EXPORT_MODULES), "demo": ("export", EXPORT_MODULES),
    "quantize": ("export", EXPORT_MODULES), "calibrate": ("export", EXPORT_MODULES),
    "thresholds": ("export", EXPORT_MODULES), "bench": ("export", EXPORT_MODULES),
    "convert": ("export-litert", ("torch", "onnx", "litert_torch")),
    "keygen": ("signing", ("cryptography",)), "sign": ("signing", ("cryptography",)),
}
EXTRA_OF_MODULE = {**{m: "export" for m in EXPORT_MODULES}, "litert_torch": "export-litert",
                   "ai_edge_litert": "litert", "cryptography": "signing", "gguf": "llm", "accelerate": "llm"}


def missing_extra(command: str) -> str | None:
    """One line naming the extra to install, when a module the command needs is not installed."""
    extra, modules = NEEDS.get(command, (None, ()))
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (f"`edgeinfer {command}` needs the {extra} extra (missing: {', '.join(missing)}); "
            f"pip install 'edgeinfer[{extra}]'")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _show_progress_lines()
    handler: Callable[[argparse.Namespace], int] = args.handler
    command = args.command
    needed = missing_extra(command)
    if needed is not None:
        print(f"edgeinfer: error: {needed}", file=sys.stderr)
        return 2
    try:
        return handler(args)
    except EdgeInferError as err:
        print(f"edgeinfer: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgeinfer: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`edgeinfer run ... | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except ModuleNotFoundError as err:  # an optional module the check above does not list
        root = (err.name or "").split(".")[0]
        if root not in EXTRA_OF_MODULE:
            raise
        print(f"edgeinfer: error: `edgeinfer {command}` needs the {EXTRA_OF_MODULE[root]} extra (missing: {root}); "
              f"pip install 'edgeinfer[{EXTRA_OF_MODULE[root]}]'", file=sys.stderr)
        return 2
    except (OSError, ValueError, UnicodeError, OverflowError, RecursionError, MemoryError) as err:
        # what the arguments or the filesystem made impossible (a path that is not one, a full disk,
        # a number too large): one line naming the command, never a traceback
        detail = str(err).splitlines()[0][:200] if str(err) else ""
        print(f"edgeinfer: error: {command}: {type(err).__name__}{': ' + detail if detail else ''}; "
              f"check the arguments (`edgeinfer {command} --help`)", file=sys.stderr)
        return 2
