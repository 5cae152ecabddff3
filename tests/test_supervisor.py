"""``meshscope.supervisor.Liveness``: when ``up`` starts a child again, from its probes alone."""

from __future__ import annotations

import pytest

from meshscope.supervisor import (
    EXITED,
    KEEP,
    LOADING,
    READY,
    RESTART,
    STARTING,
    UNRESPONSIVE,
    WAIT,
    Liveness,
    Probe,
)


@pytest.mark.parametrize(
    ("probes", "decisions"),
    [
        ([READY, READY], [KEEP, KEEP]),
        ([EXITED], [RESTART]),
        # one slow answer, or two, is not death; three in a row is
        ([READY, UNRESPONSIVE, READY, UNRESPONSIVE, UNRESPONSIVE, READY], [KEEP, WAIT, KEEP, WAIT, WAIT, KEEP]),
        ([READY, UNRESPONSIVE, UNRESPONSIVE, UNRESPONSIVE], [KEEP, WAIT, WAIT, RESTART]),
        # loading is alive, however long it takes, and it clears the failures before it
        ([UNRESPONSIVE, UNRESPONSIVE] + [LOADING] * 50 + [UNRESPONSIVE], [WAIT, WAIT] + [WAIT] * 50 + [WAIT]),
        ([LOADING, EXITED], [WAIT, RESTART]),
        # not listening yet: waited for within the start grace
        ([STARTING] * 10 + [READY], [WAIT] * 10 + [KEEP]),
        # once it was ready, refusing connections counts as a failure
        ([READY, STARTING, STARTING, STARTING], [KEEP, WAIT, WAIT, RESTART]),
    ],
)
def test_liveness_is_the_process_plus_several_failed_checks(probes: list[str], decisions: list[str]) -> None:
    liveness = Liveness(failures_to_restart=3, start_grace_s=60)
    liveness.started(0.0)
    assert [liveness.observe(Probe(p), float(i)) for i, p in enumerate(probes)] == decisions


def test_a_child_that_never_listens_is_restarted_after_the_start_grace() -> None:
    liveness = Liveness(failures_to_restart=3, start_grace_s=10)
    liveness.started(100.0)
    assert liveness.observe(Probe(STARTING), 105.0) == WAIT
    assert [liveness.observe(Probe(STARTING), t) for t in (111.0, 112.0, 113.0)] == [WAIT, WAIT, RESTART]
    liveness.started(200.0)  # started again: a grace of its own
    assert liveness.observe(Probe(STARTING), 205.0) == WAIT
