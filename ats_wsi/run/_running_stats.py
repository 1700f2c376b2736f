"""BatchNorm running statistics under DDP, folded slide by slide in the batch's order
(so that several processes train exactly as one would)."""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

__all__ = ["_RunningStats"]


class _RunningStats:
    """BatchNorm running statistics, updated slide by slide in the batch's order.

    Left alone, each DDP process would fold only its own slides of a batch
    into its BatchNorm buffers (and DDP would broadcast rank 0's), so the
    running statistics, the validation loss and the checkpoints would differ
    from one process running the same batches. Instead, each slide's batch
    statistics are captured during its forward (momentum 1 makes the layer
    store exactly them in its buffers, which are then put back), gathered
    from every process after the batch, and folded in in the batch's order.
    """

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules()
                       if isinstance(m, nn.modules.batchnorm._BatchNorm)
                       and m.track_running_stats and m.running_mean is not None]
        self.size = sum(2 * m.running_mean.numel() for m in self.layers)
        self.captured: list[torch.Tensor] = []

    @contextlib.contextmanager
    def capture(self, keep: bool = True):
        """Around one slide's forward and backward: record its statistics (if ``keep``) and
        leave the buffers as they were."""
        saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
                 for m in self.layers]
        for m in self.layers:
            m.momentum = 1.0
        try:
            yield
            if keep and self.layers:
                self.captured.append(torch.cat([torch.cat([m.running_mean, m.running_var]) for m in self.layers]))
        finally:
            with torch.no_grad():
                for m, (momentum, mean, var, count) in zip(self.layers, saved):
                    m.momentum = momentum
                    m.running_mean.copy_(mean)
                    m.running_var.copy_(var)
                    m.num_batches_tracked.copy_(count)

    def fold(self, batch_len: int, world: int, distributed: bool) -> None:
        """Fold the captured statistics of one batch (``batch_len`` slides) into the buffers.

        Slide ``p`` of the batch ran on process ``p % world`` as its
        ``p // world``-th slide (the batch is dealt as ``batch[rank::world]``).
        """
        mine, self.captured = self.captured, []
        if not self.layers:
            return
        if distributed:
            import torch.distributed as dist

            ref = self.layers[0].running_mean
            local = torch.zeros(math.ceil(batch_len / world), self.size, dtype=ref.dtype, device=ref.device)
            if mine:
                local[:len(mine)] = torch.stack(mine)
            gathered = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(gathered, local)
            ordered = [gathered[p % world][p // world] for p in range(batch_len)]
        else:
            ordered = mine
        with torch.no_grad():
            for stats in ordered:
                offset = 0
                for m in self.layers:
                    c = m.running_mean.numel()
                    m.num_batches_tracked.add_(1)
                    f = m.momentum if m.momentum is not None else 1.0 / float(m.num_batches_tracked)
                    m.running_mean.mul_(1 - f).add_(stats[offset:offset + c], alpha=f)
                    m.running_var.mul_(1 - f).add_(stats[offset + c:offset + 2 * c], alpha=f)
                    offset += 2 * c
