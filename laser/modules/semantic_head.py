"""The semantic head (LASER.md §5): per-point appearance features -> 512-d CLIP-space features.

Laser puts SiLU between the layers (``MLP_sem``, 86 144 parameters at the defaults); 3D-OVS uses the same three
layers with no activation, so the head is purely linear (§14.3).
"""

from __future__ import annotations

from torch import Tensor, nn

ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU}


class SemanticHead(nn.Module):
    """Linear-act-Linear-act-Linear, or three stacked linear maps when ``activation`` is None.

    Args:
        in_dim: appearance feature width (TensoRF's ``app_dim`` = 27).
        hidden: width of the two hidden layers.
        out_dim: CLIP embedding width.
        activation: "silu" (Laser), "relu", or None (3D-OVS).
    """

    def __init__(self, in_dim: int = 27, hidden: int = 128, out_dim: int = 512, activation: str | None = "silu"):
        super().__init__()
        if activation is not None and activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)} or None, not {activation!r}")
        act = ACTIVATIONS[activation] if activation is not None else nn.Identity
        self.affine = activation is None            # three linear maps: one affine map (3D-OVS)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), act(), nn.Linear(hidden, hidden), act(),
                                 nn.Linear(hidden, out_dim))

    def forward(self, features: Tensor) -> Tensor:
        """``[P, in_dim]`` -> ``[P, out_dim]``."""
        return self.net(features)

    @property
    def last(self) -> nn.Linear:
        """The final linear layer (``hidden -> out_dim``)."""
        return self.net[-1]

    def hidden(self, features: Tensor) -> Tensor:
        """Everything before :attr:`last`: ``[P, in_dim]`` -> ``[P, hidden]``, so that ``last(hidden(x))`` is
        ``forward(x)``."""
        return self.net[:-1](features)
