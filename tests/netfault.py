"""The fault suite's network faults: the TCP proxy lives in meshcore (benchmarks and meshscope up use it too)."""

from collections.abc import Mapping

from meshcore.netproxy import BLACKHOLE, CUT, FORWARD, TcpProxy

__all__ = ["BLACKHOLE", "CUT", "FORWARD", "TcpProxy", "region_links"]


def region_links(proxies: Mapping[tuple[str, str], TcpProxy], region: str) -> list[TcpProxy]:
    """The proxies of every link (dialer, peer) to or from ``region``."""
    return [proxy for (dialer, peer), proxy in proxies.items() if region in (dialer, peer)]
