"""Training loss: label-smoothed cross-entropy on the main and the auxiliary head (paper Sections 7-8)."""
from __future__ import annotations

from typing import Tuple, Union

import torch
import torch.nn.functional as F


def label_smoothing_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Mean cross-entropy against ``q' = (1 - epsilon) * onehot + epsilon / K`` (uniform prior over K classes).

    PyTorch's ``label_smoothing`` is exactly this distribution; the loss is computed in float32 so AMP's
    half-precision logits do not lose the small smoothing terms.
    """
    return F.cross_entropy(logits.float(), targets, label_smoothing=epsilon)


class InceptionLoss(torch.nn.Module):
    """``CE(main) + aux_weight * CE(aux)`` with label smoothing on both heads."""

    def __init__(self, label_smoothing: float = 0.1, aux_weight: float = 0.4):
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.aux_weight = float(aux_weight)

    def forward(
        self, outputs: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]], targets: torch.Tensor
    ) -> torch.Tensor:
        if isinstance(outputs, (tuple, list)):
            logits, aux = outputs
        else:
            logits, aux = outputs, None
        loss = label_smoothing_cross_entropy(logits, targets, self.label_smoothing)
        if aux is not None and self.aux_weight:
            loss = loss + self.aux_weight * label_smoothing_cross_entropy(aux, targets, self.label_smoothing)
        return loss
