"""layerprobe.model.forwards: an instance forward set and undone, nesting with one set before ours."""

from __future__ import annotations

import torch
from torch import nn

from layerprobe.model.forwards import original_forward, restore_forward, set_forward


def test_set_and_restore_class_forward():
    lin = nn.Linear(2, 2)
    x = torch.ones(1, 2)
    want = lin(x)
    previous = set_forward(lin, lambda x: torch.zeros(1, 2))
    assert previous is None
    assert torch.equal(lin(x), torch.zeros(1, 2))
    assert set(lin.state_dict()) == {"weight", "bias"}  # the patch is not a parameter or buffer
    restore_forward(lin, previous)
    assert "forward" not in lin.__dict__ and torch.equal(lin(x), want)


def test_nested_patches_undone_in_reverse_order_keep_the_first():
    lin = nn.Linear(2, 2)
    x = torch.ones(1, 2)
    first = original_forward(lin)
    assert first(x).shape == (1, 2)  # the class's forward, bound

    def outer(x):  # another library's forward (accelerate's device hook), calling the original
        return first(x) + 1

    assert set_forward(lin, outer) is None
    assert original_forward(lin) is outer  # the forward a call runs now
    inner_prev = set_forward(lin, lambda x: outer(x) * 0)
    assert inner_prev is outer
    assert torch.equal(lin(x), torch.zeros(1, 2))
    restore_forward(lin, inner_prev)
    assert lin.forward is outer and torch.allclose(lin(x), first(x) + 1)
    restore_forward(lin, None)
    assert "forward" not in lin.__dict__ and torch.allclose(lin(x), first(x))


def test_hooks_still_fire_around_a_set_forward():
    lin = nn.Linear(2, 2)
    seen = []
    lin.register_forward_hook(lambda m, a, out: seen.append(out.clone()))
    previous = set_forward(lin, lambda x: torch.full((1, 2), 7.0))
    lin(torch.ones(1, 2))
    restore_forward(lin, previous)
    assert len(seen) == 1 and torch.equal(seen[0], torch.full((1, 2), 7.0))
