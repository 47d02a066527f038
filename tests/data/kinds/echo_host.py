"""An example node kind (docs/instructor-guide.md, "A new node kind"): a host
that answers UDP datagrams on a port with the same bytes. One module and a
`register` call; `NSLAB_KINDS=echo_host` makes nslab load it."""

from __future__ import annotations

import sys

from nslab.kinds import NamespaceHost, Service, register

ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(data, peer)
"""


@register
class EchoHost(NamespaceHost):
    name = "echo-host"
    allowed_keys = frozenset({"ip", "gateway", "interfaces", "port"})
    description = "host: answers UDP datagrams on `port` with the same bytes"
    graph_style = {"shape": "box", "style": "filled", "fillcolor": "#fef3c7"}

    def validate(self, node, topo):
        port = node.config.get("port", 7)
        if not isinstance(port, int) or not 1 <= port <= 65535:
            return [f"port: {port!r} is not a UDP port — write a number from 1 to 65535"]
        return []

    def services(self, node, topo):
        # (UDP has no listening socket to wait for: ready_port stays None)
        return [Service("echo", [sys.executable, "-c", ECHO, str(node.config.get("port", 7))])]
