"""tllib_tune.utils.feature_maps: the smallest map against torchvision's ResNet geometry."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from tllib_tune.models import get_model
from tllib_tune.utils.feature_maps import batch_statistics_problem, smallest_feature_map


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


def test_batch_statistics_problem_names_the_setting_and_the_fix():
    model = get_model("resnet18", pretrained=False)
    # 32 px: a 1 x 1 last map (torchvision's geometry above), so one image has one value per channel
    problem = batch_statistics_problem(model, [4, 1], [64, 32], ["tune", "train"], name="resnet18")
    assert problem == (
        "`batch_size` 1 at `input_size` 32: BatchNorm with batch statistics (train mode) needs more than "
        "one value per channel, but resnet18's smallest feature map holds 1 per image; use `batch_size` 2 "
        "or more, or a larger `input_size`"
    )
    assert batch_statistics_problem(model, [2], [32], ["train", "inplace-abn"]) is None  # two values
    assert batch_statistics_problem(model, [1], [64], ["inplace-abn"]) is None  # 2 x 2 map: four values
    assert (
        batch_statistics_problem(model, [1], [32], ["eval", "tune", "deploy"]) is None
    )  # running statistics
    named = batch_statistics_problem(
        model, [1], [32], ["inplace-abn"], batch_arg="batch_sizes", input_arg="sizes"
    )
    assert named.startswith("`batch_sizes` 1 at `sizes` 32: ") and "(inplace-abn mode)" in named
    assert "ResNet's smallest" in batch_statistics_problem(
        model, [1], [32], ["train"]
    )  # the class by default
