"""`sdcpu batch`'s images made: one optimized pipeline, one call per group of same-shape images, each image a PNG in
the output folder and its manifest row. What the single process runs, and each Ray actor of `batch --ray`."""

import dataclasses

from sdcpu import batch, generate, models, recipes, schedulers, steps, steps_base


class Maker:
    """SPEC's pipeline optimized by RECIPE for CPU (a compiling backend compiles on a one-step warm-up at FIRST's
    shape, a (job, seed)), writing images into FOLDER."""

    def __init__(self, spec, recipe, cpu, folder, first, *, progress: bool = False):
        self.spec, self.recipe, self.folder = spec, recipe, folder
        self.pipe = models.load_pipeline(spec, progress=progress)
        _, outcomes = steps.optimize(self.pipe, recipe, cpu)
        self.pipe.set_progress_bar_config(disable=True)  # one bar: images, not each call's steps
        self.call_defaults = steps_base.defaults(self.pipe)
        self.use_scheduler = schedulers.Swapper(self.pipe).use  # each made once from the recipe's own
        self.warmup_seconds = None
        if any(o.applied and recipes.kind(o.step).compiles for o in outcomes):
            job, seed = first
            self.use_scheduler(job.scheduler)
            request = dataclasses.replace(job.request(seed, self.call_defaults), steps=1)
            self.warmup_seconds = generate.run(self.pipe, request).seconds

    def shape(self, job):
        return batch.shape(job, self.call_defaults)

    def rows(self, images, max_batch: int):
        """Make IMAGES (job, seed) in calls of up to MAX_BATCH; yield each image's manifest row once its PNG is written
        (a failed call: an error row for each of its images, and the rest runs)."""
        for group in batch.groups(images, max_batch, self.shape):
            requests = [job.request(seed, self.call_defaults) for job, seed in group]
            try:
                scheduler = self.use_scheduler(group[0][0].scheduler)
                result = generate.run_batch(self.pipe, requests)
            except Exception as err:  # reported in the manifest; a rerun retries it
                for job, seed in group:
                    yield batch.row(job.line, seed, self.recipe, error=f"{type(err).__name__}: {err}")
                continue
            for (job, seed), request, image in zip(group, requests, result.images):
                name = batch.image_name(job.line, seed)
                text = generate.parameters_text(request, seed, model=str(self.spec), scheduler=scheduler,
                                                random_weights=self.spec.random_weights, recipe=str(self.recipe))
                generate.save_png(image, self.folder / name, text)
                yield batch.row(job.line, seed, self.recipe, file=name, seconds=round(result.seconds_per_image(), 3))
