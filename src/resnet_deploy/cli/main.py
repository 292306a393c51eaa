"""``resnet-deploy`` and ``resnet-export``.

Each subcommand lives in its own module of this package, exposing ``add_parser(subparsers)`` and
``run(args) -> int``. Exit codes: 0 ok, 1 a check failed, 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from .. import __version__
from ..errors import ResnetDeployError

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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="resnet-deploy", description="ResNet from PyTorch to production inference.")
    parser.add_argument("--version", action="version", version=f"resnet-deploy {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    common.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    seen: set[str] = set()
    for name, module in COMMANDS.items():
        mod = importlib.import_module(f"{__package__}.{module}")
        if module in seen and hasattr(mod, "add_parsers"):
            continue
        if hasattr(mod, "add_parsers"):  # one module, several subcommands
            mod.add_parsers(sub, common)
            seen.add(module)
        else:
            mod.add_parser(sub, common)
    return parser


def _run(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
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
        return int(args.func(args) or 0)
    except ResnetDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return _run(build_parser(), argv)


def export_main(argv: list[str] | None = None) -> int:
    """``resnet-export ...`` is ``resnet-deploy export ...``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("--version",):
        return main(argv)
    return main(["export", *argv])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
