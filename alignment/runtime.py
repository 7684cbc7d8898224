"""Where a run computes: its processes (one, or several under ``accelerate launch``), precision and
optimizer."""
from __future__ import annotations

import importlib.util

import torch

from .config import TrainConfig
from .errors import TrainingError


def resolve_precision(setting: str, device: torch.device) -> str:
    if setting == "auto":
        if device.type != "cuda":
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return setting


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig, device: torch.device):
    name = cfg.optimizer
    if name == "auto":
        name = "adamw8bit" if device.type == "cuda" and importlib.util.find_spec("bitsandbytes") else "adamw"
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise TrainingError("optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes), "
                                "or use optimizer adamw") from None
        return bnb.optim.AdamW8bit(params, lr=cfg.effective_lr, weight_decay=0.0), name
    return torch.optim.AdamW(params, lr=cfg.effective_lr, weight_decay=0.0), "adamw"


class Processes:
    """This process's place among ``accelerate launch``'s (one process: rank 0 of 1)."""

    def __init__(self, cpu: bool):
        from accelerate import PartialState

        self.state = PartialState(cpu=cpu)
        self.world = self.state.num_processes
        self.rank = self.state.process_index
        self.main = self.state.is_main_process

    def mean_(self, tensors: list[torch.Tensor]) -> None:
        """Average tensors across processes, in place."""
        if self.world == 1 or not tensors:
            return
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def any(self, flag: bool) -> bool:
        """True when the flag is set in any process (so all stop together)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.state.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        from accelerate import PartialState

        PartialState._reset_state()  # a singleton: the next train() in this process decides afresh
