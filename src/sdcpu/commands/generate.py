"""`sdcpu generate PROMPT`: images from a prompt, with their timing and self-describing PNGs."""

import logging
import os

from sdcpu import generate, models, schedulers

log = logging.getLogger(__name__)
DEFAULT_MODEL = "random:sd15"


def register(sub):
    p = sub.add_parser("generate", help="generate images from a prompt", description=__doc__)
    p.add_argument("prompt")
    p.add_argument("--model", default=os.environ.get("SDCPU_MODEL", DEFAULT_MODEL),
                   help="random:ARCH | org/name (hub) | FOLDER | FILE.safetensors (default: $SDCPU_MODEL or %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default %(default)s)")
    p.add_argument("--size", default="512x512", help="WIDTHxHEIGHT, multiples of 8 (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed+i (default %(default)s)")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default %(default)s)")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--scheduler", choices=list(schedulers.SCHEDULERS), metavar="NAME",
                   help=f"one of {', '.join(schedulers.SCHEDULERS)} (default: the model's own)")
    p.add_argument("-o", "--output", default="outputs", help="a folder, or a FILE.png (default %(default)s/)")
    p.add_argument("--trust-pickle", action="store_true", help="allow .ckpt/.bin pickle checkpoints (they can run code)")
    p.set_defaults(func=run)


def run(args) -> int:
    # 1. Check every input before the (slow) model load, so a typo costs nothing.
    width, height = generate.parse_size(args.size)
    request = generate.Request(
        prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps, width=width, height=height,
        seed=args.seed, guidance=args.guidance, num_images=args.num_images,
    ).validate()
    spec = models.parse_spec(args.model, trust_pickle=args.trust_pickle)
    paths = generate.output_paths(args.output, request.seeds())

    # 2. Load the model and set its scheduler.
    pipe = models.load_pipeline(spec, progress=True)
    if args.scheduler:
        schedulers.set_scheduler(pipe, args.scheduler)
    scheduler = schedulers.current_name(pipe)

    # 3. Generate, then write one PNG per image.
    result = generate.run(pipe, request)
    for image, seed, path in zip(result.images, request.seeds(), paths):
        text = generate.parameters_text(request, seed, model=str(spec), random_weights=spec.random_weights,
                                        scheduler=scheduler, recipe="baseline")
        generate.save_png(image, path, text)
        print(path)

    print(f"{result.summary(request.steps)}; {request.steps} steps, {width}x{height}, {scheduler}, "
          f"{len(result.images)} image(s)")
    if spec.random_weights:
        print(f"note: {generate.RANDOM_WEIGHTS_NOTE}; pass --model org/name, a diffusers folder or a .safetensors file")
    return 0
