"""A TCP proxy on loopback that adds a fixed round-trip time, to emulate the network between edge and cloud.

Every chunk is forwarded ``rtt_ms / 2`` after it arrived, in each direction,
preserving order, so a request/response exchange costs one RTT more and a
stream of responses arrives at the same rate, shifted by half an RTT — what a
long-haul link does (bandwidth is not limited). It is the fault proxy held at
one fault, so both benchmarks measure through the same forwarding code.
"""

from __future__ import annotations

from citer_bench.fault_proxy import FaultProxy


class DelayProxy(FaultProxy):
    """``with DelayProxy(target_port, rtt_ms=20) as proxy: connect to proxy.address``."""

    def __init__(self, target_port: int, rtt_ms: float, target_host: str = "127.0.0.1") -> None:
        super().__init__(target_port, target_host, delay_s=rtt_ms / 2000.0)
        self.one_way_s = rtt_ms / 2000.0

    def __enter__(self) -> DelayProxy:
        self.start()
        return self
