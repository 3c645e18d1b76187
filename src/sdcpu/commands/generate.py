"""`sdcpu generate PROMPT`: images from a prompt (and from an image: img2img, inpainting with a mask), with their
timing and self-describing PNGs."""

import dataclasses
import resource

from sdcpu import auto, generate, hardware, lora, models, recipes, relaunch, schedulers, steps, tasks
from sdcpu.commands.options import add_model
from sdcpu.errors import UsageError
from sdcpu.steps_base import Skip



def register(sub):
    p = sub.add_parser("generate", help="generate images from a prompt", description=__doc__)
    p.add_argument("prompt")
    add_model(p)
    p.add_argument("--recipe", default="auto",
                   help="a named recipe (baseline, system, framework, seed, auto) or steps, e.g. "
                        "jemalloc,iomp,pin,channels_last,bf16 (default %(default)s; `sdcpu info` shows what it picks)")
    p.add_argument("--quality", choices=("exact", "high", "fast"),
                   help="the auto recipe's quality level: exact (fp32 only), high (default: + native bf16), fast "
                        "(+ deepcache, tiny-vae); same as --recipe auto:LEVEL")
    p.add_argument("--steps", type=int, help="denoising steps (default: the recipe's steps=, else 20)")
    p.add_argument("--size", default="512x512", help="WIDTHxHEIGHT, multiples of 8 (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed+i (default %(default)s)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the recipe's, else 7.5)")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--scheduler", choices=list(schedulers.SCHEDULERS), metavar="NAME",
                   help=f"one of {', '.join(schedulers.SCHEDULERS)} (default: the model's own)")
    p.add_argument("--image", metavar="IN.png", help="start from this image: img2img (with --mask: inpainting); it "
                                                      "is resized to --size")
    p.add_argument("--mask", metavar="MASK.png", help="inpainting: white repaints, black keeps (the image's size)")
    p.add_argument("--strength", type=float, help="img2img/inpainting: how much of the schedule repaints the image, "
                                                  "(0, 1] (default 0.75; 1 for inpainting)")
    p.add_argument("-o", "--output", default="outputs", help="a folder, or a FILE.png (default %(default)s/)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing -o FILE.png (else refused)")
    p.add_argument("--lora", action="append", default=[], metavar="FILE_OR_ID[:WEIGHT]",
                   help="a LoRA (kohya or diffusers layout, .safetensors; a folder or hub id) at WEIGHT (default 1); "
                        "repeat for several")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow .ckpt/.bin/.pt pickle checkpoints and LoRAs (they can run code)")
    p.set_defaults(func=run)


def run(args) -> int:
    # 1. Check every input before the (slow) model load, so a typo costs nothing; then start under the recipe's plan.
    cpu = hardware.detect()
    if args.quality and not recipes.is_auto(args.recipe):
        raise UsageError(f"--quality sets the level of the auto recipe, not of --recipe {args.recipe}")
    width, height = generate.parse_size(args.size)
    spec = models.parse_spec(args.model, trust_pickle=args.trust_pickle)
    loras = tuple(lora.parse(text, trust_pickle=args.trust_pickle) for text in args.lora)
    # auto: a tuned profile for this model and size, else the class rules (said at the end); resolved once, before
    # the re-exec under the launch plan, which hands it down
    recipe, why_auto = relaunch.handed_down() or auto.resolve_for(
        f"auto:{args.quality}" if args.quality else args.recipe, cpu, args.model, width, height)
    request = generate.Request(
        prompt=args.prompt, negative_prompt=args.negative_prompt, width=width, height=height, seed=args.seed,
        steps=20 if args.steps is None else args.steps, guidance=7.5 if args.guidance is None else args.guidance,
        num_images=args.num_images,
    ).validate()
    edit = _edit(args)
    tasks.check_steps(request.steps, edit and edit.strength)
    paths = generate.output_paths(args.output, request.seeds(), overwrite=args.overwrite)
    relaunch.under_plan(recipe, cpu, why=why_auto)

    # 2. Load the model, optimize it, add the LoRAs, set its scheduler.
    pipe = models.load_pipeline(spec, progress=True)
    generate.check_tokens(pipe.tokenizer, request)
    _, outcomes = steps.optimize(pipe, recipe, cpu)
    if loras:
        try:
            print(f"lora: {lora.use(pipe, loras, fuse=True)}")  # one set per process: fused, no per-step cost
        except Skip as skip:
            raise UsageError(f"--lora cannot apply on recipe {recipe}: {skip}") from None
    defaults = steps.defaults(pipe)  # the recipe's steps= and guidance=, lcm-lora's 4 steps at guidance 1
    request = dataclasses.replace(
        request, steps=args.steps or defaults.get("num_inference_steps", request.steps),
        guidance=args.guidance if args.guidance is not None else defaults.get("guidance_scale", request.guidance))
    if args.scheduler:
        schedulers.set_scheduler(pipe, args.scheduler)
    scheduler = schedulers.current_name(pipe)

    # 3. Compiling backends compile on their first call: pay that on a one-step warm-up, reported apart.
    if any(o.applied and recipes.kind(o.step).compiles for o in outcomes):
        first = 1 if edit is None else tasks.min_steps(edit.strength)  # one step run
        warmup = generate.run(pipe, dataclasses.replace(request, steps=first, num_images=1), edit)
        cached = "LoRA-edited models compile again in each process" if loras else "cached for the next process"
        print(f"compile + one-step warm-up: {warmup.seconds:.1f} s (one-time; {cached})")

    # 4. Generate, then write one PNG per image.
    result = generate.run(pipe, request, edit)
    for image, seed, path in zip(result.images, request.seeds(), paths):
        text = generate.parameters_text(request, seed, model=str(spec), random_weights=spec.random_weights,
                                        scheduler=scheduler, recipe=str(recipe), edit=edit, loras=loras)
        print(generate.save_png(image, path, text, overwrite=args.overwrite, renumber=generate.numbered(args.output)))

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    run = tasks.steps_run(request.steps, edit and edit.strength)
    task = f"{edit.task}, {request.steps} steps x strength {edit.strength}: {run} run" if edit else f"{run} steps"
    print(f"{result.summary(run)}; {task}, {width}x{height}, {scheduler}, "
          f"{len(result.images)} image(s), peak RSS {peak:.2f} GiB, recipe {recipe.name}: {recipe}")
    if why_auto:
        print(f"auto: {why_auto}")
    skipped = [str(outcome) for outcome in outcomes if not outcome.applied]
    if skipped:
        print("skipped: " + "; ".join(skipped))
    if spec.random_weights:
        print(f"note: {generate.RANDOM_WEIGHTS_NOTE}; pass --model org/name, a diffusers folder or a .safetensors file")
    return 0


def _edit(args):
    """The --image/--mask/--strength input, read and checked before any model loads; None for text-to-image."""
    if args.image is None:
        if args.mask or args.strength is not None:
            raise UsageError(f"{'--mask' if args.mask else '--strength'} needs --image")
        return None
    data = {}
    for option, path in (("--image", args.image), ("--mask", args.mask)):
        if path is not None:
            try:
                with open(path, "rb") as file:
                    data[option] = file.read(tasks.MAX_INPUT_BYTES + 1)
            except OSError as err:
                raise UsageError(f"{option} {path}: {err.strerror}") from None
    return tasks.edit(data["--image"], data.get("--mask"), args.strength)
