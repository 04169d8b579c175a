"""The optimiser both stages step: TensoRF's Adam (betas 0.9, 0.99), fused, and how a saved state is taken back."""

from __future__ import annotations

import torch
from torch import nn

from laser.fields.tensorf import vertex_major_moments


def adam(groups: list[dict]) -> torch.optim.Adam:
    """Fused: one kernel for every parameter (a loop of per-tensor ops took 6x as long over stage 1's factors), and
    it honours ``found_inf`` (stage 2's guard) without a host round trip."""
    return torch.optim.Adam(groups, betas=(0.9, 0.99), fused=True)


def load_adam_state(optimizer: torch.optim.Adam, state: dict, model: nn.Module) -> None:
    """``optimizer.load_state_dict(state)``, fused whatever the saved groups say (checkpoints written before the
    optimisers were fused hold the same moments), with the moments of VM factors that ``model`` (already loaded)
    took from the component-major layout permuted as its factors were."""
    optimizer.load_state_dict({**state, "param_groups": [{**g, "fused": True, "foreach": None}
                                                         for g in state["param_groups"]]})
    vertex_major_moments(optimizer, model)
