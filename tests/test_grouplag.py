"""Consumer lag status (Burrow style) from samples, table-driven."""

from __future__ import annotations

import pytest

from collector.grouplag import OK, STALL, STOP, WARN, LagSample, rates, status


def samples(*rows: tuple[int, int, int]) -> list[LagSample]:
    """(acked, backlog, consumers) every 5 s."""
    return [LagSample(5.0 * i, acked, backlog, 0.0, consumers) for i, (acked, backlog, consumers) in enumerate(rows)]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([(10, 0, 1), (20, 0, 1), (30, 0, 1)], OK),  # keeping up
        ([(10, 5, 1), (20, 3, 1), (30, 4, 1)], OK),  # a backlog, not growing every step
        ([(10, 5, 1), (20, 8, 1), (30, 12, 1)], WARN),  # acknowledging, but falling behind
        ([(10, 5, 1), (10, 8, 1), (10, 12, 1)], STALL),  # connected, acknowledging nothing
        ([(10, 5, 1), (10, 5, 1), (10, 5, 1)], STALL),  # stuck with entries waiting
        ([(10, 5, 1), (10, 8, 0)], STOP),  # nobody connected and entries wait
        ([(10, 0, 0), (10, 0, 0)], OK),  # nobody connected and nothing waits
        ([(10, 5, 1), (10, 8, 1)], OK),  # too few samples to call a trend
        ([], OK),
    ],
)
def test_status(rows: list[tuple[int, int, int]], expected: str) -> None:
    assert status(samples(*rows)) == expected


def test_rates() -> None:
    arrival, acks = rates(samples((100, 10, 1), (150, 30, 1), (200, 50, 1)))
    assert acks == pytest.approx(10.0)  # 100 acknowledged in 10 s
    assert arrival == pytest.approx(14.0)  # 100 acknowledged + 40 more waiting, in 10 s
    assert rates(samples((1, 1, 1))) == (0.0, 0.0)
