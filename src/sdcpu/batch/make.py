"""`sdcpu batch`'s images made: one optimized pipeline, one call per group of same-shape images, each image a PNG in
the output folder and its manifest row. What the single process runs, and each Ray actor of `batch --ray`."""

import dataclasses

from sdcpu import batch
from sdcpu.errors import UsageError
from sdcpu.models import schedulers
from sdcpu.pipeline import generate, outputs
from sdcpu.pipeline.prepare import prepare


class Maker:
    """SPEC's pipeline optimized by RECIPE for CPU (a compiling backend compiles on a one-step warm-up at FIRST's
    shape, a (job, seed): its seconds are `warmup_seconds`, None without one), writing images into FOLDER."""

    def __init__(self, spec, recipe, cpu, folder, first, *, progress: bool = False):
        self.spec, self.recipe, self.folder = spec, recipe, folder
        job, seed = first

        def optimized(pipe):
            pipe.set_progress_bar_config(disable=True)  # one bar: images, not each call's steps
            self.use_scheduler = schedulers.Swapper(pipe).use  # each made once from the recipe's own

        def warmup(defaults):
            self.use_scheduler(job.scheduler)
            return dataclasses.replace(job.request(seed, defaults), steps=1)

        prepared = prepare(spec, recipe, cpu, progress=progress, optimized=optimized, warmup=warmup)
        self.pipe, self.defaults = prepared.pipe, prepared.defaults
        self.warmup_seconds = prepared.warmup and prepared.warmup.seconds

    def shape(self, job):
        return batch.shape(job, self.defaults)

    def rows(self, images, max_batch: int):
        """Make IMAGES (job, seed) in calls of up to MAX_BATCH; yield each image's manifest row once its PNG is written
        (a prompt longer than the text encoder reads, or a failed call: an error row for each of its images, and the
        rest runs)."""
        images, refused = self._read_whole(images)
        yield from refused
        for group in batch.groups(images, max_batch, self.shape):
            requests = [job.request(seed, self.defaults) for job, seed in group]
            try:
                scheduler = self.use_scheduler(group[0][0].scheduler)
                result = generate.run_batch(self.pipe, requests)
            except Exception as err:  # reported in the manifest; a rerun retries it
                for job, seed in group:
                    yield batch.row(job.line, seed, self.recipe, error=f"{type(err).__name__}: {err}")
                continue
            for (job, seed), request, image in zip(group, requests, result.images):
                name = batch.image_name(job.line, seed)
                text = outputs.parameters_text(request, seed, model=str(self.spec), scheduler=scheduler,
                                               random_weights=self.spec.random_weights, recipe=str(self.recipe))
                outputs.save_png(image, self.folder / name, text)
                yield batch.row(job.line, seed, self.recipe, file=name, seconds=round(result.seconds_per_image(), 3))

    def _read_whole(self, images):
        """(the IMAGES whose prompts the text encoder reads whole, an error row for each other one): generate's
        token check, before any call (the pipeline would silently drop the end of the prompt)."""
        kept, refused = [], []
        for job, seed in images:
            try:
                generate.check_tokens(self.pipe.tokenizer, job.request(seed, self.defaults))
                kept.append((job, seed))
            except UsageError as err:
                refused.append(batch.row(job.line, seed, self.recipe, error=str(err)))
        return kept, refused
