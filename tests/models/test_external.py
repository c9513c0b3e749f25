"""get_model("torchvision/<name>") and get_model("timm/<name>"): feature map, head, weights, modes, names.

Each backbone is checked against the library's own model with the same (random) weights, read from a
saved state dict: the feature map against the activation the library's pooling receives (a forward hook
on its model, or timm's forward_features), copy_head() inside a Classifier against the library's logits.
"""

from __future__ import annotations

import copy
import os

import pytest
import timm
import torch
import torch.hub
import torch.nn.functional as F
import torchvision

from tests.conftest import randomize_all_bn_, rel_err
from tllib_tune import get_modes, set_mode
from tllib_tune.models import WeightsError, get_model, list_models
from tllib_tune.models.external import LibraryBackbone
from tllib_tune.modules.classifier import Classifier
from tllib_tune.modules.convert import inspect_convbn
from tllib_tune.utils.memory import activation_bytes

# torchvision models: how to see the input of their global pooling from the outside (a forward hook).
TORCHVISION = {
    "resnet18": ("input of", "avgpool"),
    "mobilenet_v3_small": ("input of", "avgpool"),
    "efficientnet_b0": ("input of", "avgpool"),
    "densenet121": ("relu of the output of", "features"),  # F.relu, then F.adaptive_avg_pool2d
    "shufflenet_v2_x0_5": ("output of", "conv5"),  # then x.mean([2, 3])
}
TIMM = ["resnet18d", "efficientnet_b0", "mobilenetv3_small_050", "levit_128s"]
MODELS = [("torchvision", n) for n in TORCHVISION] + [("timm", n) for n in TIMM]
IDS = [f"{lib}/{name}" for lib, name in MODELS]


