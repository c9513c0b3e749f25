"""``get_model("torchvision/<name>")``: any torchvision classification model as a backbone, converted.

The feature map is the input of the model's last average pooling: an ``nn.AdaptiveAvgPool2d``, a call of
``F.adaptive_avg_pool2d`` or a mean over H and W (ShuffleNet, MNASNet), found in the model's own forward
traced by torchvision's feature extraction (``get_graph_node_names`` / ``create_feature_extractor``, with
Conv and BatchNorm modules as leaves), so that what comes before the pooling (DenseNet's final ReLU)
stays in and the rest (flatten, dropout, classifier) goes to the head. The split happens before the
Conv -> BatchNorm conversion.

State dict: ``body.<key>`` for the layers up to the pooling and ``head.<key>`` for the classifier, each
``<key>`` torchvision's own; ``pretrained=`` reads a torchvision checkpoint of the model.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

import torch
from torch import Tensor, fx, nn

from ..modules.convbn import Mode
from .external import LibraryBackbone, finish_library_backbone, load_library_checkpoint, view_input
from .registry import register_library
from .weights import Pretrained, WeightsError, download_failed, is_weights_name, torchvision_weights

__all__ = ["TorchvisionBackbone", "torchvision_backbone", "torchvision_names"]

_LAST_NODES = 24


class TorchvisionBackbone(LibraryBackbone):
    """A torchvision model split at its global pooling: ``body`` (a torchvision feature extractor, the
    model's layers up to the pooling) and ``head`` (the rest, taking the pooled features)."""

    library = "torchvision"

    def __init__(self, body: nn.Module, name: str) -> None:
        super().__init__(body, name)
        self._head_problem = "it was not split off"

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)["features"]

    def pooled_head(self) -> Optional[nn.Module]:
        return getattr(self, "head", None)


def torchvision_names() -> List[str]:
    """torchvision's classification models (what ``get_model("torchvision/<name>")`` builds)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _is_global(size: Any) -> bool:
    return size in (1, (1, 1), [1, 1])


def _pooling(node: fx.Node, model: nn.Module) -> Optional[Tuple[bool, bool]]:
    """For an average pooling node: (pools to 1x1, keeps the H and W dims); None for any other node."""
    import torch.nn.functional as F

    if node.op == "call_module" and isinstance(model.get_submodule(node.target), nn.AdaptiveAvgPool2d):
        return _is_global(model.get_submodule(node.target).output_size), True
    if node.op == "call_function" and node.target in (
        F.adaptive_avg_pool2d,
        torch._C._nn.adaptive_avg_pool2d,
    ):
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return _is_global(size), True
    is_mean = (node.op == "call_method" and node.target == "mean") or (
        node.op == "call_function" and node.target is torch.mean
    )
    if is_mean:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if isinstance(dims, (list, tuple)) and sorted(d % 4 for d in dims) == [2, 3]:
            keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
            return True, bool(keepdim)
    return None


def _split(model: nn.Module, name: str) -> Tuple[nn.Module, fx.Graph, fx.Node, fx.Node, Tuple[bool, bool]]:
    """(body, traced graph, pooling node, output node, pooling kind) of the torchvision model."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    _, names = get_graph_node_names(model.eval())
    # The pooling is among the last nodes (flatten, dropout, classifier follow it): naming only those as
    # outputs keeps torchvision's tracing fast; the whole graph is traced again if it is not.
    for returned in (names[-_LAST_NODES:], names):
        traced = create_feature_extractor(model, return_nodes={n: n for n in returned})
        graph = traced.eval_graph
        nodes = dict(next(n for n in graph.nodes if n.op == "output").args[0])
        qualname = {node: q for q, node in nodes.items()}
        pools = [(node, kind) for node in graph.nodes if (kind := _pooling(node, model)) is not None]
        if pools and pools[-1][0].args[0] in qualname:
            break
    if not pools:
        raise ValueError(
            f"torchvision/{name}: its forward has no average pooling (nn.AdaptiveAvgPool2d, "
            "F.adaptive_avg_pool2d or a mean over H and W) to take the feature map from; models that "
            "pool otherwise (a ViT's class token) are not supported as backbones"
        )
    pool, kind = pools[-1]
    body = create_feature_extractor(model, return_nodes={qualname[pool.args[0]]: "features"})
    return body, graph, pool, nodes[names[-1]], kind


def _tail(model: nn.Module, graph: fx.Graph, pool: fx.Node, output: fx.Node, shape: Tuple[int, ...]):
    """The nodes after ``pool`` as a module of the pooled features, or None if they need more."""
    tail = fx.Graph()
    features = tail.placeholder("features")
    env = {pool: features}
    after = False
    for node in graph.nodes:
        if node is pool:
            after = True
        elif after and node.op not in ("placeholder", "output"):
            if all(n in env for n in node.all_input_nodes):
                env[node] = tail.node_copy(node, lambda n: env[n])
    if output not in env:
        return None
    tail.output(env[output])
    view_input(tail, features, shape)
    head = fx.GraphModule(model, tail, class_name="TorchvisionHead")
    head.graph.eliminate_dead_code()
    head.delete_all_unused_submodules()
    head.recompile()
    return head


def _library_model(name: str, pretrained: Pretrained, progress: bool, kwargs: Any) -> nn.Module:
    import torchvision

    if pretrained is True or is_weights_name(pretrained):
        weights = torchvision_weights(name, "DEFAULT" if pretrained is True else pretrained)
        try:
            return torchvision.models.get_model(name, weights=weights, progress=progress, **kwargs)
        except OSError as err:  # no network, a refused connection, an unwritable cache
            call = f"get_model('torchvision/{name}', pretrained='{{path}}')"
            raise download_failed(weights, name, err, call) from err
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    if pretrained is not False and pretrained is not None:
        load_library_checkpoint(model, pretrained, f"torchvision/{name}")
    return model


def _probe(name: str) -> Tensor:
    """One random image of 64 px, or of the model's minimum size from its weights' metadata."""
    try:
        side = max(64, *torchvision_weights(name).meta.get("min_size", (1, 1)))
    except WeightsError:
        side = 64
    return torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))


def torchvision_backbone(
    name: str,
    pretrained: Pretrained = False,
    mode: Union[str, Mode] = "train",
    progress: bool = True,
    **kwargs: Any,
) -> TorchvisionBackbone:
    """torchvision's classification model ``name`` as a converted backbone (see the module doc).

    Args:
        pretrained: False; True (torchvision's DEFAULT weights, downloaded once into torch.hub's cache);
            a weights name such as "IMAGENET1K_V2"; a torchvision checkpoint path or a state dict,
            loaded strictly (offline).
        mode: the initial mode of the converted blocks.
        progress: show a progress bar while downloading.
        **kwargs: passed to ``torchvision.models.get_model`` (e.g. ``num_classes`` sizes the kept head,
            which only ``copy_head()`` uses).
    """
    model = _library_model(name, pretrained, progress, kwargs)
    body, graph, pool, output, (is_global, keepdim) = _split(model, name)
    backbone = TorchvisionBackbone(body, name)

    def make_head(channels: int) -> None:
        if not is_global:
            backbone._head_problem = "its pooling does not pool to 1x1 (e.g. VGG's 7x7 grid)"
            return
        head = _tail(model, graph, pool, output, (channels, 1, 1) if keepdim else (channels,))
        if head is None:
            backbone._head_problem = "its classifier uses more than the pooled features"
        else:
            backbone.keep_classifier(head, "head")

    return finish_library_backbone(backbone, model, _probe(name), mode, make_head)


register_library("torchvision", torchvision_backbone, torchvision_names)
