import copy

import torch

from laser.fields.tensorf import TensorVMField
from laser.methods.optimizer import adam, load_adam_state

AABB = [[-1.5, -1.67, -1.0], [1.5, 1.67, 1.0]]


def loss(field: TensorVMField, xyz: torch.Tensor) -> torch.Tensor:
    return field.density(xyz).square().mean() + field.app_features(xyz).square().mean()


def test_a_saved_unfused_component_major_state_resumes_fused_with_the_same_next_step():
    torch.manual_seed(0)
    field = TensorVMField(AABB, n_voxels=12**3)
    xyz = (torch.rand(300, 3) * 2 - 1) * 0.9
    unfused = torch.optim.Adam(field.param_groups(0.02, 1e-3), betas=(0.9, 0.99), fused=False)
    for _ in range(3):
        unfused.zero_grad()
        loss(field, xyz).backward()
        unfused.step()
    # What a checkpoint of the component-major layout (VMGrid version 1), written by a non-fused Adam, holds.
    field_state = field.state_dict()
    old_field = type(field_state)((k, v.permute(0, 3, 1, 2) if ".planes." in k or ".lines." in k else v)
                                  for k, v in field_state.items())
    old_field._metadata = {k: {**v, "version": 1} if k.endswith("_grid") else v
                           for k, v in field_state._metadata.items()}
    saved = copy.deepcopy(unfused.state_dict())         # as from disk: state_dict() shares the moment tensors
    old_optimizer = {**saved, "state": {i: {k: v.permute(0, 3, 1, 2) if v.dim() == 4 else v for k, v in s.items()}
                                        for i, s in saved["state"].items()}}

    resumed = TensorVMField(AABB, n_voxels=12**3)
    resumed.load_state_dict(old_field)
    optimizer = adam(resumed.param_groups(0.02, 1e-3))
    load_adam_state(optimizer, old_optimizer, resumed)
    assert all(group["fused"] and group["foreach"] is None for group in optimizer.param_groups)
    for p, q in zip(field.parameters(), resumed.parameters()):
        assert (p in unfused.state) == (q in optimizer.state)
        if p in unfused.state:
            assert torch.equal(optimizer.state[q]["exp_avg_sq"], unfused.state[p]["exp_avg_sq"])

    for fields, opt in ((field, unfused), (resumed, optimizer)):
        opt.zero_grad()
        loss(fields, xyz).backward()
        opt.step()
    for p, q in zip(field.parameters(), resumed.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
