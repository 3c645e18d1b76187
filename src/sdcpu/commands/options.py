"""Command-line options that more than one command takes, declared once."""

import os

DEFAULT_MODEL = "random:sd15"


def add_model(parser) -> None:
    """`--model SPEC`, from $SDCPU_MODEL when set."""
    parser.add_argument("--model", default=os.environ.get("SDCPU_MODEL", DEFAULT_MODEL),
                        help="random:ARCH | org/name (hub) | FOLDER | FILE.safetensors "
                             "(default: $SDCPU_MODEL or %(default)s)")
