"""The search `sdcpu tune` runs, pure: a measuring function is passed in, so tests drive it with fake timings.

Coordinate descent: start from the default configuration, then one dimension at a time try each other option on top
of the best so far; never a grid. The noise rule (`better`): a configuration replaces the incumbent only when every
one of its repeats was faster than every one of the incumbent's (the two ranges do not overlap: with 3 repeats each,
a chance of 1 in 20 when both are the same) and its median is lower by at least FLOOR; otherwise the incumbent, the
simpler one, stays. (A first rule, "better by more than the larger relative spread", threw away OpenVINO's 2x on
random:sd15 because one of its three repeats was slow: a spread of 60% hid a gap no repeat came near.) The budget: a candidate runs only if its estimated cost leaves room
for the end's confirmation. `confirm` then runs baseline and winner interleaved (A B A B) in fresh processes and keeps
the winner only if it still passes the noise rule there.
"""

import statistics
from dataclasses import dataclass, field

from sdcpu.tune.space import Config, Space

FLOOR = 0.05  # the smallest advantage that counts, even when repeats agree closely
CONFIRM_ROUNDS = 2  # A B A B


@dataclass(frozen=True)
class Result:
    config: Config
    samples: tuple[float, ...] = ()  # estimated seconds per image: one per repeat (per process in a confirmation)
    first_call_s: float | None = None  # the process's first UNet + VAE call (compiling backends compile there)
    wall_s: float = 0.0  # what the measurement cost, process start to end
    status: str = "measured"  # measured | failed: REASON | skipped: REASON; "(confirmation)" added in the last runs
    detail: dict = field(default_factory=dict, compare=False)

    @property
    def ok(self) -> bool:
        return self.status.startswith("measured") and bool(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """(max - min) / median of the samples: the noise this measurement saw."""
        return (max(self.samples) - min(self.samples)) / self.median


def better(candidate: Result, incumbent: Result, floor: float = FLOOR) -> bool:
    """True when CANDIDATE's slowest repeat beats INCUMBENT's fastest, and its median INCUMBENT's by at least FLOOR."""
    if not candidate.ok:
        return False
    if not incumbent.ok:
        return True
    return max(candidate.samples) < min(incumbent.samples) and candidate.median < incumbent.median * (1 - floor)


@dataclass
class Search:
    results: list[Result]
    best: Result
    notes: list[str]


def coordinate_descent(space: Space, measure, budget_s: float, estimate, baseline: Result | None = None) -> Search:
    """Measure the default, then each dimension's options on top of the best so far. MEASURE(config) -> Result;
    ESTIMATE(config) -> seconds it would take. A candidate whose cost would leave less than the confirmation needs
    is recorded as skipped (budget). BASELINE: the default's measurement, when the caller already made it."""
    best = baseline or measure(space.default)
    results, notes, seen = [best], [], {space.default}
    spent = best.wall_s
    if not best.ok:
        notes.append(f"the default configuration {best.status}: nothing to compare against, search stopped")
        return Search(results, best, notes)
    for dimension in space.dimensions:
        for option in dimension.options:
            config = space.with_option(best.config, dimension.name, option)
            if config in seen:
                continue
            seen.add(config)
            if reason := space.conflict(config):
                results.append(Result(config, status=f"skipped: {reason}"))
                continue
            reserve = CONFIRM_ROUNDS * (estimate(space.default) + max(estimate(best.config), estimate(config)))
            if spent + estimate(config) + reserve > budget_s:
                results.append(Result(config, status=f"skipped: budget (needs ~{estimate(config):.0f} s, "
                                                      f"{max(0.0, budget_s - spent - reserve):.0f} s left)"))
                continue
            result = measure(config)
            results.append(result)
            spent += result.wall_s
            if better(result, best):
                best = result
    return Search(results, best, notes)


def confirm(baseline: Config, winner: Config, measure) -> tuple[bool, Result, Result, list[Result]]:
    """Baseline and winner interleaved in fresh processes; (winner confirmed, baseline pooled, winner pooled, runs).
    Each pooled result holds one sample per process: that process's median."""
    runs = [measure(config) for _ in range(CONFIRM_ROUNDS) for config in (baseline, winner)]
    pooled = [_pool(config, [r for r in runs if r.config == config]) for config in (baseline, winner)]
    return better(pooled[1], pooled[0]), pooled[0], pooled[1], runs


def _pool(config: Config, runs: list[Result]) -> Result:
    measured = [r for r in runs if r.ok]
    if len(measured) < len(runs):
        return Result(config, status=next(r.status for r in runs if not r.ok), wall_s=sum(r.wall_s for r in runs))
    return Result(config, tuple(r.median for r in measured), wall_s=sum(r.wall_s for r in runs))


def fit_protocol(budget_s: float, processes: int, baseline: Result, repeats: int, size: tuple[int, int],
                 step: int = 64, smallest: int = 128) -> tuple[int, tuple[int, int], list[str]]:
    """The repeats and image size that let PROCESSES measurements fit BUDGET_S, from the baseline's cost at REPEATS
    and SIZE: first one repeat fewer (not below 2), then half the image side (a quarter of the work) while both sides
    stay multiples of MIN_SIDE. Returns (repeats, size, notes saying what was reduced)."""
    d = baseline.detail
    overhead = max(0.0, baseline.wall_s - d["compute_s"])
    per_repeat, fixed = d["unet_median_s"], d["compute_s"] - repeats * d["unet_median_s"]
    options = [(r, 1) for r in range(repeats, 1, -1)]
    width, height, scale = *size, 1
    while all(side // (2 * scale) % step == 0 and side // (2 * scale) >= smallest for side in size):
        scale *= 2
        options.append((2, scale))
    options = options or [(repeats, 1)]
    cost = {o: processes * (overhead + (o[0] * per_repeat + fixed) / o[1] ** 2) for o in options}
    chosen = next((o for o in options if cost[o] <= budget_s), options[-1])
    new_size = (width // chosen[1], height // chosen[1])
    notes = []
    if chosen[0] != repeats:
        notes.append(f"repeats reduced from {repeats} to {chosen[0]} per process to fit the budget")
    if chosen[1] != 1:
        notes.append(f"size reduced from {width}x{height} to {new_size[0]}x{new_size[1]} to fit the budget: "
                     "relative figures at the smaller size stand for the full one")
    if cost[chosen] > budget_s:
        notes.append(f"about {processes} processes of ~{cost[chosen] / processes:.0f} s each do not fit "
                     f"{budget_s:.0f} s even so: the search stops when the budget runs out (--budget raises it)")
    return chosen[0], new_size, notes
