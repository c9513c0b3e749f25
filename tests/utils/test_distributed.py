"""tllib_tune.utils.distributed: the process layout from torchrun's variables, and main_process_first's
order (the main process works, then the others; a failure on the main process still releases them)."""

from __future__ import annotations

from typing import List

import pytest

from tllib_tune.utils.distributed import ProcessEnv, main_process_first


class RecordingEnv(ProcessEnv):
    """A process whose barrier is a recorded event instead of a collective call."""

    def __init__(self, rank: int, events: List[str]) -> None:
        super().__init__(world_size=2, rank=rank)
        object.__setattr__(self, "events", events)

    def barrier(self) -> None:
        self.events.append("barrier")


def test_layout_from_torchrun_variables():
    env = ProcessEnv.from_environ({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"})
    assert (env.world_size, env.rank, env.local_rank, env.is_main, env.distributed) == (4, 2, 0, False, True)
    single = ProcessEnv.from_environ({})
    assert (single.world_size, single.is_main, single.distributed) == (1, True, False)
    single.barrier()  # no process group: nothing to wait for


@pytest.mark.parametrize("rank, expected", [(0, ["work", "barrier"]), (1, ["barrier", "work"])])
def test_the_main_process_goes_first(rank, expected):
    events: List[str] = []
    with main_process_first(RecordingEnv(rank, events)):
        events.append("work")
    assert events == expected  # one barrier each: the others wait until the main process is done


def test_a_failure_on_the_main_process_still_releases_the_others():
    events: List[str] = []
    with pytest.raises(OSError), main_process_first(RecordingEnv(0, events)):
        raise OSError("download failed")
    assert events == ["barrier"]
