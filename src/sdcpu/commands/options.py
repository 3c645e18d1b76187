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


def add_model(parser, repeat: bool = False) -> None:
    """`--model SPEC`, from $SDCPU_MODEL when set; REPEAT: given once per model (read them with `given_models`)."""
    parser.add_argument("--model", default=None if repeat else default_model(), action="append" if repeat else "store",
                        help="random:ARCH | org/name (hub) | FOLDER | FILE.safetensors "
                             + ("(repeat it to serve several, the first the default; " if repeat else "(")
                             + f"default: $SDCPU_MODEL or {DEFAULT_MODEL})")


def default_model() -> str:
    return os.environ.get("SDCPU_MODEL", DEFAULT_MODEL)


def given_models(args) -> list[str]:
    """The models a REPEAT --model names, the default where none is given."""
    return args.model or [default_model()]


def add_recipe(parser, quality: bool = True, repeat: bool = False) -> None:
    """`--recipe RECIPE` (default auto) and, with QUALITY, `--quality LEVEL`: the auto recipe's level; REPEAT: given
    once for every --model, or once for all (read them with `given_recipes`)."""
    parser.add_argument("--recipe", default=None if repeat else "auto", action="append" if repeat else "store",
                        help="a named recipe (baseline, system, framework, seed, auto) or steps, e.g. "
                             "jemalloc,iomp,pin,channels_last,bf16 (default auto; `sdcpu info` shows what it "
                             "picks)" + ("; once for all models, or once for each --model in order" if repeat else ""))
    if quality:
        parser.add_argument("--quality", choices=auto.QUALITIES,
                            help="the auto recipe's quality level: exact (fp32 only), high (default: + native bf16), "
                                 "fast (+ deepcache, tiny-vae); same as --recipe auto:LEVEL")


def given_recipes(args, count: int) -> list[str]:
    """The recipe of each of COUNT models from a REPEAT --recipe: one for all, or one each."""
    given = args.recipe or ["auto"]
    if len(given) not in (1, count):
        raise UsageError(f"--recipe given {len(given)} times for {count} models: give one for all of them, or one "
                         "for each --model, in order")
    return given * count if len(given) == 1 else given


def resolve_recipe(args, cpu, width: int, height: int, long_running: bool = False,
                   handed: bool = True) -> tuple[recipes.Recipe, str | None]:
    """(the recipe, why auto chose it or None) of ARGS' --recipe and --quality: the one this process's parent resolved
    and handed down when it re-executed it under the recipe's launch plan, else resolved here, once, before that
    re-exec (auto: a tuned profile for --model at WIDTHxHEIGHT, else the class rules, for a LONG_RUNNING process or
    a one-shot one). HANDED false: resolved here whatever was handed down (a model of several but the first)."""
    quality = getattr(args, "quality", None)
    if quality and not recipes.is_auto(args.recipe):
        raise UsageError(f"--quality sets the level of the auto recipe, not of --recipe {args.recipe}")
    asked = f"auto:{quality}" if quality else args.recipe
    # a ControlNet (generate --control): auto picks among the recipes whose UNet takes its residuals
    control = getattr(args, "control", None) is not None
    return (handed and relaunch.handed_down()) or auto.resolve_for(asked, cpu, args.model, width, height,
                                                                   long_running=long_running, control=control)
