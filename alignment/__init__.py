"""alignment: preference losses (and, next, the LoRA trainer and adapter export)."""
