"""Pretrained weights: torchvision downloads, local checkpoints in three formats, export to torchvision.

Our backbones name a Conv + BatchNorm pair as one ConvBN block (``layer1.0.conv1.conv`` and
``layer1.0.conv1.bn``) where torchvision has two modules (``layer1.0.conv1`` and ``layer1.0.bn1``). The
translation is one table per model family, :data:`KEY_RULES`: each row maps a module path of ours to
torchvision's by a regular expression. Applied to our model's own state_dict keys it yields a one-to-one
key map, used forwards to export and inverted to import; nothing else renames keys.

Formats read by :func:`load_weights`, detected from the keys:

* torchvision: what ``torchvision.models.resnet50().state_dict()`` holds (and torch.hub downloads);
* timm (ResNet family): the same keys as torchvision, often without ``num_batches_tracked`` and saved by
  timm's training script inside ``{"state_dict": ...}``, sometimes with ``module.`` (DDP) or
  ``_orig_mod.`` (torch.compile) prefixes, sometimes as ``.safetensors``;
* ours: ``model.state_dict()`` of a tllib_tune backbone.

Missing ``num_batches_tracked`` entries are tolerated (they only matter for BatchNorm with
momentum=None, and are then counted from zero); everything else must match, or the error lists what did
not and why that usually happens.
"""

from __future__ import annotations

import os
import pickle
import re
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..common import atomic_write
from ..modules.convbn import Mode
from ..modules.modes import set_mode

__all__ = [
    "Pretrained",
    "WeightsError",
    "KEY_RULES",
    "torchvision_key_map",
    "to_torchvision_state_dict",
    "save_torchvision_state_dict",
    "read_checkpoint",
    "read_state",
    "extract_state_dict",
    "mismatches",
    "load_exactly",
    "load_weights",
    "torchvision_weights",
    "download_failed",
    "download_weights",
    "is_weights_name",
    "load_pretrained",
    "finish_model",
]

#: What a builder's ``pretrained`` accepts: False, True (torchvision's default ImageNet weights), the
#: name of a torchvision weights entry ("IMAGENET1K_V1"), a checkpoint path, or a state dict.
Pretrained = Union[bool, str, "os.PathLike[str]", Mapping[str, Any]]

_BLOCK = r"(layer\d+\.\d+)"  # a ResNet block: layer<stage>.<index>
_REG = r"layer(\d+)\.(\d+)"  # a RegNet block; torchvision calls it trunk_output.block<s>.block<s>-<i>
_TV_REG = r"trunk_output.block\1.block\1-\2"

#: Per family: (our module path, torchvision module path) as (regex, replacement), matched in full
#: against the module part of a state_dict key (everything before the last dot).
KEY_RULES: Dict[str, List[Tuple[str, str]]] = {
    "resnet": [
        (r"conv1\.conv", "conv1"),
        (r"conv1\.bn", "bn1"),
        (_BLOCK + r"\.conv(\d)\.conv", r"\1.conv\2"),
        (_BLOCK + r"\.conv(\d)\.bn", r"\1.bn\2"),
        (_BLOCK + r"\.downsample\.conv", r"\1.downsample.0"),
        (_BLOCK + r"\.downsample\.bn", r"\1.downsample.1"),
        (r"fc", "fc"),
    ],
    "regnet": [
        (r"conv1\.conv", "stem.0"),
        (r"conv1\.bn", "stem.1"),
        (_REG + r"\.conv_([abc])\.conv", _TV_REG + r".f.\3.0"),
        (_REG + r"\.conv_([abc])\.bn", _TV_REG + r".f.\3.1"),
        (_REG + r"\.se\.(fc[12])", _TV_REG + r".f.se.\3"),
        (_REG + r"\.downsample\.conv", _TV_REG + r".proj.0"),
        (_REG + r"\.downsample\.bn", _TV_REG + r".proj.1"),
        (r"fc", "fc"),
    ],
}

# Containers that wrap a state dict in training checkpoints (timm's train.py, TLlib, ours), in order.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema")
# Prefixes added by DistributedDataParallel / DataParallel and by torch.compile.
_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 12


class WeightsError(RuntimeError):
    """Weights could not be downloaded, read or matched to the model."""


# --------------------------------------------------------------------------------------------------
# Key mapping and export
# --------------------------------------------------------------------------------------------------
def _family(model: nn.Module) -> str:
    family = getattr(model, "family", None)
    if family not in KEY_RULES:
        raise WeightsError(
            f"{type(model).__name__} has no torchvision key table (family={family!r}); "
            f"supported families: {', '.join(sorted(KEY_RULES))}"
        )
    return family


