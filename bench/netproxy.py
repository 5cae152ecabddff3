"""The TCP proxy of benchmarks and tests lives in meshcore (``meshscope up`` uses it too)."""

from meshcore.netproxy import BLACKHOLE, CUT, FORWARD, TcpProxy

__all__ = ["BLACKHOLE", "CUT", "FORWARD", "TcpProxy"]
