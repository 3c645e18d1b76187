"""`sdcpu generate PROMPT`: images from a prompt (and from an image: img2img, inpainting with a mask), with their
timing and self-describing PNGs."""

from dataclasses import replace

from sdcpu import families, models
from sdcpu.algorithms import fbcache
from sdcpu.commands.options import add_model, add_recipe, finite, resolve_recipe
from sdcpu.errors import Skip, UsageError
from sdcpu.families import sd
from sdcpu.models import schedulers
from sdcpu.models.loras import parse
from sdcpu.pipeline import control, generate, hires, lora, outputs, tasks
from sdcpu.pipeline.generate import DEFAULTS
from sdcpu.pipeline.prepare import prepare
from sdcpu.recipes import relaunch
from sdcpu.system import children, hardware


def register(sub):
    p = sub.add_parser("generate", help="generate images from a prompt", description=__doc__)
    p.add_argument("prompt")
    add_model(p)
    add_recipe(p)
    p.add_argument("--steps", type=int, help=f"denoising steps (default: the recipe's steps=, else {DEFAULTS.steps})")
    p.add_argument("--size", help=f"WIDTHxHEIGHT, multiples of 8 (default: the model's, {DEFAULTS.size} for SD, "
                                  "1024x1024 for SDXL, 512x512 for SDXL-Turbo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed+i (default %(default)s)")
    p.add_argument("--guidance", type=finite,
                   help=f"classifier-free guidance scale (default: the recipe's guidance=, else {DEFAULTS.guidance})")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--scheduler", choices=list(schedulers.SCHEDULERS), metavar="NAME",
                   help=f"one of {', '.join(schedulers.SCHEDULERS)} (default: the model's own)")
    p.add_argument("--image", metavar="IN.png", action="append",
                   help="start from this image: img2img (with --mask: inpainting); it is resized to --size. FLUX.2 "
                        "klein edits by reference instead: repeat for up to 4 images, each kept at its own size, the "
                        "output at the first one's (fitted to the model's side, multiples of 16) unless --size")
    p.add_argument("--mask", metavar="MASK.png", help="inpainting: white repaints, black keeps (the image's size)")
    p.add_argument("--strength", type=finite, help="img2img/inpainting: how much of the schedule repaints the image, "
                                                  "(0, 1] (default 0.75; 1 for inpainting)")
    p.add_argument("--hires", type=finite, metavar="SCALE",
                   help="hires fix (A1111's): a second pass at SCALE (1-4) times --size, from the first image "
                        "upscaled and denoised again at --hires-strength; text-to-image, SD and SDXL")
    p.add_argument("--hires-upscaler", default="Latent", choices=hires.UPSCALERS, metavar="NAME",
                   help=f"one of {', '.join(hires.UPSCALERS)} (default %(default)s: the latents interpolated)")
    p.add_argument("--hires-steps", type=int, default=0, help="second-pass steps (default: --steps)")
    p.add_argument("--hires-strength", type=finite, default=0.7, help="second-pass strength, (0, 1] (default 0.7)")
    p.add_argument("--control", metavar="MAP.png",
                   help="ControlNet: steer the image by this control image (canny: any image, its edges found here; "
                        "depth: a depth map, white near); SD and SDXL, on recipes that keep the eager UNet")
    p.add_argument("--control-type", default="canny", choices=control.KINDS, help="(default %(default)s)")
    p.add_argument("--control-scale", type=finite, default=1.0, help="how strongly it steers, 0-2 (default 1)")
    p.add_argument("--control-as-is", action="store_true",
                   help="canny: the control image is an edge map already (no edge detection)")
    p.add_argument("--controlnet", metavar="HUB_ID|FOLDER",
                   help="the ControlNet (default: the model family's for --control-type; a random: model gets a "
                        "random-weight one)")
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
    spec = models.parse_spec(args.model, trust_pickle=args.trust_pickle)
    found = models.known(spec)  # the model's family and defaults where known before loading
    known = found[1] if found else DEFAULTS
    edit = _edit(args, found and found[0])
    width, height = generate.parse_size(args.size) if args.size else _size(known, edit, found and found[0])
    loras = tuple(parse(text, trust_pickle=args.trust_pickle) for text in args.lora)
    # auto: a tuned profile for this model and size, else the class rules (said at the end)
    recipe, why_auto = resolve_recipe(args, cpu, width, height)
    asked = generate.Request(prompt=args.prompt, negative_prompt=args.negative_prompt, width=width, height=height,
                             seed=args.seed, num_images=args.num_images)
    request = _with_defaults(asked, args, known, (width, height)).validate()
    if found:
        generate.check_size(width, height, multiple=found[0].size_multiple)  # FLUX.2's 16, before loading
    tasks.check_steps(request.steps, edit and edit.strength)
    if args.hires:
        _hires(args, request, found and found[0], edit)  # checked before loading, again once the model is known
    steer = _control(args, found and found[0], recipe)
    paths = outputs.output_paths(args.output, request.seeds(), overwrite=args.overwrite)
    relaunch.under_plan(recipe, cpu, why=why_auto)

    # 2. Load the model, optimize it, add the LoRAs, set its scheduler; compiling backends compile on their first
    # call: pay that on a one-step warm-up (one step run), reported apart.
    def optimized(pipe):
        if loras:
            try:
                print(f"lora: {lora.use(pipe, loras, fuse=True)}")  # one set per process: fused, no per-step cost
            except Skip as skip:
                raise UsageError(f"--lora cannot apply on recipe {recipe}: {skip}") from None
        if args.scheduler:
            schedulers.set_scheduler(pipe, args.scheduler)

    def warmup(defaults):
        first = 1 if edit is None else tasks.min_steps(edit.strength)  # one step run
        size = (width, height) if edit is not None and edit.by_reference else None
        return replace(_with_defaults(asked, args, defaults, size), steps=first, num_images=1)

    prepared = prepare(spec, recipe, cpu, progress=True, edit=edit, warmup=warmup, optimized=optimized,
                       loaded=lambda pipe: generate.check_tokens(pipe.tokenizer, request))
    pipe = prepared.pipe
    family = families.of(pipe)
    edit = tasks.for_family(edit, family)  # settled here where the family was not known before loading
    # the recipe's steps= and guidance= (lcm-lora's 4 at 1), the loaded model's size where --size was left out
    request = _with_defaults(asked, args, prepared.defaults, _size(prepared.defaults, edit, family)).validate()
    width, height = request.width, request.height
    scheduler = schedulers.current_name(pipe)
    if prepared.warmup:
        cached = "LoRA-edited models compile again in each process" if loras else "cached for the next process"
        print(f"compile + one-step warm-up: {prepared.warmup.seconds:.1f} s (one-time; {cached})")

    # 3. Generate, then write one PNG per image.
    second = args.hires and _hires(args, request, family, edit)  # the loaded model's size and family
    result = generate.run(pipe, request, edit, hires=second, control=steer)
    for image, seed, path in zip(result.images, request.seeds(), paths):
        text = outputs.parameters_text(request, seed, model=str(spec), random_weights=spec.random_weights,
                                       scheduler=scheduler, recipe=str(recipe), edit=edit, loras=loras, hires=second,
                                       control=steer)
        print(outputs.save_png(image, path, text, overwrite=args.overwrite, renumber=outputs.numbered(args.output)))

    peak = children.peak_rss_gib()
    again = second.steps_run(request.steps) if second else 0
    run = tasks.steps_run(request.steps, edit and edit.strength) + again
    hires_part = f" (hires fix: {again} at {second.width}x{second.height})" if second else ""
    task = (f"{run} steps{hires_part}" if edit is None else f"reference edit of {1 + len(edit.references)} image(s), "
            f"{run} steps" if edit.by_reference else f"{edit.task}, {request.steps} steps x strength {edit.strength}: "
            f"{run} run")
    print(f"{result.summary(run)}; {task}, {width}x{height}, {scheduler}, "
          f"{len(result.images)} image(s), peak RSS {peak:.2f} GiB, recipe {recipe.name}: {recipe}")
    if why_auto:
        print(f"auto: {why_auto}")
    if prepared.skipped:
        print("skipped: " + "; ".join(map(str, prepared.skipped)))
    cached = fbcache.tally(pipe)
    if cached:
        print(f"fbcache: {cached}")
    if spec.random_weights:
        print(f"note: {generate.RANDOM_WEIGHTS_NOTE}; pass --model org/name, a diffusers folder or a .safetensors file")
    return 0


