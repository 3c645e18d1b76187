"""What `sdcpu serve` is asked to serve, and how, as plain data: commands/serve.py makes it from the command line;
the service (serve/service.py) and each Ray Serve replica (serve/ray_deploy.py) are built from it."""

import hashlib
from dataclasses import dataclass

from sdcpu.pipeline.generate import DEFAULTS

MEMORY_SHARE = 0.75  # the share of the machine's memory the models held may take by default (requests need the rest)
KEPT_JOBS = 32  # finished jobs of the jobs API kept (their images in memory) at most


def key_digest(api_key: str | bytes) -> bytes:
    """What the server keeps of an API key: its SHA-256, never the key itself (a Ray deployment's options are stored
    on the cluster, where whoever can read its state could read them)."""
    return hashlib.sha256(api_key.encode() if isinstance(api_key, str) else api_key).digest()


@dataclass(frozen=True)
class Replicas:
    """`serve --ray`: where Ray runs, and its replicas (a fixed count, or autoscaling bounds), each on CORES."""

    address: str  # ray_shares.LOCAL, or a cluster head's HOST:PORT (or auto)
    replicas: int | None = None  # a fixed count (None: 1, or autoscaling with max_replicas)
    min_replicas: int | None = None  # the autoscaler's lower bound (None: 1)
    max_replicas: int | None = None  # autoscale up to this many; None: a fixed count
    cores: int | None = None  # physical cores of each replica; None: the usable cores / the most replicas

    @property
    def most(self) -> int:
        """The replicas there may be at once: max_replicas when autoscaling, else replicas (default 1)."""
        return self.max_replicas or self.replicas or 1


@dataclass(frozen=True)
class Model:
    """A model served besides the default one: its SPEC, optimized by RECIPE (both resolved), warmed up at
    WARMUP_SIZE."""

    spec: object  # a models.ModelSpec
    recipe: object  # a recipes.Recipe
    warmup_size: tuple[int, int]
    name: str = ""  # what requests name it by; "": the spec as given (serve --models-dir: the entry's name)


@dataclass(frozen=True)
class Options:
    """The service of the default model SPEC optimized by RECIPE (both resolved) and of MORE models: where it listens,
    who may use it, the worker's bounds, the warm-up's size, and with RAY its Ray Serve replicas (None: one
    process)."""

    spec: object  # a models.ModelSpec
    recipe: object  # a recipes.Recipe
    host: str = "127.0.0.1"
    port: int = 7860  # 0: a free one
    key_digest: bytes | None = None  # the API key's key_digest (never the key); None: no key asked
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides localhost, the loopback addresses and HOST
    docs: bool = False  # serve /docs, /redoc, /openapi.json
    allowed_origins: tuple[str, ...] = ()  # scheme://host[:port] of other sites whose pages may use it (CORS)
    lora_dir: str | None = None  # an absolute folder: the LoRAs requests may name
    max_queue: int = 16  # requests that may wait for the worker
    max_uploads: int = 2  # uploads (edits, img2img) read and decoded at once
    max_batch: int = 1  # images one pipeline call may make for waiting requests of one shape
    max_request_seconds: float | None = None  # a pipeline call still running then stops (None: no bound)
    drain_seconds: float = 30  # on SIGTERM, how long queued and running requests may finish
    job_seconds: float = 600  # how long a finished job (/v1/jobs) is kept
    jobs: bool = True  # take jobs: false on one of several processes sharing a port (a status would reach another)
    max_size: int = 1024  # the largest width or height served
    warmup_size: tuple[int, int] = (DEFAULTS.width, DEFAULTS.height)  # of the one-step warm-up call
    verbose: bool = False  # info logging (Ray Serve's too)
    ray: Replicas | None = None
    name: str = ""  # what requests name the default model by; "": its spec
    more: tuple[Model, ...] = ()  # the other models served (serve --model A --model B ..., --models-dir)
    max_memory_gib: float | None = None  # what the models held may take (None: MEMORY_SHARE of the machine's)

    @property
    def models(self) -> tuple[Model, ...]:
        """Every model served, the default first."""
        return (Model(self.spec, self.recipe, self.warmup_size, self.name), *self.more)
