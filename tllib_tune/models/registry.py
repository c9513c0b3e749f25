"""The model registry: ``@register_model`` makes an architecture a public builder; get_model finds it.

An architecture is written once, as a function named after the model that builds it with random weights::

    @register_model
    def resnet50(**kwargs) -> ResNet:
        \"\"\"ResNet-50 (2048 features).\"\"\"
        return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)

The decorator replaces it by the builder users call, ``resnet50(pretrained=False, mode="train",
progress=True, **kwargs)`` (weights loaded, blocks switched, ``model.arch`` set), records it for
:func:`get_model` / :func:`list_models` and appends its name to the defining module's ``__all__`` (so the
package re-exports it with ``from .resnet import *``, as timm and torchvision do).

Other libraries' models are reached by a prefix, ``get_model("torchvision/efficientnet_b0")`` or
``get_model("timm/resnet50d")``: a module registers one with :func:`register_library`.
"""

from __future__ import annotations

import fnmatch
import inspect
import sys
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Union

from torch import nn

from ..common import suggest
from ..modules.convbn import Mode
from .weights import Pretrained, finish_model

__all__ = [
    "register_model",
    "register_library",
    "registered_in",
    "list_models",
    "get_model",
    "check_model",
]

_BUILDER_ARGS = """

    Args:
        pretrained: False (random weights), True (torchvision's default ImageNet weights, downloaded once
            and cached by torch.hub), a torchvision weights name such as "IMAGENET1K_V1", a local
            checkpoint path (torchvision, timm or tllib_tune format) or a state dict.
        mode: the initial mode of every ConvBN block ("train", "eval", "tune" or "deploy").
        progress: show a progress bar while downloading.
        **kwargs: passed to the architecture's class (e.g. ``num_classes``, the size of the kept head).
"""


class Library(NamedTuple):
    """Another library's models: ``build(name, pretrained=..., **kwargs)`` and the ``names()`` it builds."""

    build: Callable[..., nn.Module]
    names: Callable[[], List[str]]


_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}
_LIBRARIES: Dict[str, Library] = {}


def register_model(architecture: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Turn ``architecture(**kwargs) -> model`` into the public builder of the same name and register it."""
    name = architecture.__name__
    if name in _REGISTRY:
        raise ValueError(
            f"model {name!r} is registered twice ({_REGISTRY[name].__module__}, {architecture.__module__})"
        )

    def builder(
        pretrained: Pretrained = False, mode: Union[str, Mode] = "train", progress: bool = True, **kwargs: Any
    ) -> nn.Module:
        model = architecture(**kwargs)
        model.arch = name
        return finish_model(model, pretrained=pretrained, mode=mode, progress=progress)

    builder.__name__ = builder.__qualname__ = name
    builder.__module__ = architecture.__module__
    builder.__doc__ = inspect.cleandoc(architecture.__doc__ or name) + _BUILDER_ARGS
    builder.__annotations__["return"] = architecture.__annotations__.get("return", nn.Module)
    _REGISTRY[name] = builder
    module = sys.modules[architecture.__module__]
    if not hasattr(module, "__all__"):
        module.__all__ = []
    module.__all__.append(name)
    return builder


def register_library(prefix: str, build: Callable[..., nn.Module], names: Callable[[], List[str]]) -> None:
    """Make ``get_model(f"{prefix}/<name>")`` call ``build(name, pretrained=..., **kwargs)``; ``names()``
    lists what it builds (for :func:`list_models` and the did-you-mean hint)."""
    _LIBRARIES[prefix] = Library(build, names)


def _split(name: str) -> tuple:
    """(library prefix or "", name within it), lower-cased."""
    key = name.strip().lower()
    prefix, sep, rest = key.partition("/")
    return (prefix, rest) if sep else ("", key)


def check_model(name: str) -> str:
    """``name`` normalised (stripped, lower case) if :func:`get_model` builds it, else ValueError with a hint.

    For "torchvision/..." and "timm/..." this imports that library to read its list of models.
    """
    if not isinstance(name, str):
        raise ValueError(f"unknown model {name!r}: a model name is a string; {suggest(name, list_models())}")
    prefix, rest = _split(name)
    if not prefix:
        if rest not in _REGISTRY:
            raise ValueError(f"unknown model {name!r}; {suggest(rest, list_models(), n=5)}{_elsewhere(rest)}")
        return rest
    if prefix not in _LIBRARIES:
        raise ValueError(
            f"unknown model {name!r}: no library {prefix!r}; {suggest(prefix, sorted(_LIBRARIES))}"
        )
    names = _LIBRARIES[prefix].names()
    if rest.partition(".")[0] not in names:  # timm names may carry a weights tag: "resnet50.a1_in1k"
        hint = suggest(rest, names, n=5)
        if not hint.startswith("did you mean"):  # rather than listing a thousand names
            hint = f"list them with list_models({prefix + '/*'!r})"
        raise ValueError(f"unknown model {name!r}: {prefix} has no model {rest!r}; {hint}")
    return f"{prefix}/{rest}"


def _elsewhere(name: str) -> str:
    """A hint naming the libraries that have a model ``name`` (e.g. torchvision's efficientnet_b0)."""
    found = [prefix for prefix, library in sorted(_LIBRARIES.items()) if name in library.names()]
    if not found:
        return ""
    calls = " or ".join(f"get_model('{prefix}/{name}')" for prefix in found)
    return f" ({' and '.join(found)} {'have' if len(found) > 1 else 'has'} it: {calls})"


def registered_in(module: str) -> List[str]:
    """The names of the builders defined in ``module`` (a module's ``__name__``), sorted."""
    return sorted(name for name, builder in _REGISTRY.items() if builder.__module__ == module)


def list_models(pattern: Optional[str] = None) -> List[str]:
    """Names :func:`get_model` accepts, sorted.

    Without ``pattern``: this package's own backbones. ``pattern`` filters with shell wildcards
    (``"resnet*"``); a library prefix lists that library's models instead: ``list_models("timm/*")``,
    ``list_models("torchvision/*mobilenet*")``.
    """
    if pattern is None:
        return sorted(_REGISTRY)
    prefix, rest = _split(pattern)
    if prefix in _LIBRARIES:
        return sorted(f"{prefix}/{n}" for n in fnmatch.filter(_LIBRARIES[prefix].names(), rest))
    return fnmatch.filter(sorted(_REGISTRY), pattern.strip().lower())


def get_model(name: str, pretrained: Pretrained = False, **kwargs: Any) -> nn.Module:
    """Build the backbone ``name`` (see :func:`list_models`); other arguments go to its builder.

    ``"torchvision/<name>"`` and ``"timm/<name>"`` build that library's model as a backbone (see
    :mod:`tllib_tune.models.external`). An unknown name raises ValueError naming the closest known ones.
    """
    key = check_model(name)
    prefix, rest = _split(key)
    if prefix:
        return _LIBRARIES[prefix].build(rest, pretrained=pretrained, **kwargs)
    return _REGISTRY[key](pretrained=pretrained, **kwargs)
