"""The `sdcpu` command: one sub-command per module in sdcpu.commands; logging is configured here only."""

import argparse
import importlib
import logging
import os
import sys

from sdcpu import __version__
from sdcpu.errors import UsageError

COMMANDS = ("generate", "batch", "serve", "mcp", "bench", "report", "info", "launch", "tune")


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments as one line (no usage dump) and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sdcpu", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sdcpu {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"sdcpu.commands.{name}").register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # The libraries warn about optional packages sdcpu does not use (torchvision) and retry the hub before failing;
    # sdcpu reports what matters itself. A user's own setting wins.
    for library in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(library, "info" if args.verbose else "error")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # torchao warns at import (diffusers imports it when installed) that its CUDA kernels do not load: true on a CPU
    # build of torch and irrelevant to its CPU quantization, which the int8 step uses; and its enum registrations make
    # torch's pytree warn of a deprecation that is torchao's to act on
    for logger in ("torchao", "torch.utils._pytree"):
        logging.getLogger(logger).setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    try:
        return args.func(args) or 0
    except UsageError as err:
        logging.getLogger("sdcpu").debug("details", exc_info=err.__cause__ or err)
        print(f"sdcpu {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"sdcpu {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
