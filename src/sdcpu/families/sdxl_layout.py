"""SDXL's original checkpoint layout (Stability's generative-models, `sgm`): the one `.safetensors` A1111, ComfyUI and
stable-diffusion.cpp read. `model.diffusion_model.*` is the UNet in ldm's names (SD's, sdcpu.families.sd_layout, plus
`label_emb.0.0/0.2`: the added text_time embedding), `first_stage_model.*` the VAE (SD's names),
`conditioner.embedders.0.transformer.text_model.*` CLIP ViT-L in transformers' names, and
`conditioner.embedders.1.model.*` OpenCLIP ViT-bigG in OpenCLIP's own: `token_embedding.weight`,
`positional_embedding`, `transformer.resblocks.N.{ln_1, attn.in_proj_weight/bias (q, k, v fused), attn.out_proj,
ln_2, mlp.c_fc, mlp.c_proj}`, `ln_final`, and `text_projection` applied as x @ P (the transpose of transformers'
Linear weight).

This is diffusers' own single-file conversion (loaders/single_file_utils.py: convert_ldm_unet_checkpoint,
convert_ldm_clip_checkpoint, convert_open_clip_checkpoint with DIFFUSERS_TO_LDM_MAPPING["openclip"]) run backwards;
tests/test_sdxl.py writes random:tiny-sdxl this way and loads it back through diffusers' from_single_file.
"""

from pathlib import Path

from sdcpu.families import sd_layout

UNET = "model.diffusion_model."
CLIP_L = "conditioner.embedders.0.transformer."
BIG_G = "conditioner.embedders.1.model."
ADDED = {"add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2."}
OPENCLIP_TOP = {  # transformers' CLIPTextModelWithProjection -> OpenCLIP's names (diffusers' "openclip" "layers")
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
OPENCLIP_LAYER = {  # within one encoder layer (diffusers' "openclip" "transformer", but q/k/v: fused below)
    "layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.", "mlp.fc1.": "mlp.c_fc.", "mlp.fc2.": "mlp.c_proj.",
    "self_attn.out_proj.": "attn.out_proj.",
}


def original_state_dict(folder: Path) -> dict:
    """FOLDER's UNet, VAE and both text encoders under SDXL's original names."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", dtype=torch.float32)
    clip_l = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32)
    big_g = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2", dtype=torch.float32)
    names = {**ADDED, **sd_layout.unet_names(unet.config)}
    out = {UNET + sd_layout.rename(key, names): tensor for key, tensor in unet.state_dict().items()}
    vae_names = sd_layout.vae_names(vae.config)
    out |= {"first_stage_model." + sd_layout.rename(key, vae_names): tensor for key, tensor in vae.state_dict().items()}
    out.update(sd_layout.vae_attention_as_conv(out))
    for key, tensor in clip_l.state_dict().items():  # transformers >= 5.6 drops the `text_model.` wrapper
        out[CLIP_L + (key if key.startswith("text_model.") else f"text_model.{key}")] = tensor
    out |= {BIG_G + key: tensor for key, tensor in open_clip(big_g.state_dict(), big_g.config).items()}
    return {key: tensor.contiguous() for key, tensor in out.items()}


def open_clip(tensors: dict, config) -> dict:
    """A CLIPTextModelWithProjection's TENSORS under OpenCLIP's names: each layer's q, k and v projections fused into
    in_proj (in that order), the projection transposed; a weight with no OpenCLIP place is an error."""
    import torch

    tensors = {key if key.startswith(("text_model.", "text_projection")) else f"text_model.{key}": tensor
               for key, tensor in tensors.items()}
    out = {"text_projection": tensors.pop("text_projection.weight").T}
    out |= {original: tensors.pop(key) for key, original in OPENCLIP_TOP.items()}
    for layer in range(config.num_hidden_layers):
        ours, theirs = f"text_model.encoder.layers.{layer}.", f"transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            out[f"{theirs}attn.in_proj_{kind}"] = torch.cat(
                [tensors.pop(f"{ours}self_attn.{part}_proj.{kind}") for part in "qkv"])
            out |= {f"{theirs}{original}{kind}": tensors.pop(f"{ours}{name}{kind}")
                    for name, original in OPENCLIP_LAYER.items()}
    left = sorted(key for key in tensors if not key.endswith("position_ids"))
    if left:
        raise ValueError(f"text_encoder_2 weights with no place in OpenCLIP's layout: {', '.join(left[:5])}")
    return out


def arch_of(checkpoint, archs) -> str | None:
    """The first of ARCHS (random:NAME -> Arch) whose networks have the shapes of original-layout CHECKPOINT's: its
    UNet's input convolution and added embedding, both text encoders' widths and bigG's depth. None where the file is
    not an SDXL one (no bigG encoder) or matches none: SDXL and SDXL-Turbo share their networks, so a Turbo file reads
    as base, as diffusers reads it."""
    if BIG_G + "text_projection" not in checkpoint:
        return None

    def shape(key):
        tensor = checkpoint[key] if key in checkpoint else None
        return None if tensor is None else tuple(tensor.shape)

    conv_in = shape(UNET + "input_blocks.0.0.weight")
    added = shape(UNET + "label_emb.0.0.weight")
    width_l = shape(CLIP_L + "text_model.embeddings.token_embedding.weight")
    width_g = shape(BIG_G + "token_embedding.weight")
    for name, arch in archs.items():
        unet, te, te2 = (arch.components[part] for part in ("unet", "text_encoder", "text_encoder_2"))
        depth = te2["num_hidden_layers"]
        if (conv_in and conv_in[:2] == (unet["block_out_channels"][0], unet.get("in_channels", 4))
                and added and added[1] == unet["projection_class_embeddings_input_dim"]
                and width_l and width_l[1] == te["hidden_size"] and width_g and width_g[1] == te2["hidden_size"]
                and f"{BIG_G}transformer.resblocks.{depth - 1}.ln_1.weight" in checkpoint
                and f"{BIG_G}transformer.resblocks.{depth}.ln_1.weight" not in checkpoint):
            return name
    return None
