"""Stable Diffusion's original checkpoint layout: the names the CompVis repository gave its modules, which A1111,
ComfyUI and stable-diffusion.cpp read from one `.safetensors`: `model.diffusion_model.*` (UNet),
`first_stage_model.*` (VAE) and `cond_stage_model.transformer.text_model.*` (SD 1.x's CLIP ViT-L text encoder).

The UNet's and VAE's key maps are derived from their configs (number of blocks, layers per block, which blocks
attend), so random:tiny converts like SD 1.5 does; every weight must find its place, or the conversion stops with its
name. diffusers' `scripts/convert_diffusers_to_original_stable_diffusion.py` is the reference, its SD 1.5 loop bounds
made config-driven.
"""

from pathlib import Path

UNET_TOP = {  # diffusers module -> original module, outside the down/mid/up blocks
    "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
}
UNET_RESNET = {  # diffusers ResnetBlock2D's modules -> ldm's ResBlock's
    "norm1.": "in_layers.0.", "conv1.": "in_layers.2.", "norm2.": "out_layers.0.", "conv2.": "out_layers.3.",
    "time_emb_proj.": "emb_layers.1.", "conv_shortcut.": "skip_connection.",
}
VAE_TOP = {
    "encoder.conv_in.": "encoder.conv_in.", "encoder.conv_out.": "encoder.conv_out.",
    "encoder.conv_norm_out.": "encoder.norm_out.", "decoder.conv_in.": "decoder.conv_in.",
    "decoder.conv_out.": "decoder.conv_out.", "decoder.conv_norm_out.": "decoder.norm_out.",
    "quant_conv.": "quant_conv.", "post_quant_conv.": "post_quant_conv.",
}
VAE_RESNET = {"norm1.": "norm1.", "conv1.": "conv1.", "norm2.": "norm2.", "conv2.": "conv2.",
              "conv_shortcut.": "nin_shortcut."}
VAE_ATTENTION = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}


def original_state_dict(folder: Path) -> dict:
    """FOLDER's UNet, VAE and text encoder weights under their original-layout names."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32)
    if text_encoder.config.hidden_act != "quick_gelu":  # OpenAI's CLIP; SD 2.x's OpenCLIP uses gelu
        raise ValueError(f"{folder}: its text encoder is not SD 1.x's CLIP ViT-L (hidden_act "
                         f"{text_encoder.config.hidden_act}); SD 2.x's OpenCLIP layout is not written yet")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", dtype=torch.float32)
    out = {}
    for prefix, names, tensors in (
        ("model.diffusion_model.", unet_names(unet.config), unet.state_dict()),
        ("first_stage_model.", vae_names(vae.config), vae.state_dict()),
    ):
        out.update({prefix + rename(key, names): tensor for key, tensor in tensors.items()})
    out.update(vae_attention_as_conv(out))
    for key, tensor in text_encoder.state_dict().items():  # transformers >= 5.6 drops the `text_model.` wrapper
        out["cond_stage_model.transformer." + (key if key.startswith("text_model.") else f"text_model.{key}")] = tensor
    return {key: tensor.contiguous() for key, tensor in out.items()}


def rename(key: str, names: dict) -> str:
    """KEY under the original name of its module (NAMES maps module prefixes); an unknown module is an error."""
    for prefix, original in names.items():
        if key.startswith(prefix):
            return original + key[len(prefix):]
    raise ValueError(f"weight {key!r} has no place in the original layout (not an SD UNet/VAE this converter knows)")


def unet_names(config) -> dict:
    """Module prefixes of a UNet2DConditionModel -> its ldm `openaimodel.UNetModel` names, from CONFIG.

    ldm numbers its input blocks one sequence (conv_in, then each level's ResBlocks, each with its transformer at .1,
    then the level's downsampler) and its output blocks another (layers_per_block + 1 per level, the upsampler after
    the level's last ResBlock and transformer)."""
    if not isinstance(config.layers_per_block, int):
        raise ValueError(f"layers_per_block {config.layers_per_block!r} differs per block; ldm's layout has one count")
    layers, levels = config.layers_per_block, len(config.down_block_types)
    names = dict(UNET_TOP)

    def level_blocks(diffusers, original, first, count):  # ResBlock j of a level at .0, its transformer at .1
        names.update({f"{diffusers}.resnets.{j}.{a}": f"{original}.{first + j}.0.{b}" for j in range(count)
                      for a, b in UNET_RESNET.items()})
        names.update({f"{diffusers}.attentions.{j}.": f"{original}.{first + j}.1." for j in range(count)})

    for level in range(levels):
        first = 1 + level * (layers + 1)  # each level: its ResBlocks, then a downsampler (none after the last)
        level_blocks(f"down_blocks.{level}", "input_blocks", first, layers)
        names[f"down_blocks.{level}.downsamplers.0.conv."] = f"input_blocks.{first + layers}.0.op."
        up_first = level * (layers + 1)
        level_blocks(f"up_blocks.{level}", "output_blocks", up_first, layers + 1)
        attends = "CrossAttn" in config.up_block_types[level]
        names[f"up_blocks.{level}.upsamplers.0."] = f"output_blocks.{up_first + layers}.{2 if attends else 1}."
    names.update({f"mid_block.resnets.{j}.{a}": f"middle_block.{2 * j}.{b}" for j in (0, 1)
                  for a, b in UNET_RESNET.items()})
    names["mid_block.attentions.0."] = "middle_block.1."
    return names


def vae_names(config) -> dict:
    """Module prefixes of an AutoencoderKL -> ldm's `Encoder`/`Decoder` names, from CONFIG (ldm numbers the decoder's
    levels from the lowest resolution up, diffusers from the first one run)."""
    levels, layers = len(config.down_block_types), config.layers_per_block
    names = dict(VAE_TOP)

    def resnets(diffusers, original, count):
        names.update({f"{diffusers}.resnets.{j}.{a}": f"{original}.block.{j}.{b}" for j in range(count)
                      for a, b in VAE_RESNET.items()})

    for level in range(levels):
        resnets(f"encoder.down_blocks.{level}", f"encoder.down.{level}", layers)
        names[f"encoder.down_blocks.{level}.downsamplers.0."] = f"encoder.down.{level}.downsample."
        resnets(f"decoder.up_blocks.{level}", f"decoder.up.{levels - 1 - level}", layers + 1)
        names[f"decoder.up_blocks.{level}.upsamplers.0."] = f"decoder.up.{levels - 1 - level}.upsample."
    for part in ("encoder", "decoder"):
        names.update({f"{part}.mid_block.resnets.{j}.{a}": f"{part}.mid.block_{j + 1}.{b}" for j in (0, 1)
                      for a, b in VAE_RESNET.items()})
        names.update({f"{part}.mid_block.attentions.0.{a}": f"{part}.mid.attn_1.{b}" for a, b in VAE_ATTENTION.items()})
    return names


def vae_attention_as_conv(tensors: dict) -> dict:
    """The VAE's mid-block attention projections as 1x1 convolutions: ldm's AttnBlock computes q, k, v and proj_out
    with Conv2d(C, C, 1), diffusers with Linear, so their (C, C) weights take the shape (C, C, 1, 1)."""
    return {key: tensor.reshape(*tensor.shape, 1, 1) for key, tensor in tensors.items()
            if ".mid.attn_1." in key and key.rsplit(".", 2)[-2] in ("q", "k", "v", "proj_out")
            and key.endswith(".weight")}