def torchvision_key_map(model: nn.Module) -> OrderedDict[str, str]:
    """Map every state_dict key of ``model`` (ours) to torchvision's key for the same tensor."""
    rules = [(re.compile(pattern), replacement) for pattern, replacement in KEY_RULES[_family(model)]]
    mapping: OrderedDict[str, str] = OrderedDict()
    for key in model.state_dict().keys():
        module_path, _, leaf = key.rpartition(".")
        for pattern, replacement in rules:
            if pattern.fullmatch(module_path):
                mapping[key] = pattern.sub(replacement, module_path) + "." + leaf
                break
        else:
            raise WeightsError(f"no torchvision name for {key!r}: KEY_RULES[{_family(model)!r}] lacks a rule")
    if len(set(mapping.values())) != len(mapping):
        raise WeightsError(f"KEY_RULES[{_family(model)!r}] maps two keys to one torchvision key")
    return mapping


def to_torchvision_state_dict(model: nn.Module) -> OrderedDict[str, Tensor]:
    """``model``'s weights under torchvision's keys: ``torchvision.models.<arch>()`` loads them strictly.

    Values are the canonical (unfolded) tensors in every mode, detached.
    """
    state = model.state_dict()
    return OrderedDict((tv_key, state[key].detach()) for key, tv_key in torchvision_key_map(model).items())


def save_torchvision_state_dict(model: nn.Module, path: Union[str, os.PathLike[str]]) -> str:
    """Write :func:`to_torchvision_state_dict` to ``path`` atomically (temporary file, then rename)."""
    path = os.fspath(path)
    with atomic_write(path) as f:
        torch.save(to_torchvision_state_dict(model), f)
    return path


# --------------------------------------------------------------------------------------------------
# Reading checkpoints
# --------------------------------------------------------------------------------------------------
def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def extract_state_dict(obj: Any) -> OrderedDict[str, Tensor]:
    """The tensors of a checkpoint object, unwrapped and with ``module.``/``_orig_mod.`` prefixes removed.

    Accepts a state dict, a dict wrapping one under "state_dict", "model", "model_state_dict",
    "state_dict_ema" or "model_ema" (looked up in that order, nested too), or an ``nn.Module``.
    """
    for _ in range(4):
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if _is_state_dict(obj):
            break
        if not isinstance(obj, Mapping):
            raise WeightsError(
                f"a checkpoint must be a state dict (a dict of tensors), got {type(obj).__name__}"
            )
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and obj[k] is not None), None)
        if inner is None:
            keys = ", ".join(repr(k) for k in list(obj)[:_MAX_LISTED])
            raise WeightsError(
                f"no state dict in this checkpoint: its entries are {keys}; expected tensors, or one of "
                f"{', '.join(_WRAPPER_KEYS)} holding them"
            )
        obj = inner
    else:
        raise WeightsError("no state dict found in the checkpoint (nested too deeply)")
    state: OrderedDict[str, Tensor] = OrderedDict()
    for key, value in obj.items():
        state[_strip_prefixes(key)] = value
    if len(state) != len(obj):
        raise WeightsError("checkpoint keys collide after removing 'module.' / '_orig_mod.' prefixes")
    return state


