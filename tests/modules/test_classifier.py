"""Classifier: TLlib's shape (pool, bottleneck, head), logits out, parameter groups for fine-tuning."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from tests.conftest import randomize_all_bn_, rel_err
from tests.models.conftest import _single_thread  # noqa: F401  (autouse: one thread per test)
from tllib_tune import LinearBN, get_modes, set_mode
from tllib_tune.models import resnet18
from tllib_tune.modules.classifier import Classifier

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return randomize_all_bn_(torchvision.models.resnet18(), seed=0).eval()


def test_with_the_imagenet_head_it_is_torchvision_resnet(reference):
    backbone = resnet18(pretrained=reference.state_dict())
    model = Classifier(backbone, 1000, head=backbone.copy_head()).eval()
    set_mode(model, "tune")
    with torch.no_grad():
        assert rel_err(model(X), reference(X)) <= 1e-5


def test_default_shape_and_logits_in_train_and_eval():
    model = Classifier(resnet18(), num_classes=5)
    assert isinstance(model.bottleneck, nn.Identity) and model.features_dim == 512
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 5
    for train in (True, False):
        out = model.train(train)(X)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 5)
    assert model.features(X).shape == (2, 512)


def test_bottleneck_is_a_switchable_linearbn_with_relu():
    model = Classifier(resnet18(), num_classes=5, bottleneck_dim=64)
    assert isinstance(model.bottleneck.conv, LinearBN) and isinstance(model.bottleneck.act, nn.ReLU)
    assert model.bottleneck.conv_act_pairs == (("conv", "act"),)
    assert model.features_dim == 64 and model.head.in_features == 64
    model.train()(X)  # one step of batch statistics
    model.eval()
    with torch.no_grad():
        expected = model(X)
        assert set_mode(model, "tune") == 21  # 20 backbone blocks + the bottleneck
        assert get_modes(model, include="bottleneck") == {"tune": 1}
        assert rel_err(model(X), expected) <= 1e-5
        features = model.features(X)
    assert features.shape == (2, 64) and bool((features >= 0).all())


def test_fc_of_the_backbone_gets_no_gradient():
    model = Classifier(resnet18(), num_classes=5)
    model(X).sum().backward()
    assert model.backbone.fc.weight.grad is None
    assert model.backbone.conv1.conv.weight.grad is not None and model.head.weight.grad is not None


@pytest.mark.parametrize("finetune, backbone_lr", [(True, 0.01), (False, 0.1)])
def test_get_parameters_groups(finetune, backbone_lr):
    model = Classifier(resnet18(), num_classes=5, bottleneck_dim=32, finetune=finetune)
    groups = model.get_parameters(base_lr=0.1)
    assert [g["lr"] for g in groups] == pytest.approx([backbone_lr, 0.1, 0.1])
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.backbone.parameters()}
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)  # accepted as is
    assert len(optimizer.param_groups) == 3


def test_without_bottleneck_there_is_no_empty_group():
    groups = Classifier(resnet18(), num_classes=5).get_parameters(base_lr=1.0)
    assert [g["lr"] for g in groups] == pytest.approx([0.1, 1.0])


def test_bad_arguments_raise():
    plain = nn.Sequential(nn.Conv2d(3, 8, 3))
    with pytest.raises(ValueError, match="out_features"):
        Classifier(plain, num_classes=5)
    with pytest.raises(ValueError, match="out_features"):
        Classifier(plain, num_classes=5, bottleneck_dim=4)
    model = Classifier(plain, num_classes=5, head=nn.Linear(8, 5))  # works with an explicit head
    assert model(X).shape == (2, 5)
    with pytest.raises(ValueError, match="num_classes"):
        Classifier(resnet18(), num_classes=0)
    with pytest.raises(ValueError, match="bottleneck_dim"):
        Classifier(resnet18(), num_classes=3, bottleneck_dim=-1)
