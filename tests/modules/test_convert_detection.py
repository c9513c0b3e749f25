"""convert_convbn on torchvision's detection and segmentation models: backbones with FrozenBatchNorm2d as
pretrained loading builds them, a whole Faster R-CNN on a list of images, DeepLabV3 / LR-ASPP heads."""

from __future__ import annotations

import torch
from torchvision.models import detection, resnet50, segmentation
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

from tests.conftest import randomize_all_bn_, rel_err
from tests.models.conftest import _single_thread  # noqa: F401  (autouse: one thread per test)
from tests.modules.conftest import assert_converts_exactly
from tllib_tune import convert_convbn, get_modes, set_mode, using_mode


def _randomize_frozen_(model, seed=0):
    """ImageNet-like statistics and affine for every FrozenBatchNorm2d (buffers, not parameters)."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            c = m.weight.numel()
            dtype = m.weight.dtype
            m.running_mean.copy_(torch.randn(c, generator=generator, dtype=dtype) * 0.3)
            m.running_var.copy_(0.5 + torch.rand(c, generator=generator, dtype=dtype))
            m.weight.copy_(0.5 + torch.rand(c, generator=generator, dtype=dtype))
            m.bias.copy_(torch.randn(c, generator=generator, dtype=dtype) * 0.1)
    return model


def _frozen_backbone(trainable_layers=3):
    """What fasterrcnn_resnet50_fpn(weights=...) builds: FrozenBatchNorm2d, layers below 3 frozen."""
    torch.manual_seed(0)
    return _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), trainable_layers)


def test_frozen_backbone_float64_tune_equals_the_original():
    backbone = _randomize_frozen_(_frozen_backbone().double()).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model, report = assert_converts_exactly(backbone, x)
    assert len(report.converted) == 53 and not report.left
    frozen = [b for _, b in model.named_modules() if isinstance(getattr(b, "bn", None), FrozenBatchNorm2d)]
    assert (
        len(frozen) == 53 and all(not p.requires_grad for b in frozen for p in b.conv.parameters()) is False
    )


def test_whole_faster_rcnn_converts_on_a_list_of_images_and_keeps_its_checkpoint():
    torch.manual_seed(0)
    model = detection.FasterRCNN(_frozen_backbone(), num_classes=5, min_size=96, max_size=96).eval()
    _randomize_frozen_(model)
    images = [torch.rand(3, 96, 80, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    keys = list(model.state_dict())
    model, report = convert_convbn(model, images, return_report=True)
    assert len(report.converted) == 53 and not report.left and report.verified.startswith("bitwise")
    assert list(model.state_dict()) == keys and get_modes(model) == {"train": 53}
    batch = model.transform(images)[0].tensors  # boxes of random weights amplify round-off: features
    with torch.no_grad():
        expected = model.backbone(batch)
        with using_mode(model, "tune"):
            actual = model.backbone(batch)
    assert all(rel_err(actual[k], expected[k]) <= 1e-5 for k in expected)


def test_untrained_detection_model_with_plain_batchnorm_takes_a_tensor_batch_by_default():
    model = detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=3)
    model.transform.min_size, model.transform.max_size = (64,), 64
    _, report = convert_convbn(model, return_report=True)  # the default 2 x 3 x 64 x 64 is a batch of images
    assert len(report.converted) == 46 == report.total


def test_segmentation_heads_convert_with_their_backbones():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for build in (segmentation.deeplabv3_mobilenet_v3_large, segmentation.lraspp_mobilenet_v3_large):
        original = randomize_all_bn_(
            build(weights=None, weights_backbone=None, num_classes=3).double()
        ).eval()
        model, report = assert_converts_exactly(original, x)
        assert not report.left, report.summary()
        set_mode(model, "tune")
