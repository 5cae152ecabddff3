"""The fault suite's network faults: the TCP proxy lives in bench (benchmarks use it too)."""

from bench.netproxy import BLACKHOLE, CUT, FORWARD, TcpProxy

__all__ = ["BLACKHOLE", "CUT", "FORWARD", "TcpProxy"]
