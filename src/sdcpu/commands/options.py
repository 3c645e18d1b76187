"""Command-line options that more than one command takes, declared once, and what the commands make of them."""

import argparse
import math
import os

from sdcpu import recipes
from sdcpu.errors import UsageError
from sdcpu.recipes import auto, relaunch

DEFAULT_MODEL = "random:sd15"


def finite(text: str) -> float:
    """argparse's type of every float flag: a finite number (float() also reads nan and inf, which the APIs and jobs
    files refuse too)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def add_model(parser) -> None:
    """`--model SPEC`, from $SDCPU_MODEL when set."""
    parser.add_argument("--model", default=os.environ.get("SDCPU_MODEL", DEFAULT_MODEL),
                        help="random:ARCH | org/name (hub) | FOLDER | FILE.safetensors "
                             "(default: $SDCPU_MODEL or %(default)s)")


def add_recipe(parser, quality: bool = True) -> None:
    """`--recipe RECIPE` (default auto) and, with QUALITY, `--quality LEVEL`: the auto recipe's level."""
    parser.add_argument("--recipe", default="auto",
                        help="a named recipe (baseline, system, framework, seed, auto) or steps, e.g. "
                             "jemalloc,iomp,pin,channels_last,bf16 (default %(default)s; `sdcpu info` shows what it "
                             "picks)")
    if quality:
        parser.add_argument("--quality", choices=auto.QUALITIES,
                            help="the auto recipe's quality level: exact (fp32 only), high (default: + native bf16), "
                                 "fast (+ deepcache, tiny-vae); same as --recipe auto:LEVEL")


def resolve_recipe(args, cpu, width: int, height: int, long_running: bool = False) -> tuple[recipes.Recipe, str | None]:
    """(the recipe, why auto chose it or None) of ARGS' --recipe and --quality: the one this process's parent resolved
    and handed down when it re-executed it under the recipe's launch plan, else resolved here, once, before that
    re-exec (auto: a tuned profile for --model at WIDTHxHEIGHT, else the class rules, for a LONG_RUNNING process or
    a one-shot one)."""
    quality = getattr(args, "quality", None)
    if quality and not recipes.is_auto(args.recipe):
        raise UsageError(f"--quality sets the level of the auto recipe, not of --recipe {args.recipe}")
    return relaunch.handed_down() or auto.resolve_for(f"auto:{quality}" if quality else args.recipe, cpu, args.model,
                                                      width, height, long_running=long_running)