def read_checkpoint(path: Union[str, os.PathLike[str]]) -> OrderedDict[str, Tensor]:
    """Read a ``.pth``/``.pt``/``.bin`` (torch.save) or ``.safetensors`` file and return its state dict.

    torch files are read with ``weights_only=True``: no code from the file runs.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist (pretrained= takes a file path)")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return extract_state_dict(load_file(path, device="cpu"))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):
            raise WeightsError(f"could not read {path!r} as a torch checkpoint (not one?): {err}") from err
        raise WeightsError(
            f"{path!r} holds Python objects besides tensors, which are not loaded for safety ({err}). If you "
            "trust the file, load it yourself with torch.load(path, weights_only=False) and pass the state "
            "dict: pretrained=state_dict"
        ) from err
    except (RuntimeError, EOFError) as err:
        raise WeightsError(
            f"could not read {path!r} as a torch checkpoint (truncated or not one?): {err}"
        ) from err
    return extract_state_dict(obj)


# --------------------------------------------------------------------------------------------------
# Loading into a model
# --------------------------------------------------------------------------------------------------
def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def _listing(title: str, keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f" ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return f"\n  {title} ({len(keys)}): {shown}{more}"


def _family_name(model: nn.Module) -> str:
    return {"resnet": "ResNet", "regnet": "RegNet"}.get(getattr(model, "family", None), type(model).__name__)


def _likely_cause(
    model: nn.Module,
    fmt: Optional[str],
    missing: List[str],
    unexpected: List[str],
    shapes: List[str],
    state: Mapping[str, Tensor],
) -> str:
    arch = getattr(model, "arch", None) or type(model).__name__
    if any(k.startswith(("backbone.", "bottleneck.", "head.")) for k in unexpected):
        return (
            "the file looks like a Classifier checkpoint (keys 'backbone.*', 'head.*'): load it with "
            "Classifier.load_state_dict, or keep only the 'backbone.' entries without that prefix"
        )
    if fmt is None:
        return (
            f"this is not a checkpoint of a torchvision/timm {_family_name(model)} or of tllib_tune: another "
            "library's naming or another model family"
        )
    if not missing and not unexpected and shapes and all(s.startswith("fc.") for s in shapes):
        classes = state["fc.weight"].shape[0] if "fc.weight" in state else "its"
        return f"the checkpoint's ImageNet head has another size: build the model with num_classes={classes}"
    return (
        f"the checkpoint was made for another architecture than {arch} (read as {fmt} format); check the "
        "model name and its width/groups settings"
    )


def load_weights(model: nn.Module, source: Union[str, os.PathLike[str], Mapping[str, Any]]) -> str:
    """Load a checkpoint (path or state dict) into ``model`` in whichever format it is; return the format.

    The format, "torchvision" (also timm's ResNets) or "tllib_tune", is detected from the keys. Any missing
    or unexpected key or shape mismatch raises :class:`WeightsError` listing them; nothing is loaded then.
    """
    state = read_state(source)
    ours = model.state_dict()
    to_tv = torchvision_key_map(model)
    from_tv = {tv: key for key, tv in to_tv.items()}
    keys = set(state)
    hits_ours, hits_tv = len(keys & set(ours)), len(keys & set(from_tv))
    if hits_ours == 0 and hits_tv == 0:
        raise WeightsError(
            f"unrecognised checkpoint for {getattr(model, 'arch', None) or type(model).__name__}: none of "
            f"its keys is a torchvision/timm key (e.g. {next(iter(from_tv))}) or a tllib_tune key "
            f"(e.g. {next(iter(ours))}).{_listing('checkpoint keys', sorted(keys))}\n  likely cause: "
            + _likely_cause(model, None, [], sorted(keys), [], state)
        )
    fmt = "tllib_tune" if hits_ours >= hits_tv else "torchvision"
    rename = {k: k for k in ours} if fmt == "tllib_tune" else from_tv
    translated = OrderedDict((rename.get(key, key), value) for key, value in state.items())

    def cause(missing: List[str], unexpected: List[str], shapes: List[str]) -> str:
        return _likely_cause(model, fmt, missing, unexpected, shapes, translated)

    load_exactly(model, translated, f"checkpoint (read as {fmt} format)", cause)
    return fmt


def read_state(
    source: Union[str, os.PathLike[str], Mapping[str, Any], nn.Module],
) -> OrderedDict[str, Tensor]:
    """The state dict of a checkpoint path (:func:`read_checkpoint`), a state dict or a module."""
    if isinstance(source, (Mapping, nn.Module)):
        return extract_state_dict(source)
    return read_checkpoint(source)


def mismatches(
    expected: Mapping[str, Tensor], given: Mapping[str, Tensor]
) -> Tuple[List[str], List[str], List[str]]:
    """(missing keys, unexpected keys, shape mismatches) of ``given`` against ``expected``.

    ``num_batches_tracked`` counters may be missing or extra (timm's checkpoints often lack them).
    """
    missing = [k for k in expected if k not in given and not _is_counter(k)]
    unexpected = [k for k in given if k not in expected and not _is_counter(k)]
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in given.items()
        if k in expected and v.shape != expected[k].shape
    ]
    return missing, unexpected, shapes


def load_exactly(
    model: nn.Module,
    state: Mapping[str, Tensor],
    what: str,
    cause: Callable[[List[str], List[str], List[str]], str],
    target: Optional[str] = None,
) -> None:
    """Load ``state`` into ``model`` if every key and shape fits (counters may be missing), else raise
    :class:`WeightsError` saying ``what`` did not fit ``target`` (default: the model's arch or class),
    listing the differences and ``cause(...)`` of them; nothing is loaded then."""
    expected = model.state_dict()
    missing, unexpected, shapes = mismatches(expected, state)
    if missing or unexpected or shapes:
        target = target or getattr(model, "arch", None) or type(model).__name__
        raise WeightsError(
            f"{what} does not fit {target}; nothing was loaded."
            + (_listing("missing keys", missing) if missing else "")
            + (_listing("unexpected keys", unexpected) if unexpected else "")
            + (_listing("shape mismatches", shapes) if shapes else "")
            + "\n  likely cause: "
            + cause(missing, unexpected, shapes)
        )
    result = model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    assert not result.unexpected_keys and all(_is_counter(k) for k in result.missing_keys), result


def torchvision_weights(arch: str, name: str = "DEFAULT") -> Any:
    """torchvision's weights entry ``name`` ("DEFAULT", "IMAGENET1K_V1", ...) for the model ``arch``."""
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(arch)
    except ValueError as err:
        raise WeightsError(f"torchvision has no weights for {arch!r}: {err}") from err
    choices = [w.name for w in enum]
    if name != "DEFAULT" and name not in choices:
        raise WeightsError(f"{arch} has no torchvision weights {name!r}; choose DEFAULT or one of {choices}")
    return enum.DEFAULT if name == "DEFAULT" else enum[name]


def download_failed(weights: Any, arch: str, err: Exception, call: str) -> WeightsError:
    """The error for a failed download of torchvision's ``weights``, saying how to work offline; ``call``
    shows the builder call, with ``{path}`` where the file's path goes."""
    filename = os.path.basename(weights.url)
    cache = os.path.join(torch.hub.get_dir(), "checkpoints")
    example = call.format(path="/path/to/" + filename)
    return WeightsError(
        f"could not download torchvision's {weights!r} for {arch} from {weights.url}: {err}.\n"
        f"Without network access, fetch that file on another machine and either pass its path, "
        f"{example}, or copy it to {os.path.join(cache, filename)} "
        "(torch.hub's cache; set TORCH_HOME to move it) and keep pretrained=True."
    )


def download_weights(arch: str, name: str = "DEFAULT", progress: bool = True) -> Dict[str, Tensor]:
    """torchvision's ImageNet weights for ``arch`` (``name`` such as "IMAGENET1K_V1"; default: torchvision's
    recommended ones), downloaded once into torch.hub's cache (``$TORCH_HOME/hub/checkpoints``)."""
    weights = torchvision_weights(arch, name)
    try:
        return weights.get_state_dict(
            progress=progress, check_hash=True, map_location="cpu", weights_only=True
        )
    except OSError as err:  # URLError / HTTPError, timeouts, refused connections, an unwritable cache
        raise download_failed(weights, arch, err, f"{arch}(pretrained='{{path}}')") from err


def is_weights_name(pretrained: Any) -> bool:
    """Whether ``pretrained`` names torchvision weights ("DEFAULT", "IMAGENET1K_V2") rather than a file."""
    return (
        isinstance(pretrained, str)
        and not os.path.exists(pretrained)
        and re.fullmatch(r"DEFAULT|[A-Z0-9_]+_V\d+", pretrained) is not None
    )


def load_pretrained(model: nn.Module, pretrained: Pretrained, progress: bool = True) -> Optional[str]:
    """Apply a builder's ``pretrained`` argument to ``model``; return the format loaded (None: nothing)."""
    if pretrained is False or pretrained is None:
        return None
    arch = getattr(model, "arch", None)
    if pretrained is True or is_weights_name(pretrained):
        if arch is None:
            raise WeightsError(
                f"{type(model).__name__} has no 'arch' name, so its torchvision weights are unknown"
            )
        name = "DEFAULT" if pretrained is True else pretrained
        return load_weights(model, download_weights(arch, name, progress=progress))
    if isinstance(pretrained, (str, os.PathLike, Mapping)):
        return load_weights(model, pretrained)
    raise TypeError(
        f"pretrained={pretrained!r}: use False, True, a torchvision weights name such as 'IMAGENET1K_V1', "
        "a checkpoint path or a state dict"
    )


def finish_model(
    model: nn.Module, pretrained: Pretrained = False, mode: Union[str, Mode] = "train", progress: bool = True
) -> nn.Module:
    """What every builder does after construction: load ``pretrained`` weights, then switch to ``mode``."""
    mode = Mode.parse(mode)
    load_pretrained(model, pretrained, progress=progress)
    if mode is not Mode.TRAIN:
        set_mode(model, mode)
    return model