def library_model(library: str, name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """The library's model with random weights and ImageNet-like BatchNorm statistics, in eval()."""
    torch.manual_seed(seed)
    if library == "timm":
        model = timm.create_model(name, pretrained=False, **kwargs)
    else:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    return randomize_all_bn_(model, seed=seed).eval()


def reference_features(library: str, name: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if library == "timm":
        features = model.forward_features(x)
        return features.transpose(1, 2).unsqueeze(-1) if features.dim() == 3 else features
    how, path = TORCHVISION[name]
    seen = []

    def hook(module, args, output):
        seen.append((args[0] if how == "input of" else output).clone())

    handle = model.get_submodule(path).register_forward_hook(hook)
    model(x)
    handle.remove()
    return F.relu(seen[0]) if how.startswith("relu") else seen[0]


def images(library: str, name: str, batch: int = 2, dtype=torch.float32) -> torch.Tensor:
    side = 224 if name == "levit_128s" else 64  # LeViT's attention biases fix its input size
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(1), dtype=dtype)


def unprefixed(state):
    return {k.split(".", 1)[1]: v for k, v in state.items()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(reference model, its saved state dict's path, the backbone loaded from it), built once per model."""
    cache = {}

    def build(library, name):
        if (library, name) not in cache:
            reference = library_model(library, name)
            path = tmp_path_factory.mktemp("weights") / f"{name}.pth"
            torch.save(reference.state_dict(), path)
            cache[library, name] = reference, path, get_model(f"{library}/{name}", pretrained=str(path))
        return cache[library, name]

    return build


@pytest.mark.parametrize("library, name", MODELS, ids=IDS)
def test_weights_feature_map_and_head_are_the_library_models(library, name, built):
    reference, _, backbone = built(library, name)
    assert isinstance(backbone, LibraryBackbone) and backbone.arch == f"{library}/{name}"
    assert backbone.training  # like our own builders
    # every exclusive Conv -> BN pair of the library's model (the classifier has none) is a block
    expected_blocks = len(inspect_convbn(reference, images(library, name)).converted)
    assert sum(get_modes(backbone).values()) == expected_blocks == len(backbone.conversion.converted)
    if name == "resnet18":
        assert get_modes(backbone) == {"train": 20}
    original = reference.state_dict()
    loaded = unprefixed(backbone.state_dict())  # body.<key> / head.<key>, <key> the library's
    assert list(loaded) == list(original) or set(loaded) == set(original)
    assert all(torch.equal(loaded[k], original[k]) for k in original)
    x = images(library, name)
    model = Classifier(backbone, 1000, head=backbone.copy_head()).eval()
    with torch.no_grad():
        expected = reference_features(library, name, reference, x)
        features = backbone(x)
        assert features.shape == expected.shape and features.shape[1] == backbone.out_features
        assert rel_err(features, expected) <= 1e-5
        assert rel_err(model(x), reference(x)) <= 1e-4  # copy_head = the library's classifier
    if library == "timm":
        assert backbone.out_features == reference.num_features


@pytest.mark.parametrize("library, name", MODELS, ids=IDS)
def test_tune_equals_eval_in_float64_and_a_classifier_trains(library, name, built):
    _, _, source = built(library, name)
    assert source.conversion.converted, source.conversion
    backbone = copy.deepcopy(source).double().eval()
    # batch 2: with one image, PyTorch 2.14's CPU BatchNorm2d backward is wrong for a channels-last gradient
    # (LeViT transposes its stem output), which would make eval, not tune, the wrong side
    x = images(library, name, batch=2, dtype=torch.float64)
    weights = None
    grads = {}
    for mode in ("eval", "tune"):
        set_mode(backbone, mode)
        backbone.zero_grad(set_to_none=True)
        inp = x.clone().requires_grad_(True)
        out = backbone(inp)
        weights = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(2))
        (out * weights).sum().backward()
        grads[mode] = {n: p.grad for n, p in backbone.named_parameters() if p.grad is not None}
        grads[mode]["input"], grads[mode]["output"] = inp.grad, out.detach()
    assert set(grads["tune"]) == set(grads["eval"]) and len(grads["eval"]) > 2
    # Relative to each gradient, but to no less than 1e-6 of the largest (so at least 1e-16 of it, float64's
    # round-off): a few gradients of LeViT's subsampled attention queries are 1e-12 of the others, all
    # cancellation, where round-off is relatively large.
    floor = 1e-6 * max(g.norm().item() for g in grads["eval"].values())
    errors = {
        k: (grads["tune"][k] - g).norm().item() / max(g.norm().item(), floor)
        for k, g in grads["eval"].items()
    }
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-10, (worst, errors[worst])
    classifier = Classifier(copy.deepcopy(source), num_classes=5).train()
    classifier(images(library, name)).sum().backward()
    assert classifier.head.weight.grad is not None


def test_parameters_forward_does_not_use_are_frozen(built):
    _, _, backbone = built("timm", "resnet18d")
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen == {"body.fc.weight", "body.fc.bias"}  # timm's classifier, kept for checkpoints
    head = backbone.copy_head()
    assert all(p.requires_grad for p in head.parameters())
    assert (
        torch.equal(head.fc.weight, backbone.body.fc.weight) and head.fc.weight is not backbone.body.fc.weight
    )
    _, _, backbone = built("torchvision", "resnet18")
    assert {n for n, p in backbone.named_parameters() if not p.requires_grad} == {
        "head.fc.weight",
        "head.fc.bias",
    }


def test_backbone_checkpoint_and_wrapped_training_checkpoint_load(built, tmp_path):
    reference, _, backbone = built("timm", "resnet18d")
    own = get_model("timm/resnet18d", pretrained=backbone.state_dict())
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in own.state_dict().items())
    wrapped = {"epoch": 3, "state_dict": {"module." + k: v for k, v in reference.state_dict().items()}}
    path = tmp_path / "train_script.pth.tar"
    torch.save(wrapped, path)
    loaded = get_model("timm/resnet18d", pretrained=str(path))
    assert all(torch.equal(loaded.state_dict()["body." + k], v) for k, v in reference.state_dict().items())


def test_pooling_that_is_not_an_average_refuses_copy_head():
    backbone = get_model("timm/resnet18d", global_pool="max")  # kwargs go to timm.create_model
    with pytest.raises(ValueError, match="copy_head.*not available.*pools another way"):
        backbone.copy_head()
    assert Classifier(backbone, 3)(torch.randn(2, 3, 32, 32)).shape == (2, 3)


# --- errors -----------------------------------------------------------------------------------------
def test_wrong_architecture_and_bad_files_name_the_file_and_the_mismatch(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(WeightsError) as info:
        get_model("torchvision/resnet18", pretrained=str(path))
    message = str(info.value)
    assert f"checkpoint {str(path)!r} does not fit torchvision/resnet18" in message
    assert "unexpected keys" in message and "layer1.2.conv1.weight" in message
    assert "another model than torchvision/resnet18" in message
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="could not read"):
        get_model("timm/resnet18d", pretrained=str(garbage))
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        get_model("timm/resnet18d", pretrained=str(tmp_path / "nowhere.pth"))
    with pytest.raises(TypeError, match="pretrained=3"):
        get_model("torchvision/resnet18", pretrained=3)


def test_head_size_mismatch_suggests_num_classes():
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    with pytest.raises(WeightsError, match="classifier has 10 outputs: pass num_classes="):
        get_model("torchvision/resnet18", pretrained=state)
    backbone = get_model("torchvision/resnet18", pretrained=state, num_classes=10)
    assert backbone.copy_head().fc.out_features == 10


@pytest.mark.parametrize(
    "name, pattern",
    [
        ("torchvision/resnet19", r"torchvision has no model 'resnet19'; did you mean resnet18"),
        ("timm/efficientnet_b9x", r"timm has no model 'efficientnet_b9x'; did you mean .*efficientnet_b"),
        ("timm/qqqqqqqqqqqq", r"list them with list_models\('timm/\*'\)"),
        ("keras/resnet50", r"no library 'keras'"),
        (
            "efficientnet_b0",
            r"timm and torchvision have it: .* or get_model\('torchvision/efficientnet_b0'\)",
        ),
        ("mnasnet0_5", r"\(torchvision has it: get_model\('torchvision/mnasnet0_5'\)\)"),
    ],
)
def test_unknown_names_suggest_close_ones(name, pattern):
    with pytest.raises(ValueError, match=pattern):
        get_model(name)


def test_list_models_lists_a_library_by_prefix():
    assert "timm/resnet18d" in list_models("timm/resnet18*")
    assert list_models("torchvision/mobilenet_v3*") == [
        "torchvision/mobilenet_v3_large",
        "torchvision/mobilenet_v3_small",
    ]
    assert not any("/" in name for name in list_models())


# --- pretrained=True: the libraries' own download code, without network ----------------------------
def test_torchvision_pretrained_true_and_weights_names_use_torch_hub(offline_hub):
    cache, calls = offline_hub
    reference = library_model("torchvision", "resnet18", seed=3)
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / os.path.basename(url))
    for pretrained in (True, "IMAGENET1K_V1"):  # for ResNet-18 V1 is also the default
        backbone = get_model("torchvision/resnet18", pretrained=pretrained, mode="tune")
        assert get_modes(backbone) == {"tune": 20} and calls == []
        loaded = unprefixed(backbone.state_dict())
        assert all(torch.equal(loaded[k], v) for k, v in reference.state_dict().items())
    with pytest.raises(WeightsError, match="no torchvision weights 'IMAGENET1K_V9'.*IMAGENET1K_V1"):
        get_model("torchvision/resnet18", pretrained="IMAGENET1K_V9")
    with pytest.raises(WeightsError) as info:
        get_model("torchvision/mobilenet_v3_small", pretrained=True)
    url = torchvision.models.MobileNet_V3_Small_Weights.DEFAULT.url
    assert calls == [url] and "Temporary failure" in str(info.value)
    assert (
        f"get_model('torchvision/mobilenet_v3_small', pretrained='/path/to/{os.path.basename(url)}')"
        in str(info.value)
    )


