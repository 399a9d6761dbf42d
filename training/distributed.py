"""Data-parallel training over ``torch.distributed`` (gloo on CPU, nccl on GPU).

Started by ``torchrun``, each process trains on its own shard of every epoch and the
gradients of each optimizer are averaged over all processes right before that optimizer
steps, which is the synchronisation DistributedDataParallel performs. The families take several
backward passes over one forward graph per batch (Algorithm 1 of the VAE-GAN has three
losses), which DDP's reducer does not allow, so the all-reduce is attached to each optimizer
instead of to the module. Parameters start identical (broadcast from rank 0) and stay so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from genlab.devices import resolve_device


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(preference: str) -> DistEnv:
    """Join the process group when launched by torchrun; otherwise a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(preference, local_rank)
    if world == 1:
        return DistEnv(0, 1, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(dist.get_rank(), dist.get_world_size(), device)


def shutdown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def average_gradients_before_step(optimizer: torch.optim.Optimizer, world_size: int) -> None:
    """Make ``optimizer.step()`` first average its parameters' gradients over all ranks."""

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])  # one all-reduce per optimizer step
        dist.all_reduce(flat)
        flat.div_(world_size)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    optimizer.register_step_pre_hook(hook)


def share_training(model: nn.Module, optimizers: dict[str, torch.optim.Optimizer], env: DistEnv) -> None:
    """Start every rank from rank 0's weights, and make each optimizer step on the gradients averaged over ranks."""
    if not env.enabled:
        return
    broadcast_module(model)
    for optimizer in optimizers.values():
        average_gradients_before_step(optimizer, env.world_size)


def check_same_weights(env: DistEnv, model: nn.Module) -> None:
    """Data parallelism keeps the weights identical on every rank; anything else means gradient averaging broke."""
    if not env.enabled:
        return
    sums = gather_objects(env, sum(float(p.detach().double().sum()) for p in model.parameters()))
    if max(sums) - min(sums) > 1e-6 * max(1.0, abs(sums[0])):
        raise RuntimeError(f"ranks' weights diverged (parameter sums {sums}); gradient averaging is broken")


def gather_objects(env: DistEnv, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a list of one without a process group)."""
    if not env.enabled:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()
