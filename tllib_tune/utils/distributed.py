"""The process layout under torchrun (or a single process) and the rank-0-first pattern.

:class:`ProcessEnv` reads torchrun's ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``; :func:`main_process_first`
lets the main process do a step first (download weights, generate or extract a data set) while the
others wait, then lets the others repeat it on the finished files.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, Mapping, Optional

import torch.distributed as dist

__all__ = ["ProcessEnv", "main_process_first"]


@dataclass(frozen=True)
class ProcessEnv:
    """This process's place among ``world_size`` processes (1 and rank 0 without torchrun)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_environ(cls, environ: Optional[Mapping[str, str]] = None) -> ProcessEnv:
        """The layout torchrun describes in the environment (``os.environ`` unless given)."""
        environ = os.environ if environ is None else environ
        return cls(
            world_size=int(environ.get("WORLD_SIZE", "1")),
            rank=int(environ.get("RANK", "0")),
            local_rank=int(environ.get("LOCAL_RANK", "0")),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every process (a no-op in a single process or before the process group exists)."""
        if self.distributed and dist.is_available() and dist.is_initialized():
            dist.barrier()


@contextlib.contextmanager
def main_process_first(env: ProcessEnv) -> Iterator[None]:
    """Run the block on the main process first, then on the others.

    The other processes wait at a barrier until the main one has left the block (normally or with an
    exception), so that a download or a generated data set is in place before they look for it::

        with main_process_first(env):
            dataset = get_dataset("cub200", root, download=True)
    """
    if not env.is_main:
        env.barrier()
    try:
        yield
    finally:
        if env.is_main:
            env.barrier()
