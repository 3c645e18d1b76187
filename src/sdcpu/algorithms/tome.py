"""The `tome=R` step: token merging for Stable Diffusion (ToMe for SD, Bolya & Hoffman, 2023) on diffusers' UNet.

Self-attention at the UNet's finest attention level costs O(tokens^2): 4096 tokens for a 512x512 SD 1.5 image. Before
each of those self-attentions, the fraction R of the tokens most similar to another token is merged into it (averaged),
attention runs on the rest, and each merged token's output is copied back to the tokens it absorbed. Cross-attention
and the MLPs are left alone (ToMe for SD's defaults: merging them costs more quality than it saves time).

Matching is ToMe's bipartite soft matching on a 2x2 grid: one destination token per 2x2 cell, the other three are
sources; each source is paired with its most cosine-similar destination and the R*tokens best pairs are merged, so R is
at most 0.75 (recipes.values.TOME_MAX_RATIO). The destination in each cell is chosen at random (ToMe for SD:
better images than a fixed corner), from a generator seeded by the timestep, so an image is reproducible for its seed.

Why not the `tomesd` package: its 0.1.3 (2023) replaces each transformer block's class by one whose forward is a copy
of diffusers' forward of that year; this module wraps only the self-attention call, which diffusers 0.42 still makes
as `attn1(norm_hidden_states, ...)`. The UNet must run eagerly: a recipe with tome takes no backend step.
"""

import math

import torch
from diffusers import UNet2DConditionModel

from sdcpu import families
from sdcpu.errors import Skip


def apply(pipe, step, cpu) -> str:
    unet = getattr(pipe, families.of(pipe).denoiser.attribute)
    if not isinstance(unet, UNet2DConditionModel):
        raise Skip(f"needs diffusers' eager UNet2DConditionModel, found {type(unet).__name__} "
                   "(a backend step ran first: tome runs without one)")
    ratio = step.value if step.value is not None else 0.5
    level = next((i for i, block in enumerate(unet.down_blocks) if hasattr(block, "attentions")), None)
    if level is None:
        raise Skip("this UNet has no attention blocks")
    latent = {}  # the current call's latent size and timestep, for the attention calls inside it

    def record(module, args, kwargs):
        call = dict(zip(("sample", "timestep"), args), **kwargs)
        latent.update(shape=call["sample"].shape[-2:], timestep=float(torch.as_tensor(call["timestep"]).reshape(-1)[0]))

    unet.register_forward_pre_hook(record, with_kwargs=True)
    finest = (unet.down_blocks[level], unet.up_blocks[len(unet.up_blocks) - 1 - level])
    attentions = [block.attn1 for owner in finest for transformer in owner.attentions
                  for block in transformer.transformer_blocks]
    for attention in attentions:
        attention.forward = MergedSelfAttention(attention.forward, ratio, 2 ** level, latent)
    return (f"{ratio:.0%} of the tokens merged before each of the {len(attentions)} self-attentions at the finest "
            f"attention level (latent / {2 ** level}); cross-attention and MLPs untouched")


class MergedSelfAttention:
    """A self-attention call on merged tokens, unmerged after."""

    def __init__(self, attend, ratio: float, downsample: int, latent: dict):
        self.attend, self.ratio, self.downsample, self.latent = attend, ratio, downsample, latent

    def __call__(self, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        height, width = (math.ceil(side / self.downsample) for side in self.latent["shape"])
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.shape[1] != height * width:
            return self.attend(hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        merge, unmerge = bipartite_matching(hidden_states, height, width, int(hidden_states.shape[1] * self.ratio),
                                            seed=int(self.latent["timestep"]))
        return unmerge(self.attend(merge(hidden_states), None, None, **kwargs))


def bipartite_matching(x: torch.Tensor, height: int, width: int, merged: int, seed: int = 0):
    """(merge, unmerge) for tokens X (batch, height*width, channels): MERGED source tokens averaged into their most
    similar destination (one random destination per 2x2 cell); unmerge copies each result back to every token."""
    batch, tokens, _ = x.shape
    cells_h, cells_w = height // 2, width // 2
    corner = torch.randint(4, (cells_h, cells_w), generator=torch.Generator().manual_seed(seed))
    rows = 2 * torch.arange(cells_h)[:, None] + corner // 2
    cols = 2 * torch.arange(cells_w)[None, :] + corner % 2
    dst_idx = (rows * width + cols).reshape(-1)
    is_dst = torch.zeros(tokens, dtype=torch.bool)
    is_dst[dst_idx] = True
    src_idx = (~is_dst).nonzero().squeeze(1)
    merged = min(merged, len(src_idx))
    with torch.no_grad():
        metric = x / x.norm(dim=-1, keepdim=True)
        similarity, partner = (metric[:, src_idx] @ metric[:, dst_idx].transpose(1, 2)).max(dim=-1)
        order = similarity.argsort(dim=-1, descending=True)
    moving, staying = order[:, :merged], order[:, merged:]
    into = partner.gather(1, moving)

    def pick(t, index):
        return t.gather(1, index[..., None].expand(-1, -1, t.shape[-1]))

    def merge(t):
        src, dst = t[:, src_idx], t[:, dst_idx]
        dst = dst.scatter_reduce(1, into[..., None].expand(-1, -1, t.shape[-1]), pick(src, moving), reduce="mean")
        return torch.cat([pick(src, staying), dst], dim=1)

    def unmerge(t):
        kept, dst = t[:, : staying.shape[1]], t[:, staying.shape[1]:]
        channels = t.shape[-1]
        src = t.new_empty(batch, len(src_idx), channels)
        src.scatter_(1, staying[..., None].expand(-1, -1, channels), kept)
        src.scatter_(1, moving[..., None].expand(-1, -1, channels), pick(dst, into))
        out = t.new_empty(batch, tokens, channels)
        out[:, src_idx], out[:, dst_idx] = src, dst
        return out

    return merge, unmerge