def test_timm_pretrained_true_goes_through_timms_loader(tmp_path, monkeypatch):
    reference = library_model("timm", "resnet18d", seed=4)
    path = tmp_path / "resnet18d.pth"
    torch.save(reference.state_dict(), path)
    overlay = dict(file=str(path))  # timm's own offline route: it reads the file as its pretrained weights
    backbone = get_model("timm/resnet18d", pretrained=True, pretrained_cfg_overlay=overlay)
    assert all(torch.equal(backbone.state_dict()["body." + k], v) for k, v in reference.state_dict().items())
    import timm.models._builder as builder

    def no_network(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(builder, "load_state_dict_from_hf", no_network)
    with pytest.raises(
        WeightsError, match="could not get timm's pretrained weights for resnet18d.*huggingface"
    ):
        get_model("timm/resnet18d", pretrained=True)


def test_whole_backbones_pickle_and_copy(built, tmp_path):
    for library, name in (("torchvision", "densenet121"), ("timm", "levit_128s")):
        _, _, backbone = built(library, name)
        torch.save(backbone, tmp_path / "whole.pt")
        x = images(library, name, batch=1)
        with torch.no_grad():
            expected = backbone.eval()(x)
            for other in (torch.load(tmp_path / "whole.pt", weights_only=False), copy.deepcopy(backbone)):
                assert torch.equal(other.eval()(x), expected)
                assert torch.equal(
                    other.copy_head()(expected.mean((2, 3))), backbone.copy_head()(expected.mean((2, 3)))
                )
        backbone.train()


class _GridPooled(torch.nn.Module):
    """A tiny torchvision-like model that pools to a 2x2 grid (as VGG pools to 7x7) or not at all."""

    def __init__(self, grid=True, num_classes=1000, **kwargs):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()
        )
        self.grid = grid
        self.avgpool = torch.nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = torch.nn.Linear(32 if grid else 8, num_classes)

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x) if self.grid else x[:, :, 0, 0]  # no pooling: like a ViT's class token
        return self.classifier(torch.flatten(x, 1))


def test_torchvision_pooling_rule_for_grid_pooling_and_no_pooling(monkeypatch):
    made = []
    monkeypatch.setattr(
        torchvision.models,
        "get_model",
        lambda name, weights=None, **kw: made.append(_GridPooled(**kw)) or made[-1],
    )
    backbone = get_model("torchvision/vgg11_bn", mode="eval")  # VGG's shape: a grid pooled, then flattened
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(backbone.eval()(x), made[0].eval().features(x))  # the input of the pooling
    assert backbone.out_features == 8 and get_modes(backbone) == {"eval": 1}
    with pytest.raises(ValueError, match="copy_head.*not available.*does not pool to 1x1"):
        backbone.copy_head()
    with pytest.raises(ValueError, match="vgg11_bn: its forward has no average pooling"):
        get_model("torchvision/vgg11_bn", grid=False)


@pytest.mark.parametrize("library, name", [("torchvision", "efficientnet_b0"), ("timm", "resnet18d")])
def test_tune_keeps_deploys_activation_memory(library, name, built):
    backbone = copy.deepcopy(built(library, name)[2]).eval()
    x = images(library, name)
    saved = {}
    for mode in ("eval", "tune", "deploy"):
        set_mode(backbone, mode)
        saved[mode] = activation_bytes(backbone, x, backward=False)
    assert saved["tune"] <= 1.01 * saved["deploy"]
    assert saved["tune"] <= 0.75 * saved["eval"]
