"""Image modality: the shapes world, the built-in model, and text-to-image diffusers pipelines.

``SPEC`` is what the rest of Palate knows about images (imported without torch); the model code is
``modalities.image.adapter.ImageAdapter``.
"""
from ..spec import ModalitySpec, Reward, Setting

SPEC = ModalitySpec(
    name="image",
    adapter="modalities.image.adapter:ImageAdapter",
    label="Images",
    media="image/",
    display="image",
    score_kinds=("diffusion", "flow"),
    export_formats=("diffusers", "peft", "kohya"),
    default_model="shapes-diffusion",
    negative_prompt=True,
    preload=True,
    prompt_placeholder="two small red circles on a blue background",
    settings=(
        Setting("steps", int, "denoising steps (model default when left out)", min=1, max=200),
        Setting("guidance", float, "classifier-free guidance scale", min=0.0, max=30.0),
        Setting("width", int, "image width in pixels (a multiple of the model's size step)", min=1, max=4096),
        Setting("height", int, "image height in pixels", min=1, max=4096),
        Setting("scheduler", str, "sampler: dpm++, ddim, euler, euler-a, unipc, pndm (UNet models); flow-euler, "
                "flow-heun (flow models)"),
    ),
    train_options=(
        Setting("flow_t", str, "flow models (SD3, FLUX, Qwen-Image): how training times are drawn -- logit-normal "
                "(default, as their own trainers do), shifted (the scheduler's shifted density) or uniform",
                choices=("logit-normal", "shifted", "uniform")),
    ),
    variations="modalities.image.shapes:variations",
    capabilities=frozenset({"stochastic-step"}),  # every image family but Qwen-Image (refused when SPO starts)
    rewards=(
        Reward("shapes-judge", "the shapes world's judge: share of the prompt's attributes in the image",
               "modalities.image.rewards:adherence", dimension="prompt"),
        Reward("taste-saturated", "a simulated user who likes vivid, saturated colours",
               "modalities.image.rewards:saturated"),
        Reward("taste-centered", "a simulated user who likes the shapes at the centre",
               "modalities.image.rewards:centered"),
        Reward("taste-large", "a simulated user who likes big shapes", "modalities.image.rewards:large"),
        Reward("taste-clean", "a simulated user who likes flat, noise-free backgrounds",
               "modalities.image.rewards:clean"),
        Reward("taste-muted", "a simulated user who likes soft, muted colours (the opposite of taste-saturated)",
               "modalities.image.rewards:muted"),
        Reward("taste-small", "a simulated user who likes small shapes (the opposite of taste-large)",
               "modalities.image.rewards:small"),
    ),
)
