"""``resnet-deploy`` and ``resnet-export``.

Each subcommand lives in its own module of this package, exposing ``add_parser(subparsers)`` and
``run(args) -> int``. Exit codes: 0 ok, 1 a check failed, 2 bad usage or input.

Only the module of the command being run is imported (all of them for ``--help``), so a serving
command does not pay for the export stack. A command whose module needs an optional package that
is not installed (``export`` on a runtime without PyTorch) is still listed, and says which extra to
install when run.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from .. import __version__
from ..errors import ResnetDeployError, missing_dependency

#: subcommand name -> module in this package, in the order ``--help`` lists them.
COMMANDS = {
    "export": "export",
    "build": "build",
    "calibrate": "calibrate",
    "check": "check",
    "infer": "infer",
    "embed": "embed",
    "bench": "bench",
    "triton-repo": "triton",
    "triton-serve": "triton",
}

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE = 0, 1, 2


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(levelname).1s] %(message)s"))
    root = logging.getLogger("resnet_deploy")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for noisy in ("torch.onnx", "onnxscript", "torch._dynamo", "torch.export"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code is 2 as well
        # one line: the usage of a command with 40 options would bury the error
        print(f"{self.prog}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _unavailable(sub: argparse._SubParsersAction, common: argparse.ArgumentParser, name: str,
                 error: ResnetDeployError) -> None:
    """A stand-in for a command whose module cannot be imported here: running it, with any arguments
    (none of them is parsed: ``prefix_chars`` that no option uses), reports ``error``."""
    p = sub.add_parser(name, help=f"(unavailable: {error})", description=str(error), prefix_chars="\0",
                       add_help=False)
    p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)

    def run(args: argparse.Namespace) -> int:
        raise error

    p.set_defaults(func=run)


def _command_in(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option), if known."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand, or with only the one named in ``argv`` when it names one."""
    parser = _Parser(prog="resnet-deploy", description="ResNet from PyTorch to production inference.")
    parser.add_argument("--version", action="version", version=f"resnet-deploy {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    common.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    wanted = _command_in(argv) if argv is not None else None
    seen: set[str] = set()
    for name, module in COMMANDS.items():
        if wanted is not None and name != wanted:
            continue
        try:
            mod = importlib.import_module(f"{__package__}.{module}")
        except ImportError as exc:
            error = missing_dependency(exc, f"'resnet-deploy {name}'")
            if error is None:
                raise
            _unavailable(sub, common, name, error)
            continue
        if module in seen and hasattr(mod, "add_parsers"):
            continue
        if hasattr(mod, "add_parsers"):  # one module, several subcommands
            mod.add_parsers(sub, common)
            seen.add(module)
        else:
            mod.add_parser(sub, common)
    return parser


#: After Ctrl-C, the seconds a program run may spend winding down (joining worker threads that are
#: inside a long C call) before it exits anyway.
INTERRUPT_GRACE_S = 3.0


def _exit_promptly_after_interrupt() -> None:
    """A program run that was interrupted ends within ``INTERRUPT_GRACE_S`` even when a worker thread is
    stuck (interpreter shutdown joins every pool thread), and a second Ctrl-C ends it at once. Only for
    the console scripts: a library caller or a test keeps its process."""
    import os
    import signal
    import threading

    def now(*_: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(130)

    try:
        signal.signal(signal.SIGINT, now)
    except ValueError:  # not the main thread
        pass
    timer = threading.Timer(INTERRUPT_GRACE_S, now)
    timer.daemon = True
    timer.start()


def _run(parser: argparse.ArgumentParser, argv: list[str] | None, program: bool = False) -> int:
    try:
        args = parser.parse_args(argv)
    except ResnetDeployError as exc:  # raised by an argument's type
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SystemExit as exc:  # --help, --version, a usage error: main() returns the code, as documented
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _configure_logging(-1 if getattr(args, "quiet", False) else getattr(args, "verbose", 0))
    try:
        try:
            return int(args.func(args) or 0)
        except ImportError as exc:  # an optional package a code path needs: one line naming the extra
            error = missing_dependency(exc, f"'resnet-deploy {args.command}'")
            if error is None:
                raise
            raise error from exc
    except ResnetDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        if program:
            _exit_promptly_after_interrupt()
        return 130


def main(argv: list[str] | None = None) -> int:
    program = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    return _run(build_parser(argv), argv, program=program)


def export_main(argv: list[str] | None = None) -> int:
    """``resnet-export ...`` is ``resnet-deploy export ...``."""
    program = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    full = argv if argv and argv[0] in ("--version",) else ["export", *argv]
    return _run(build_parser(full), full, program=program)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
