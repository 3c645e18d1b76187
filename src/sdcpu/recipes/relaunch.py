"""Processes under a recipe's launch plan (system settings only act at process start): re-exec the running sdcpu
command under it, or start a measuring child (a bench rung, a tune probe) that prints its result as one JSON line."""

import json
import logging
import os
import sys

from sdcpu import recipes
from sdcpu.errors import UsageError
from sdcpu.system import launcher

log = logging.getLogger(__name__)
MARK = "SDCPU_LAUNCHED"  # set in the re-executed process, so it runs instead of relaunching again
RESOLVED = "SDCPU_RESOLVED_RECIPE"  # the recipe the parent resolved (and why, for auto): the child takes it as is


def recipe_plan(recipe: recipes.Recipe, cpu, environ=os.environ) -> launcher.LaunchPlan | None:
    """The launch plan of RECIPE's system steps for one process; None when it has none."""
    if not recipe.group("system"):
        return None
    options = recipes.launch_options(recipe)
    if options.instances > 1:
        raise UsageError("instances=N starts several processes: use it with `sdcpu launch`")
    return instance_plans(options, cpu, environ)[0]


def instance_plans(options: launcher.LaunchOptions, cpu, environ=os.environ) -> tuple[launcher.LaunchPlan, ...]:
    """One launch plan per instance of OPTIONS, with the libraries and pinning tools found here."""
    libs, tools = launcher.look_around(cpu, environ, pinning=options.pin)
    return launcher.plan(cpu, options, environ, libs, tools)


def child_command(recipe: recipes.Recipe, cpu, environ, module: str, spec: dict):
    """(argv, environment, plan or None) of `python -P -m MODULE SPEC_JSON` started under RECIPE's launch plan."""
    plan = recipe_plan(recipe, cpu, environ)
    prefix, env = (plan.argv_prefix, plan.environ(environ)) if plan else ((), dict(environ))
    return [*prefix, *launcher.python_module(module), json.dumps(spec)], env, plan


def handed_down(environ=os.environ) -> tuple[recipes.Recipe, str | None] | None:
    """(the recipe, why auto chose it) the parent resolved before re-executing this process under its plan; None when
    this process was not started that way."""
    if environ.get(MARK) != "1" or RESOLVED not in environ:
        return None
    data = json.loads(environ[RESOLVED])
    return recipes.Recipe.from_json(data["recipe"]), data["why"]


def under_plan(recipe: recipes.Recipe, cpu, environ=os.environ, why: str | None = None) -> None:
    """Return at once when RECIPE has no system steps or this process was started by its plan; else exec it, handing
    down RECIPE (and WHY auto chose it), so the re-executed command does not resolve it again."""
    if environ.get(MARK) == "1" or (plan := recipe_plan(recipe, cpu, environ)) is None:
        return
    for note in plan.notes:
        log.info("launcher: %s", note)
    if plan.missing:
        log.warning("launcher: asked for but not applied here: %s", ", ".join(plan.missing))
    log.info("re-executing under the launch plan of %s: %s", recipe, launcher.shell_line(plan, ["sdcpu", "..."]))
    resolved = json.dumps({"recipe": recipe.to_json(), "why": why})
    launcher.apply(plan, [*launcher.python_module("sdcpu"), *sys.argv[1:]], {**environ, MARK: "1", RESOLVED: resolved})
