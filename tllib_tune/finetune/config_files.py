"""Config files: YAML mappings of :class:`~tllib_tune.finetune.config.FinetuneConfig` field names to
values, given by path or by the name of a shipped one ("quick_start", "paper/cub200_tune").

The shipped files live in the repository's ``configs/`` folder; a wheel carries the same files as package
data in ``tllib_tune/configs/`` (setup.py maps the folder there), so a name resolves in a source checkout
and after ``pip install`` alike. A file's values become the defaults of a run and flags override them
(timm's ``-c`` pattern, see :mod:`tllib_tune.finetune.cli`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Union

from ..common import suggest
from .config import config_fields
from .errors import ConfigError

__all__ = ["QUICK_START", "config_dirs", "list_configs", "find_config", "read_config_file"]

#: The offline demo's settings (the command line's --quick-start).
QUICK_START = "quick_start"
#: Keys a file may not set: they say where settings come from, not what they are.
_NOT_IN_FILES = ("config", "quick_start")


def config_dirs() -> List[Path]:
    """Where shipped config files are looked for: the installed package data, then a checkout's configs/."""
    package = Path(__file__).resolve().parents[1]
    return [d for d in (package / "configs", package.parent / "configs") if d.is_dir()]


def list_configs() -> List[str]:
    """The names of the shipped config files, e.g. ["paper/cub200_tune", "quick_start"]."""
    names = set()
    for folder in config_dirs():
        names.update(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml"))
    return sorted(names)


def find_config(name: Union[str, os.PathLike]) -> Path:
    """The file ``name`` (a path), or the shipped config of that name (".yaml" optional)."""
    path = Path(name)
    if path.is_file():
        return path
    stem = str(name)[: -len(".yaml")] if str(name).endswith(".yaml") else str(name)
    for folder in config_dirs():
        candidate = folder / f"{stem}.yaml"
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"config file {str(name)!r} not found: give a YAML file or a shipped config; "
        f"{suggest(stem, list_configs())}",
        argument="config",
    )


def read_config_file(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The settings of a config file, each converted and checked on its own; :class:`ConfigError`
    (``source`` = the path) names the file and the key of an unknown key or a bad value."""
    import yaml  # PyYAML, an install requirement; imported here because only config files need it

    source = str(path)
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot be read ({exc})", argument="config", source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{source}: not valid YAML ({' '.join(str(exc).split())})", argument="config", source=source
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping of settings (key: value lines), got {type(data).__name__}",
            argument="config",
            source=source,
        )
    fields = {f.name: f for f in config_fields() if f.name not in _NOT_IN_FILES}
    values = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(
                f"{source}: unknown key {key!r}; {suggest(key, fields)}", argument=str(key), source=source
            )
        try:
            values[key] = fields[key].convert(value)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}", argument=key, source=source) from None
    return values
