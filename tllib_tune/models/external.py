"""Another library's model as a backbone: the part "torchvision/<name>" and "timm/<name>" share.

A :class:`LibraryBackbone` keeps the library's own modules, under the library's own names, in ``body``
(and, where the classifier is split off, ``head``). It keeps our backbone contract
(:mod:`tllib_tune.models.backbone`): ``forward`` returns the feature map ``[N, C, H, W]`` that the
library's classifier pools, ``out_features`` is ``C``, and ``copy_head()`` returns the library's classifier
as a module of the globally average-pooled features, which was checked when the backbone was built to
give the library's own logits. :func:`finish_library_backbone` does what every wrapper does after
building: measure ``C`` on a probe image, check the head, freeze what ``forward`` never uses, convert the
Conv -> BatchNorm pairs and set the mode.

Pretrained weights other than the library's download are read by :func:`load_library_checkpoint`: a
checkpoint of that library's model (or of this backbone), loaded strictly.
"""

from __future__ import annotations

import os
from typing import Any, Callable, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, fx, nn

from ..modules.convbn import Mode
from ..modules.convert import convert_convbn
from ..modules.modes import set_mode
from .backbone import Backbone
from .weights import Pretrained, load_exactly, read_state

__all__ = ["LibraryBackbone", "finish_library_backbone", "load_library_checkpoint", "view_input"]

# Norm-wise relative error up to which the copied head counts as giving the library's logits (float32).
_HEAD_RTOL = 1e-4


class LibraryBackbone(Backbone):
    """A library's model as a backbone; subclasses say how ``body`` computes the features and the head.

    Attributes:
        body: the library's modules (all of them for timm; up to the pooling for torchvision).
        layout: how the library lays out its features: "NCHW", "NHWC" (permuted) or "NLC" (tokens,
            presented as ``[N, C, L, 1]`` so that average pooling is the mean over tokens).
        conversion: the report of the Conv -> BatchNorm conversion (which BatchNorms were left, and why).
    """

    library = ""
    #: What convert_convbn did when the backbone was built (a ConversionReport; print it for a summary).
    conversion: Any = None

    def __init__(self, body: nn.Module, name: str, layout: str = "NCHW") -> None:
        super().__init__()
        self.body = body
        self.arch = f"{self.library}/{name}"
        self.layout = layout
        self._head_problem: Optional[str] = "the head was not checked"

    def features(self, x: Tensor) -> Tensor:
        """The library's feature tensor, in its own layout."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """The feature map ``[N, out_features, H, W]`` (``[N, C, L, 1]`` for a token layout)."""
        x = self.features(x)
        if self.layout == "NHWC":
            return x.permute(0, 3, 1, 2)
        if self.layout == "NLC":
            return x.transpose(1, 2).unsqueeze(-1)
        return x

    def pooled_head(self) -> Optional[nn.Module]:
        """The library's classifier as a module of the pooled features ``[N, C]`` (not a copy), or None."""
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        if self._head_problem is not None:
            raise ValueError(f"{self.arch}: copy_head() is not available: {self._head_problem}")
        head = self.pooled_head()
        assert head is not None
        return head


def view_input(graph: fx.Graph, placeholder: fx.Node, shape: Tuple[int, ...]) -> None:
    """Make ``graph`` take the pooled features ``[N, C]`` at ``placeholder``, viewed as ``[N, *shape]``
    (the shape the library's pooling hands its classifier) before any other use."""
    with graph.inserting_after(placeholder):
        viewed = graph.call_method("view", (placeholder, -1, *shape))
    placeholder.replace_all_uses_with(viewed, delete_user_cb=lambda user: user is not viewed)


def _head_problem(backbone: LibraryBackbone, reference: nn.Module, probe: Tensor) -> Optional[str]:
    """Why the head does not give the library's logits from our pooled features (None: it does)."""
    head = backbone.pooled_head()
    if head is None:
        return backbone._head_problem
    with torch.no_grad():
        expected = reference(probe)
        actual = head(backbone(probe).mean((2, 3)))
    if not isinstance(expected, Tensor) or expected.shape != actual.shape:
        return f"the library's model returns {type(expected).__name__}, not logits shaped like the head's"
    error = ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()
    if error > _HEAD_RTOL:
        return (
            f"its classifier applied to the average-pooled feature map differs from {backbone.library}'s "
            f"logits (relative error {error:.2g}): the library pools another way (a class token, max or "
            "avg+max pooling, a pooled grid that is not 1x1)"
        )
    return None