def _hires(args, request, family, edit):
    """--hires's second pass for REQUEST, checked (FAMILY: the model's where known, else SD's), or a UsageError."""
    family = family or sd.FAMILY
    second = hires.planned(request.width, request.height, args.hires, 0, 0, family.size_multiple,
                           upscaler=args.hires_upscaler, steps=args.hires_steps, strength=args.hires_strength)
    generate.check_hires(second, family, edit, request.steps)
    return second


def _control(args, family, recipe):
    """The --control input, read and checked before any model loads (FAMILY: the model's where known, else checked
    once it has loaded); None without one."""
    if args.control is None:
        if args.controlnet or args.control_as_is:
            raise UsageError(f"{'--controlnet' if args.controlnet else '--control-as-is'} needs --control")
        return None
    if reason := control.refusal(family or sd.FAMILY, recipe):
        raise UsageError(f"--control: {reason}")
    return control.control(_read("--control", args.control), args.control_type, args.control_scale,
                           preprocess=not args.control_as_is, source=args.controlnet)


def _size(defaults, edit, family) -> tuple[int, int]:
    """The size left out: a reference edit's first image's, fitted to the model's side (diffusers' default), else
    the model's DEFAULTS'."""
    side = max(defaults.width, defaults.height)
    if edit is not None and edit.by_reference:
        return generate.fitted_size(*edit.image.size, side, family.size_multiple)
    return defaults.width, defaults.height


def _with_defaults(request, args, defaults, size=None):
    """REQUEST with --steps, --guidance and --size where given, else DEFAULTS' (SIZE where given)."""
    width, height = size or (defaults.width, defaults.height)
    size = {} if args.size else {"width": width, "height": height}
    return replace(request, steps=defaults.steps if args.steps is None else args.steps,
                   guidance=defaults.guidance if args.guidance is None else args.guidance, **size)


def _edit(args, family):
    """The --image/--mask/--strength input, read and checked before any model loads (settled for FAMILY where it is
    known then); None for text-to-image."""
    if not args.image:
        if args.mask or args.strength is not None:
            raise UsageError(f"{'--mask' if args.mask else '--strength'} needs --image")
        return None
    read = [_read("--image", path) for path in args.image]
    mask = None if args.mask is None else _read("--mask", args.mask)
    edit = tasks.edit(read[0], mask, args.strength, references=tuple(read[1:]))
    return tasks.for_family(edit, family) if family else edit


def _read(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read(tasks.MAX_INPUT_BYTES + 1)
    except OSError as err:
        raise UsageError(f"{option} {path}: {err.strerror}") from None
