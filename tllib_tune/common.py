"""Small standard-library helpers every layer of the package may use (modules, models, datasets, utils).

* :func:`suggest` -- the one "did you mean" hint for an unknown name.
* :func:`atomic_write` -- write a file all or nothing (temporary file in the same folder, then rename).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Union

__all__ = ["suggest", "atomic_write"]

PathLike = Union[str, "os.PathLike[str]"]


def suggest(name: object, choices: Iterable[str], n: int = 3, cutoff: float = 0.5) -> str:
    """A hint for the unknown ``name``: "did you mean a, b?" naming the closest ``choices``, or, when
    none is close, "choose one of: ..." listing them all. Meant to end an error message."""
    choices = list(choices)
    close = difflib.get_close_matches(str(name).strip().lower(), choices, n=n, cutoff=cutoff)
    if close:
        return f"did you mean {', '.join(close)}?"
    return f"choose one of: {', '.join(choices)}"


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", suffix: str = ".tmp", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it is flushed, synced and
    renamed to ``path`` (``os.replace``, atomic on POSIX), on any exception it is removed and ``path``
    is left as it was. Parent folders are created.

    Example::

        with atomic_write("run/best.pt") as f:
            torch.save(state, f)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
