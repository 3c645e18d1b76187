"""Random LoRAs for the tests (test_lora, test_serve_lora): the same LoRA in kohya's and diffusers' peft layouts."""

import torch
from safetensors.torch import save_file

RANK = 4


def write_loras(pipe, folder, seed) -> tuple[str, str]:
    """One random LoRA on the UNet's and the text encoder's attention projections, written twice: kohya's layout
    (lora_unet_/lora_te_ keys, alpha = rank/2) and diffusers' peft layout (B pre-scaled by that 1/2)."""
    generator = torch.Generator().manual_seed(seed)
    kohya, peft = {}, {}
    for model, kohya_prefix, peft_prefix in ((pipe.unet, "lora_unet_", "unet."),
                                             (pipe.text_encoder, "lora_te_text_model_", "text_encoder.text_model.")):
        for name, module in model.named_modules():
            if name.endswith(("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj")):
                down = 0.1 * torch.randn(RANK, module.in_features, generator=generator)
                up = 0.1 * torch.randn(module.out_features, RANK, generator=generator)
                key = kohya_prefix + name.replace(".", "_")
                kohya |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                          f"{key}.alpha": torch.tensor(RANK / 2)}
                peft |= {f"{peft_prefix}{name}.lora_A.weight": down, f"{peft_prefix}{name}.lora_B.weight": up / 2}
    paths = folder / f"kohya-{seed}.safetensors", folder / f"peft-{seed}.safetensors"
    save_file(kohya, paths[0])
    save_file(peft, paths[1])
    return str(paths[0]), str(paths[1])
