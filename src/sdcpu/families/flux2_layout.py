"""FLUX.2's transformer under Black Forest Labs' own key names: the file stable-diffusion.cpp and ComfyUI load as the
diffusion model (`flux-2-klein-4b.safetensors`). Those tools read the Qwen3 text encoder and the VAE from files of
their own, which a diffusers folder already holds as they want them (Flux2Klein.separate_files).

The inverse of diffusers' `convert_flux2_transformer_checkpoint_to_diffusers` (its single-file loader): diffusers
splits each fused projection (a double block's q, k and v of each stream; a single block's q, k, v and MLP input are
one `linear1` there and in diffusers alike) and orders the final modulation (scale, shift) where BFL's is
(shift, scale). Tested by the round trip through that loader.
"""

from pathlib import Path

# diffusers name -> BFL name, applied as prefixes (longest first) to every key outside the per-block rules below
RENAMES = {
    "x_embedder.": "img_in.",
    "context_embedder.": "txt_in.",
    "time_guidance_embed.timestep_embedder.linear_1.": "time_in.in_layer.",
    "time_guidance_embed.timestep_embedder.linear_2.": "time_in.out_layer.",
    "time_guidance_embed.guidance_embedder.linear_1.": "guidance_in.in_layer.",
    "time_guidance_embed.guidance_embedder.linear_2.": "guidance_in.out_layer.",
    "double_stream_modulation_img.linear.": "double_stream_modulation_img.lin.",
    "double_stream_modulation_txt.linear.": "double_stream_modulation_txt.lin.",
    "single_stream_modulation.linear.": "single_stream_modulation.lin.",
    "proj_out.": "final_layer.linear.",
}
DOUBLE = {  # within transformer_blocks.N -> within double_blocks.N
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
    "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
    "attn.to_out.0.": "img_attn.proj.",
    "attn.to_add_out.": "txt_attn.proj.",
    "ff.linear_in.": "img_mlp.0.",
    "ff.linear_out.": "img_mlp.2.",
    "ff_context.linear_in.": "txt_mlp.0.",
    "ff_context.linear_out.": "txt_mlp.2.",
}
FUSED = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),  # double_blocks.N.<fused> <- cat of these, dim 0
         "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
SINGLE = {  # within single_transformer_blocks.N -> within single_blocks.N
    "attn.to_qkv_mlp_proj.": "linear1.",
    "attn.to_out.": "linear2.",
    "attn.norm_q.weight": "norm.query_norm.scale",
    "attn.norm_k.weight": "norm.key_norm.scale",
}
FINAL_MODULATION = "norm_out.linear."


def original_state_dict(folder: Path) -> dict:
    """The transformer of the diffusers FOLDER under BFL's names, in the dtype its files hold (bf16 for klein)."""
    from safetensors.torch import load_file

    state = {}
    for path in sorted((Path(folder) / "transformer").glob("*.safetensors")):
        state.update(load_file(path))
    return to_original(state)


def to_original(state: dict) -> dict:
    """STATE (a Flux2Transformer2DModel's state dict, emptied as it goes) keyed as BFL's checkpoint."""
    import torch

    out = {}
    for key in sorted(state):
        if key not in state:  # taken already, as part of a fused projection
            continue
        parts = key.split(".")
        if parts[0] == "transformer_blocks":
            prefix, inner = f"double_blocks.{parts[1]}.", ".".join(parts[2:])
            fused = next((name for name, pieces in FUSED.items() if inner.rsplit(".", 1)[0] in pieces), None)
            if fused is not None:
                kind = inner.rsplit(".", 1)[1]  # weight or bias
                pieces = [state.pop(f"transformer_blocks.{parts[1]}.{piece}.{kind}") for piece in FUSED[fused]]
                out[f"{prefix}{fused}.{kind}"] = torch.cat(pieces)
                continue
            out[prefix + _renamed(inner, DOUBLE)] = state.pop(key)
        elif parts[0] == "single_transformer_blocks":
            out[f"single_blocks.{parts[1]}." + _renamed(".".join(parts[2:]), SINGLE)] = state.pop(key)
        elif key.startswith(FINAL_MODULATION):
            scale, shift = state.pop(key).chunk(2, dim=0)
            out["final_layer.adaLN_modulation.1." + key[len(FINAL_MODULATION):]] = torch.cat([shift, scale])
        else:
            out[_renamed(key, RENAMES)] = state.pop(key)
    return out


def _renamed(name: str, table: dict) -> str:
    """NAME with the longest prefix found in TABLE replaced; refuses a name the table does not know, so a layout
    diffusers changes fails here rather than writing a checkpoint its readers half-load."""
    for old in sorted(table, key=len, reverse=True):
        if name.startswith(old):
            return table[old] + name[len(old):]
    raise KeyError(f"{name}: no BFL name known for this FLUX.2 transformer key")
