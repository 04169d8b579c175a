"""3D-OVS's DINO correlation loss on a case computed by hand."""

import math

import torch

from laser.modules.dino_correlation import dino_correlation_loss


def test_correlation_loss_by_hand():
    # One crop of three tokens. DINO: tokens 0 and 1 identical (cos 1), token 2 orthogonal to both (cos 0).
    dino = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    # Class distributions: tokens 0 and 2 identical, token 1 the mirror of them.
    probs = torch.tensor([[[0.8, 0.2], [0.2, 0.8], [0.8, 0.2]]])
    # D = cos - 0.7: 0.3 on the diagonal and for (0, 1), (1, 0); -0.7 for the four pairs with token 2 off the
    # diagonal. J(0.8/0.2 ‖ 0.2/0.8) = KL(p ‖ m) with m uniform = 0.8 ln 1.6 + 0.2 ln 0.4; J = 0 for equal ones.
    j = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)
    # Positive pairs: 3 diagonal (J = 0) + (0, 1) and (1, 0) (J = j): L_pos = 0.3 * 2j / 5.
    # Negative pairs: (0, 2), (2, 0) (J = 0) and (1, 2), (2, 1) (J = j): L_neg = -0.7 * 2j / 4.
    loss_pos, loss_neg = dino_correlation_loss(dino, probs.log(), shift=0.7)
    torch.testing.assert_close(loss_pos, torch.tensor(0.3 * 2 * j / 5))
    torch.testing.assert_close(loss_neg, torch.tensor(-0.7 * 2 * j / 4))


def test_no_pairs_of_a_sign_gives_zero():
    dino = torch.ones(2, 4, 3)                                     # every pair similar: no dissimilar pair
    log_probs = torch.log_softmax(torch.randn(2, 4, 5), dim=-1)
    loss_pos, loss_neg = dino_correlation_loss(dino, log_probs)
    assert loss_pos > 0 and loss_neg == 0
