"""The fault suite's network faults: the TCP proxy lives in meshcore (benchmarks and meshscope up use it too)."""

from meshcore.netproxy import BLACKHOLE, CUT, FORWARD, TcpProxy

__all__ = ["BLACKHOLE", "CUT", "FORWARD", "TcpProxy"]
