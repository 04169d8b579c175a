"""Querying a LERF: the relevancy formula, scale selection and the visibility filter, against hand computations."""

import torch
import torch.nn.functional as F

from laser.modules.relevancy_query import relevancy, select_scale, visible_views


def test_relevancy_matches_the_formula():
    torch.manual_seed(0)
    phi = F.normalize(torch.randn(7, 16), dim=-1)
    queries, canonical = F.normalize(torch.randn(3, 16), dim=-1), F.normalize(torch.randn(4, 16), dim=-1)
    direct = torch.empty(7, 3)
    for n in range(7):
        for c in range(3):
            q = torch.exp(phi[n] @ queries[c])
            direct[n, c] = min(q / (torch.exp(phi[n] @ canonical[i]) + q) for i in range(4))
    torch.testing.assert_close(relevancy(phi, queries, canonical), direct)
    # Rendered embeddings with no visible sample (zero) are neither closer to the query nor to a canonical phrase.
    torch.testing.assert_close(relevancy(torch.zeros(2, 16), queries, canonical), torch.full((2, 3), 0.5))


def test_select_scale_keeps_each_querys_best_map():
    maps = torch.zeros(3, 4, 2)                       # [S, N, C]
    maps[0, :, 0], maps[1, :, 0], maps[2, :, 0] = 0.2, torch.tensor([0.1, 0.9, 0.1, 0.1]), 0.5
    maps[0, :, 1], maps[1, :, 1], maps[2, :, 1] = torch.tensor([0.0, 0.0, 0.8, 0.0]), 0.7, 0.8
    index, chosen = select_scale(maps)
    assert index.tolist() == [1, 0]                   # class 1: a tie between scales 0 and 2 goes to the smaller
    torch.testing.assert_close(chosen, torch.stack([maps[1, :, 0], maps[0, :, 1]], dim=-1))


def test_visible_views_counts_cameras_by_hand():
    # 10 x 10 images, focal 10: a camera sees |x / depth| < 0.5 and |y / depth| <= 0.5 around its axis.
    looking_back = torch.tensor([[-1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 0]])   # at the origin, looking down +z
    c2w = torch.stack([torch.eye(3, 4),                                             # at the origin, looking down -z
                       looking_back,
                       torch.cat([torch.eye(3), torch.tensor([[10.0], [0], [0]])], dim=1),
                       torch.cat([torch.eye(3), torch.tensor([[0.0], [0], [1]])], dim=1)])
    points = torch.tensor([[0.0, 0, -5],     # centre of cameras 0 and 3; behind 1; far left of 2
                           [0.0, 0, 5],      # only the camera looking back
                           [2.0, 0, -5],     # camera 0 (column 9), camera 3 (depth 6: column 8.3)
                           [10.0, 0, -5],    # only camera 2
                           [5.0, 0, -5],     # column 15 for camera 0, -5 for camera 2, 13.3 for camera 3
                           [0.0, 3, -5]])    # row -1 for camera 0, 0 for camera 3 (depth 6: 5 - 10 * 3 / 6)
    assert visible_views(points, c2w, 10.0, 10.0, 10, 10).tolist() == [2, 1, 2, 1, 0, 1]
