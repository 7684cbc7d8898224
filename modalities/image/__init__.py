"""Image modality: the shapes world, the built-in model, and diffusers pipelines."""
