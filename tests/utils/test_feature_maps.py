"""tllib_tune.utils.feature_maps: the smallest map against torchvision's ResNet geometry."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from tllib_tune.models import get_model
from tllib_tune.utils.feature_maps import smallest_feature_map


@pytest.mark.parametrize("input_size, expected", [(32, 1), (64, 2 * 2), (100, 4 * 4), (224, 7 * 7)])
def test_resnet_last_stage_is_the_smallest_map(input_size, expected):
    reference = torchvision.models.resnet18().eval()
    trunk = nn.Sequential(*list(reference.children())[:-2])  # up to layer4, without pool and fc
    with torch.no_grad():  # torchvision's own last map: an independent count
        assert trunk(torch.zeros(1, 3, input_size, input_size))[0, 0].numel() == expected
    model = get_model("resnet18", pretrained=False).train()
    assert smallest_feature_map(model, input_size) == expected
    assert model.training  # the flag is restored
    assert all(not m._forward_hooks for m in model.modules())  # and the hooks removed


def test_a_model_without_convolutions_is_refused():
    with pytest.raises(ValueError, match="no convolution"):
        smallest_feature_map(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), 2)
