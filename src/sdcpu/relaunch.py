"""Re-exec the running sdcpu command under its recipe's launch plan (system settings only act at process start)."""

import logging
import os
import sys

from sdcpu import launcher, recipes
from sdcpu.errors import UsageError

log = logging.getLogger(__name__)
MARK = "SDCPU_LAUNCHED"  # set in the re-executed process, so it runs instead of relaunching again


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
    libs = launcher.find_libraries(launcher.library_dirs(environ))
    tools = launcher.probe_pinning_tools(cpu) if options.pin else frozenset()
    return launcher.plan(cpu, options, environ, libs, tools)


def under_plan(recipe: recipes.Recipe, cpu, environ=os.environ) -> None:
    """Return at once when RECIPE has no system steps or this process was started by its plan; else exec it."""
    if environ.get(MARK) == "1" or (plan := recipe_plan(recipe, cpu, environ)) is None:
        return
    for note in plan.notes:
        log.info("launcher: %s", note)
    if plan.missing:
        log.warning("launcher: asked for but not applied here: %s", ", ".join(plan.missing))
    log.info("re-executing under the launch plan of %s: %s", recipe, launcher.shell_line(plan, ["sdcpu", "..."]))
    launcher.apply(plan, [sys.executable, "-m", "sdcpu", *sys.argv[1:]], {**environ, MARK: "1"})
