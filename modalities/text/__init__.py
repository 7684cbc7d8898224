"""Text modality: any Hugging Face causal language model (reasoning answers to prompts)."""
