"""What keeps a converted model's checkpoints the original model's: the placeholder left at each moved
BatchNorm's place, and the state-dict hooks that rename the blocks' keys back.

After :func:`~tllib_tune.modules.convert.convert_convbn`, the block at a convolution's place ``<conv>`` owns
``<conv>.conv.*`` and ``<conv>.bn.*``; the BatchNorm's place ``<bn>`` holds a :class:`MovedBatchNorm`
without state. :class:`SaveKeys` (a state-dict post-hook) and :class:`LoadKeys` (a load pre-hook) sit on
the lowest common ancestor of each pair, the lowest module whose state dict holds both places' keys (a
child's load sees only its own prefix), and map ``<conv>.conv.X <-> <conv>.X``, ``<conv>.bn.X <-> <bn>.X``;
SaveKeys also restores the original key order. Both are plain picklable objects (torch.save, deepcopy).
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

from torch import Tensor, nn

from .support import normalization_only

__all__ = ["MovedBatchNorm", "SaveKeys", "LoadKeys"]

# (block path, BatchNorm path, block's operator attribute), relative to the hooked ancestor
PairPaths = Tuple[str, str, str]

# What a placeholder answers for the BatchNorm it stands for (reads only: the state lives in the block).
_DELEGATED = frozenset(
    ("weight", "bias", "running_mean", "running_var", "num_batches_tracked", "eps", "momentum")
    + ("num_features", "affine", "track_running_stats", "act", "drop")
)


class MovedBatchNorm(nn.Module):
    """Stands where a BatchNorm was before it moved into the ConvBN/LinearBN block at ``block``.

    Holds no state of its own (the BatchNorm's parameters and buffers are the block's ``.bn``), passes its
    input through, and applies the BatchNorm's own ``drop`` and ``act`` after it when it has them (timm's
    BatchNormAct2d). Reading ``weight``, ``running_var``, ``num_features`` ... returns the BatchNorm's.
    """

    def __init__(self, bn: nn.Module, block: str) -> None:
        super().__init__()
        object.__setattr__(self, "_bn", bn)  # a reference, not a child: no duplicate state or modules
        self.block = block
        self.training = bn.training
        # the block computes only the normalisation of a BatchNorm that does more (timm's BatchNormAct2d)
        self.extras = ("drop", "act") if normalization_only(bn) is not None else ()

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in _DELEGATED and "_bn" in self.__dict__:
                return getattr(self.__dict__["_bn"], name)
            raise

    def forward(self, input: Tensor) -> Tensor:  # the name BatchNorm's forward has (bn(input=x))
        x, bn = input, self.__dict__["_bn"]
        for name in self.extras:
            extra = getattr(bn, name, None)
            if extra is not None:
                x = extra(x)
        return x

    def extra_repr(self) -> str:
        return f"{type(self.__dict__['_bn']).__name__} moved into {self.block!r}"


def _renamer(mapping: Dict[str, str], key: str) -> str:
    """``key`` with its longest leading path found in ``mapping`` replaced (``key`` when none is)."""
    path = key
    while path:
        if path in mapping:
            return mapping[path] + key[len(path) :]
        path = path.rpartition(".")[0]
    return key


class SaveKeys:
    """State-dict post-hook: ``<block>.<op>.X -> <block>.X`` and ``<block>.bn.X -> <bn>.X``, keys (and
    their metadata) in the unconverted model's order."""

    def __init__(self, pairs: Sequence[PairPaths]) -> None:
        self.pairs = list(pairs)

    def __call__(self, module: nn.Module, state_dict: Dict[str, Any], prefix: str, metadata: Any) -> None:
        mapping = {}
        for block, bn, op in self.pairs:
            mapping[f"{prefix}{block}.{op}"] = prefix + block
            mapping[f"{prefix}{block}.bn"] = prefix + bn
        # the module's own keys are the last ones written
        items = [(_renamer(mapping, key), state_dict.pop(key)) for key in _tail(state_dict, prefix)]
        order = _preorder(module, prefix)
        items.sort(key=lambda item: _module_index(order, item[0]))  # stable: a module's keys keep theirs
        state_dict.update(items)
        meta = getattr(state_dict, "_metadata", None)
        if meta is not None:  # one entry per module, the sub-modules' last
            for key in _tail(meta, prefix):
                new = _renamer(mapping, key)
                if new != key:
                    meta[new] = meta.pop(key)


def _tail(entries: Dict[str, Any], prefix: str) -> List[str]:
    """The last keys of ``entries`` that start with ``prefix``, in order (a module's own, in state_dict)."""
    tail: List[str] = []
    for key in reversed(entries):
        if not key.startswith(prefix):
            break
        tail.append(key)
    return tail[::-1]


def _preorder(module: nn.Module, prefix: str) -> Dict[str, int]:
    """Each sub-module path (with ``prefix``) -> its position in state_dict's (pre-order) walk."""
    names = (name for name, _ in module.named_modules(prefix=prefix.rstrip("."), remove_duplicate=False))
    return {name: i for i, name in enumerate(names)}


def _module_index(order: Dict[str, int], key: str) -> int:
    """Pre-order position of the module owning ``key``: its longest registered path prefix."""
    path = key.rpartition(".")[0]
    while path not in order and path:
        path = path.rpartition(".")[0]
    return order.get(path, 0)


class LoadKeys:
    """Load pre-hook: ``<block>.X -> <block>.<op>.X`` (the operator's own tensors) and
    ``<bn>.* -> <block>.bn.*``, so that an unconverted model's checkpoint loads strictly."""

    def __init__(self, pairs: Sequence[PairPaths]) -> None:
        self.pairs = list(pairs)

    def __call__(self, module: nn.Module, state_dict: Dict[str, Any], prefix: str, *args: Any) -> None:
        blocks = {prefix + block: op for block, _, op in self.pairs}
        norms = {prefix + bn: f"{prefix}{block}.bn" for block, bn, _ in self.pairs}
        for key in list(state_dict):
            owner, _, name = key.rpartition(".")
            if owner in blocks:  # the operator's own tensor, e.g. <conv>.weight
                new = f"{owner}.{blocks[owner]}.{name}"
            else:
                new = _renamer(norms, key)
            if new != key and new not in state_dict:
                state_dict[new] = state_dict.pop(key)
