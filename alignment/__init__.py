"""alignment: preference losses, the LoRA trainer and adapter export."""
import logging

# bitsandbytes (for the 8-bit optimizer) warns on import that its optional 4-bit CPU kernels are
# missing; Palate uses no 4-bit kernels, so the warning is only noise on every command.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
