"""`sdcpu batch --ray [ADDRESS]`: the batch's images on Ray Data.

The images still to make are a dataset; `map_batches` runs it on a fixed pool of actors, each a process holding one
optimized pipeline (make.Maker, as the single process runs it) on its share of a node's physical cores, writing
its PNGs into the output folder (on several nodes: a shared filesystem). The driver appends each row to the one
manifest as results come back, once per (line, seed), so resume works as without Ray. An actor that dies is restarted
and its batch retried (Ray Data's defaults for an actor pool, max_restarts=-1 and max_task_retries=-1: Ray 2.60
deprecates passing them to map_batches); the image it was writing is redone (written to a temporary file and renamed:
never torn).
"""

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from sdcpu import batch, recipes
from sdcpu.batch import make
from sdcpu.errors import UsageError
from sdcpu.recipes import relaunch
from sdcpu.system import hardware, ray_shares

INSTALL = "pip install -e '.[ray]'"


@dataclass(frozen=True)
class RayOptions:
    address: str  # ray_shares.LOCAL or a cluster's HOST:PORT
    actors: int | None  # None: the cluster's CPUs / cores_per_actor
    cores_per_actor: int


def check(address: str | None, actors: int | None, cores_per_actor: int | None) -> RayOptions | None:
    """The --ray options (None without --ray), checked before any model loads; Ray itself must import."""
    given = {"--actors": actors, "--cores-per-actor": cores_per_actor}
    if address is None:
        if any(value is not None for value in given.values()):
            flags = ", ".join(flag for flag, value in given.items() if value is not None)
            raise UsageError(f"{flags}: only with --ray")
        return None
    for flag, value in given.items():
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    _import_ray()
    return RayOptions(address, actors, cores_per_actor or 1)


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise UsageError(f"--ray needs Ray, which does not import here ({err}): {INSTALL}") from None
    return ray


@dataclass(frozen=True)
class Pool:
    """The actor pool on a running Ray: ACTORS actors of CORES cores each, on a cluster of CPUS."""

    version: str  # Ray's
    cpus: int
    actors: int
    cores: int

    def __str__(self):
        return f"Ray {self.version}, {self.cpus} CPUs: {self.actors} actor(s) x {self.cores} core(s)"


def start(options: RayOptions, cpu) -> Pool:
    """Start or join Ray and check the actor pool fits the cluster (here, before the manifest sees anything)."""
    ray = _import_ray()
    local = options.address == ray_shares.LOCAL
    try:
        ray.init(address=options.address, num_cpus=len(cpu.usable_physical_cores) if local else None,
                 include_dashboard=False if local else None, logging_level=logging.WARNING,
                 log_to_driver=logging.getLogger().isEnabledFor(logging.DEBUG))  # the actors' output: with -v
    except (ConnectionError, ValueError) as error:  # no cluster there (`auto` with none running), a bad address
        raise UsageError(f"--ray {options.address}: {error}") from None
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        cores = options.cores_per_actor
        actors = options.actors or max(1, cpus // cores)
        if actors * cores > cpus:
            raise UsageError(f"{actors} actor(s) x {cores} core(s) need {actors * cores} CPUs; the Ray cluster at "
                             f"{options.address} has {cpus}")
    except BaseException:
        ray.shutdown()
        raise
    return Pool(ray.__version__, cpus, actors, cores)


def rows(pool: Pool, spec, recipe, cpu, images, folder: Path, max_batch: int):
    """The manifest rows of IMAGES (job, seed), as POOL's actors make them (Ray, started, is shut down when they
    end)."""
    ray = _import_ray()
    return _results(ray, pool.actors, pool.cores, actor_environ(recipe, cpu, pool.cores), spec, recipe, images, folder,
                    max_batch)


def _results(ray, actors, cores, environ, spec, recipe, images, folder, max_batch):
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # one bar: the driver's, of images
        context.print_on_execution_start = False
        if not logging.getLogger().isEnabledFor(logging.DEBUG):  # Ray Data logs each execution at INFO; -v shows it
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        # same-shape images next to each other, so a batch of MAX_BATCH rows is mostly one pipeline call
        ordered = [image for group in batch.groups(images, max_batch, batch.shape) for image in group]
        dataset = ray.data.from_items([{"job": json.dumps(dataclasses.asdict(job)), "seed": seed}
                                       for job, seed in ordered], override_num_blocks=len(ordered))
        made = dataset.map_batches(
            Actor, batch_size=max_batch, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cores,
            fn_constructor_kwargs={"spec": spec, "recipe": recipe, "folder": str(folder.resolve()),
                                   "first": ordered[0], "cores": cores},
            runtime_env={"env_vars": environ})
        for result in made.iter_rows():
            yield json.loads(result["row"])
        batch.remove_staging(folder, images)  # a temporary PNG an actor left as it died (none writes now)
    finally:
        ray.shutdown()


def actor_environ(recipe, cpu, cores: int) -> dict[str, str]:
    """The variables each actor starts with: its recipe's launch plan (allocator, OpenMP runtime) for one process of
    CORES threads, the user's own values kept as the plan keeps them. The plan is made on this machine (the driver's),
    which on a cluster may have fewer CPUs than an actor's node: its thread count is set to CORES after."""
    options = dataclasses.replace(recipes.launch_options(recipe), threads=None, instances=1, pin=False)
    plan = relaunch.instance_plans(options, cpu)[0]
    return {**plan.kept, **plan.env, "OMP_NUM_THREADS": str(cores)}


class Actor:
    """One Ray Data actor: pinned to its share of the node's cores, one pipeline, each batch of rows made and written
    into FOLDER; it returns their manifest rows.

    Pinned whatever the recipe says: OpenVINO's CPU plugin binds its threads to the first cores of the process's mask,
    so two unpinned actors of one core each ran on the same core (random:sd15 256x256, 4 steps, openvino=f32, 2-core
    AVX-512 Xeon: 43.3 s an image, vs 9.7 s for one process on both cores)."""

    def __init__(self, spec, recipe, folder: str, first, cores: int):
        cpu = hardware.detect()
        self.share = ray_shares.claim(cpu, cores)
        if self.share:  # None where every share is taken: that actor runs unpinned
            ray_shares.pin(self.share[1])
        self.maker = make.Maker(spec, recipe, cpu, Path(folder), first)

    def __call__(self, rows: dict) -> dict:
        images = [(batch.Job(**json.loads(job)), int(seed)) for job, seed in zip(rows["job"], rows["seed"])]
        return {"row": [json.dumps(row) for row in self.maker.rows(images, len(images))]}
