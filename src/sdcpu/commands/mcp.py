"""`sdcpu mcp`: sdcpu as tools for an agent over the Model Context Protocol on stdio (generate_image, edit_image,
describe), one model loaded, optimized and warmed up as it starts. An MCP client starts it as a command, e.g.
`{"command": "sdcpu", "args": ["mcp", "--model", "stabilityai/sdxl-turbo"]}`. Its log goes to stderr: stdout is the
protocol's.
"""

import logging
import sys

from sdcpu import models
from sdcpu.commands.options import add_model, add_recipe, resolve_recipe
from sdcpu.errors import UsageError
from sdcpu.pipeline import generate
from sdcpu.recipes import auto_rules, relaunch
from sdcpu.system import hardware

log = logging.getLogger(__name__)


def register(sub):
    p = sub.add_parser("mcp", help="sdcpu's images as MCP tools for agents (stdio)", description=__doc__)
    add_model(p)
    add_recipe(p, quality=False)
    p.add_argument("--max-size", type=int, default=1024, help="the largest width or height made (default %(default)s)")
    p.add_argument("--warmup-size", metavar="WxH", help="size of the one-step warm-up as it starts (default: the "
                                                         "model's)")
    p.add_argument("--trust-pickle", action="store_true", help="allow .ckpt/.bin pickle checkpoints (they can run code)")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        import mcp  # noqa: F401 - the SDK, checked before the model loads
    except ImportError:
        raise UsageError("sdcpu mcp needs the MCP Python SDK: pip install -c constraints.txt mcp") from None
    if args.max_size < generate.MIN_SIDE:
        raise UsageError(f"--max-size must be at least {generate.MIN_SIDE}, got {args.max_size}")
    cpu = hardware.detect()
    spec = models.parse_spec(args.model, trust_pickle=args.trust_pickle)
    size = generate.parse_size(args.warmup_size or generate.spec_defaults(spec).size)
    generate.Request("warm-up", width=size[0], height=size[1]).validate()
    # auto: a tuned profile for this model at its size, else the class rules for a long-running process
    recipe, why_auto = resolve_recipe(args, cpu, *size, long_running=True)
    relaunch.under_plan(recipe, cpu, why=why_auto)

    from sdcpu.serve import mcp_tools, service
    from sdcpu.serve.options import Options

    options = Options(spec=spec, recipe=recipe, max_size=args.max_size, warmup_size=size)
    served = service.standalone(options, cpu, on_ready=lambda message: log.warning("%s", message))
    served.worker.start()
    kind = auto_rules.cpu_class(cpu)
    bf16 = "native" if cpu.native_bf16 else f"emulated ({cpu.native_bf16_reason})"
    description = "\n".join([
        f"CPU: {cpu.model_name}, {len(cpu.usable_physical_cores)} physical cores, {cpu.memory_bytes / 2**30:.1f} GiB; "
        f"class {kind.name}: {kind.summary}; bf16 {bf16}",
        f"model: {spec}" + (f" ({generate.RANDOM_WEIGHTS_NOTE})" if spec.random_weights else ""),
        f"recipe: {recipe}" + (f" (auto: {why_auto})" if why_auto else ""),
        f"largest side: {args.max_size}",
    ])
    try:
        mcp_tools.server(served, lambda: f"{description}\nstate: {served.worker.state}").run("stdio")
    finally:
        served.worker.close()
    print("sdcpu mcp: the client closed the connection", file=sys.stderr)
    return 0