def _freeze_unused(model: nn.Module, probe: Tensor) -> None:
    """Freeze every parameter ``model(probe)`` does not depend on (the library's classifier, unused
    branches): they get no gradient, which DDP would report, and must not decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return
    output = model(probe)
    grads = torch.autograd.grad(output.sum(), params, allow_unused=True)
    for param, grad in zip(params, grads):
        if grad is None:
            param.requires_grad_(False)


def convert_pairs(backbone: LibraryBackbone, example_input: Tensor) -> None:
    """Make the backbone's exclusive Conv -> BatchNorm pairs ConvBN blocks (the one conversion step);
    what was converted and what left, and why, stays in ``backbone.conversion``."""
    _, backbone.conversion = convert_convbn(backbone, example_input, return_report=True)


def finish_library_backbone(
    backbone: LibraryBackbone,
    reference: nn.Module,
    probe: Tensor,
    mode: Union[str, Mode] = "train",
    make_head: Optional[Callable[[int], None]] = None,
) -> LibraryBackbone:
    """After building: ``out_features`` from ``backbone(probe)``, ``make_head(channels)`` (if given) to
    attach the head, the head checked against ``reference(probe)`` (the library's whole model), unused
    parameters frozen, pairs converted, ``mode`` set; the backbone is returned in training mode."""
    mode = Mode.parse(mode)
    backbone.eval()
    reference.eval()
    with torch.no_grad():
        features = backbone(probe)
    if features.dim() != 4:
        raise ValueError(
            f"{backbone.arch}: its features have shape {tuple(features.shape)}, not a feature map "
            "[N, C, H, W] or tokens [N, L, C]"
        )
    backbone._out_features = features.shape[1]
    if make_head is not None:
        make_head(features.shape[1])
    backbone._head_problem = _head_problem(backbone, reference, probe)
    _freeze_unused(backbone, probe)
    convert_pairs(backbone, probe)
    if mode is not Mode.TRAIN:
        set_mode(backbone, mode)
    return backbone.train()


def load_library_checkpoint(model: nn.Module, source: Pretrained, label: str) -> None:
    """Load a checkpoint of the library's model ``label`` (e.g. "timm/resnet50d") into ``model`` strictly.

    ``source`` is a file (torch.save or .safetensors, a state dict or a training checkpoint wrapping one;
    ``module.`` / ``_orig_mod.`` prefixes removed, as timm's load_checkpoint does), a state dict, or a
    state dict of this package's backbone of that model (keys ``body.*`` / ``head.*``).
    """
    if not isinstance(source, (str, os.PathLike, Mapping, nn.Module)):
        raise TypeError(
            f"pretrained={source!r}: use False, True (the library's weights), a checkpoint path or a "
            "state dict"
        )
    state = read_state(source)
    if state and all(k.startswith(("body.", "head.")) for k in state):
        state = type(state)((k.split(".", 1)[1], v) for k, v in state.items())
    what = f"checkpoint {os.fspath(source)!r}" if isinstance(source, (str, os.PathLike)) else "state dict"
    expected = model.state_dict()

    def cause(missing: List[str], unexpected: List[str], shapes: List[str]) -> str:
        return _likely_cause(label, state, expected, missing, unexpected, shapes)

    load_exactly(model, state, what, cause, target=label)


def _likely_cause(
    label: str,
    state: Mapping[str, Tensor],
    expected: Mapping[str, Tensor],
    missing: List[str],
    unexpected: List[str],
    shapes: List[str],
) -> str:
    library = label.split("/")[0]
    if any(k.startswith(("backbone.", "bottleneck.")) for k in unexpected):
        return (
            "the file looks like a Classifier checkpoint (keys 'backbone.*', 'head.*'): load it with "
            "Classifier.load_state_dict, or keep only the 'backbone.' entries without that prefix"
        )
    if shapes and not missing and not unexpected:
        mismatched = [s.split(":")[0] for s in shapes]
        rows = {state[k].shape[0] for k in mismatched}
        if len(rows) == 1 and all(state[k].shape[1:] == expected[k].shape[1:] for k in mismatched):
            return (
                f"the checkpoint's classifier has {rows.pop()} outputs: pass num_classes= with that number "
                f"(keyword arguments go to {library}'s builder)"
            )
    return (
        f"the checkpoint was made for another model than {label} (or is not in {library}'s naming); check "
        "the name and the keyword arguments that change the architecture"
    )
