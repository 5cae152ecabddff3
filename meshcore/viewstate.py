"""What state an edge or a link is in, from its figures, its relay's report and how fresh both are; no I/O.

``meshcore.freshness`` says how old each source is; this module turns that and the
figures into the states the map, the edge table, the live feed and the alerts show:
healthy, idle, degraded, failing, down, and unknown (no fresh data, shown as last
known, with why), each with its cause, decided here and nowhere else, for the map,
the API, ``/ws/live`` and the alerts alike: a link whose relay cannot report is
``unknown``, not down; an edge whose link is down or refused is ``failing`` from
the moment the link is, whatever its history says. And why a peer refuses a
relay's clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from meshcore.freshness import UNKNOWN, Freshness

# ---- view states ---------------------------------------------------------------------------------

HEALTHY, IDLE, DEGRADED, FAILING, DOWN = "healthy", "idle", "degraded", "failing", "down"


@dataclass(frozen=True, slots=True)
class ViewState:
    name: str
    label: str
    meaning: str


STATES: Mapping[str, ViewState] = {
    s.name: s
    for s in (
        ViewState(HEALTHY, "healthy", "fresh data, errors and lag under the first thresholds"),
        ViewState(IDLE, "idle", "fresh data, no traffic in the window"),
        ViewState(DEGRADED, "degraded", "errors or lag past the first threshold, or a link draining"),
        ViewState(FAILING, "failing", "errors or lag past the second threshold, or its link down or refused"),
        ViewState(DOWN, "down", "the link's relay reports it down"),
        ViewState(UNKNOWN, "unknown", "no fresh data: shown as last known, with why"),
    )
}
"""Every state an edge or a link can be in, in the order the legend shows them."""

# the states a relay reports for one of its links (router.routing), as they arrive in samples
REPORTED_UP, REPORTED_CONNECTING, REPORTED_DRAINING, REPORTED_DOWN = "up", "connecting", "draining", "down"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A view state and, when it is not healthy, why."""

    state: str
    cause: str = ""


def link_view(reported: str, fresh: Freshness, clock: str = "", error: str = "") -> Verdict:
    """A link's state from its relay's latest report, how fresh that report is, and its clock check.

    ``clock``: why the peer refuses this relay's events for their clocks ('' when it does not).
    """
    if not fresh.trusted:
        return Verdict(UNKNOWN, fresh.says)
    if reported in (REPORTED_DOWN, REPORTED_CONNECTING):
        return Verdict(DOWN, f"link down: {error}" if error else "link down")
    if reported == REPORTED_DRAINING:
        return Verdict(DEGRADED, "link draining")
    if reported != REPORTED_UP:
        return Verdict(UNKNOWN, f"the relay reports a state meshscope does not know: {reported[:16]!r}")
    if clock:
        return Verdict(FAILING, clock)
    return Verdict(HEALTHY)


def edge_view(traffic: str, link: Verdict | None, figures: Freshness, held: int = 0) -> Verdict:
    """An edge's state: ``traffic`` (its figures' verdict), overruled by its link, then by stale figures.

    ``figures``: the least fresh of what the figures of both its ends rest on (``Assessment.vouch``).
    A link down or refused makes the edge failing at once, with what waits for it; figures that
    are not fresh (an end that is a stale region) make it unknown, whatever they say.
    """
    if link is not None and link.state in (DOWN, FAILING):
        waiting = f"; {held} events held for it" if held else ""
        return Verdict(FAILING, f"{link.cause}{waiting}")
    if not figures.trusted:
        return Verdict(UNKNOWN, figures.says)
    if traffic not in STATES:
        return Verdict(UNKNOWN, f"no verdict for {traffic[:16]!r}")
    return Verdict(traffic)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When an edge's figures make it degraded (first) or failing (second)."""

    loss_degraded_pct: float = 1.0
    loss_failing_pct: float = 5.0
    lag_degraded_ms: float = 1000.0
    lag_failing_ms: float = 3000.0


def traffic_view(entered: int, lost: int, e2e_p99_ms: float | None, t: Thresholds) -> str:
    """An edge's verdict from its figures: events lost (refusals are the producer's, not the edge's) and p99 lag."""
    if entered <= 0 and lost <= 0:
        return IDLE
    pct = loss_pct(entered, lost)
    lag = e2e_p99_ms or 0.0
    if pct >= t.loss_failing_pct or lag >= t.lag_failing_ms:
        return FAILING
    if pct >= t.loss_degraded_pct or lag >= t.lag_degraded_ms:
        return DEGRADED
    return HEALTHY


def loss_pct(entered: int, lost: int) -> float:
    """Events lost as a share of what entered (losses with nothing entering count as 100 %)."""
    if entered <= 0:
        return 100.0 if lost else 0.0
    return min(100.0, 100.0 * lost / entered)


# ---- clocks --------------------------------------------------------------------------------------


def clock_refusal(offset_ms: float | None, accepted_s: float, peer: str, margin_s: float = 1.0) -> str:
    """Why ``peer`` refuses what this relay sends for its clock, or '' when it accepts it.

    ``offset_ms``: the peer's clock minus ours; ``accepted_s``: the skew the peer accepts. A margin
    keeps what is sent near the edge of the window from being refused on its way.
    """
    if offset_ms is None or accepted_s <= 0:
        return ""
    off_s = abs(offset_ms) / 1000
    if off_s < max(0.0, accepted_s - margin_s):
        return ""
    side = "behind" if offset_ms > 0 else "ahead of"
    return f"clock {off_s:.0f} s {side} {peer}'s, which accepts {accepted_s:g} s"
