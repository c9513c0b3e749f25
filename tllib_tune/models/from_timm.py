"""``get_model("timm/<name>")``: any timm model as a backbone, converted.

The feature map is timm's ``forward_features(x)``, the unpooled features its ``forward_head`` pools
(``num_features`` channels), made ``[N, C, H, W]``: channels-last outputs (``output_fmt == "NHWC"``,
e.g. Swin) are permuted, and a token output ``[N, L, C]`` (e.g. LeViT) is presented as ``[N, C, L, 1]``,
so that the Classifier's global average pooling is timm's mean over tokens. ``copy_head()`` is timm's
``forward_head`` (traced with torch.fx) applied to the pooled features; it is checked against timm's own
logits when the backbone is built, and refused where timm pools another way (a ViT's class token).

State dict: ``body.<key>`` with ``<key>`` timm's own, classifier included (kept frozen and unused by
``forward``); ``pretrained=`` reads a timm checkpoint of the model (what ``model.state_dict()`` or timm's
train.py saves; what ``timm.models.load_checkpoint`` reads).
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, fx, nn

from ..modules.convbn import Mode
from .external import LibraryBackbone, finish_library_backbone, load_library_checkpoint, view_input
from .registry import register_library
from .weights import Pretrained, WeightsError

__all__ = ["TimmBackbone", "timm_backbone", "timm_names"]


class TimmBackbone(LibraryBackbone):
    """A timm model in ``body``; ``forward`` is its ``forward_features`` as a feature map."""

    library = "timm"

    def features(self, x: Tensor) -> Tensor:
        return self.body.forward_features(x)

    def pooled_head(self) -> Optional[nn.Module]:
        """timm's ``forward_head`` traced anew (a few ms) on the pooled features, viewed as its input."""
        shape = {"NCHW": (self.out_features, 1, 1), "NHWC": (1, 1, self.out_features)}
        graph, problem = _trace_head(self.body, shape.get(self.layout, (1, self.out_features)))
        if graph is None:
            self._head_problem = problem
            return None
        return fx.GraphModule(self.body, graph, class_name="TimmHead")


def timm_names() -> List[str]:
    """timm's architectures (what ``get_model("timm/<name>")`` builds; a ``.tag`` may follow the name)."""
    import timm

    return timm.list_models()


class _HeadTracer(fx.Tracer):
    """Traces timm's ``forward_head``, with timm's untraceable modules and functions as leaves."""

    traced_func_name = "forward_head"

    def __init__(self) -> None:
        from timm.layers import get_notrace_functions, get_notrace_modules

        super().__init__(autowrap_functions=tuple(get_notrace_functions()))
        self.leaves = tuple(get_notrace_modules())

    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        return isinstance(module, self.leaves) or super().is_leaf_module(module, qualname)


def _trace_head(model: nn.Module, shape: Tuple[int, ...]) -> Tuple[Optional[fx.Graph], Optional[str]]:
    """timm's ``forward_head`` as a graph taking the pooled features, or (None, why not)."""
    try:
        graph = _HeadTracer().trace(model, concrete_args={"pre_logits": False})
    except Exception as err:  # fx raises many kinds (TraceError, TypeError, RuntimeError ...)
        return None, f"timm's forward_head does not trace with torch.fx ({type(err).__name__}: {err})"
    placeholder = next(n for n in graph.nodes if n.op == "placeholder")
    view_input(graph, placeholder, shape)
    return graph, None


def _library_model(name: str, pretrained: Pretrained, kwargs: Any) -> nn.Module:
    import timm

    if pretrained is True:
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except OSError as err:  # no network and nothing in the Hugging Face / torch.hub cache
            raise WeightsError(
                f"could not get timm's pretrained weights for {name}: {err}\nWithout network access, run "
                f"timm.create_model({name!r}, pretrained=True) on a machine that has it and copy its cache "
                "(~/.cache/huggingface; HF_HOME moves it), or save that model's state_dict() and pass its "
                f"path: get_model('timm/{name}', pretrained='/path/to/{name}.pth')"
            ) from err
    model = timm.create_model(name, pretrained=False, **kwargs)
    if pretrained is not False and pretrained is not None:
        load_library_checkpoint(model, pretrained, f"timm/{name}")
    return model


def _probe(model: nn.Module) -> Tensor:
    """One random image: timm's input size where the model needs exactly it, else 64 px (or its minimum)."""
    cfg: Mapping[str, Any] = getattr(model, "pretrained_cfg", None) or {}
    channels, height, width = cfg.get("input_size", (3, 224, 224))
    if not cfg.get("fixed_input_size", False):
        low = cfg.get("min_input_size", (channels, 1, 1))
        height, width = max(64, low[1]), max(64, low[2])
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first.in_channels if first is not None else channels
    return torch.randn(1, channels, height, width, generator=torch.Generator().manual_seed(0))


def timm_backbone(
    name: str, pretrained: Pretrained = False, mode: Union[str, Mode] = "train", **kwargs: Any
) -> TimmBackbone:
    """timm's model ``name`` (a weights tag may follow: "resnet50.a1_in1k") as a converted backbone.

    Args:
        pretrained: False; True (timm's weights for the name's tag or its default, downloaded once by
            timm from the Hugging Face hub into its cache); a timm checkpoint path or a state dict,
            loaded strictly (offline). ``pretrained=True, pretrained_cfg_overlay=dict(file=path)``
            lets timm itself read a local file.
        mode: the initial mode of the converted blocks.
        **kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``; ``num_classes`` sizes the kept
            head, which only ``copy_head()`` uses).
    """
    model = _library_model(name, pretrained, kwargs)
    probe = _probe(model)
    with torch.no_grad():
        dims = model.eval().forward_features(probe).dim()
    layout = "NLC" if dims == 3 else "NHWC" if getattr(model, "output_fmt", "NCHW") == "NHWC" else "NCHW"
    return finish_library_backbone(TimmBackbone(model, name, layout), model, probe, mode)


register_library("timm", timm_backbone, timm_names)
