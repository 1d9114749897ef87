"""Aggregates across the processes of ``torch.distributed``, when there are several.

Every dataset aggregate in the package is a sum (of relevance, of counts, of
examples), so one rank streaming its shard and an all-reduce of the sums gives
exactly the one-process result. Without an initialised process group (or with one
process) these are no-ops, so single-process code pays nothing.
"""

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """Whether an initialised process group has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all ranks, in place, and return it.

    NCCL needs the tensor on the rank's GPU and gloo on the CPU; the sum is taken
    on the device the backend wants and copied back, so callers keep their device.
    """
    if not is_distributed():
        return tensor
    communication_device = _backend_device(tensor)
    buffer = tensor.detach().to(communication_device).contiguous()
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    tensor.copy_(buffer.to(tensor.device))
    return tensor


def _backend_device(tensor: Tensor) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if tensor.device.type != "cpu" else tensor.device
