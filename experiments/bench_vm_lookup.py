"""TensoRF VM-grid lookups on this machine: grid_sample (reference) against the embedding_bag path, forward and
forward + backward, for one appearance plane and for a whole field. One JSON line per measurement.

    python experiments/bench_vm_lookup.py [--points 262144] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import laser  # noqa: F401
from laser.fields.tensorf import TensorVMField, sample_embedding_bag, sample_grid_sample


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=262144)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    plane = torch.randn(1, 157, 141, 48, requires_grad=True)        # an appearance plane of a ~128^3 grid, [1, H, W, n]
    coords = torch.rand(args.points, 2) * 2 - 1
    aabb = [[-1.5, -1.67, -1.0], [1.5, 1.67, 1.0]]
    fields = {name: TensorVMField(aabb, n_voxels=2097156, lookup=name) for name in ("grid_sample", "embedding_bag")}
    xyz = (torch.rand(args.points, 3) * 2 - 1) * torch.tensor([1.5, 1.67, 1.0])
    for name, sample in (("grid_sample", sample_grid_sample), ("embedding_bag", sample_embedding_bag)):
        field = fields[name]
        # Each closure is timed before the loop moves on, so reading the loop variables late is what is meant.
        rows = {
            "plane_forward_s": best_of(lambda: sample(plane, coords), args.repeats),  # noqa: B023
            "plane_forward_backward_s": best_of(lambda: sample(plane, coords).sum().backward(),  # noqa: B023
                                                args.repeats),
            "field_forward_backward_s": best_of(
                lambda: (field.density(xyz).sum() + field.app_features(xyz).sum()).backward(),  # noqa: B023
                args.repeats),
        }
        print(json.dumps({"lookup": name, "points": args.points, "threads": torch.get_num_threads(),
                          **{k: round(v, 3) for k, v in rows.items()}}))


if __name__ == "__main__":
    main()
