"""nslab's NF toolkit: packet-processing pipelines in Python, in the Click spirit.

    from nslab.nf import Router, FromDevice, ToDevice, Counter
    r = Router("fwd", report="fwd.report")
    r.add(FromDevice("eth0")) >> r.add(Counter("all")) >> r.add(ToDevice("eth1"))
    r.run()                      # until SIGTERM/SIGINT; writes fwd.report(.txt)

or from a configuration file: `python -m nslab.nf fwd.click in=eth0 out=eth1`.
Kernel-side NFs (nftables) are rendered from templates: `nslab.nf.render(...)`
and applied to containers with Ansible: `nslab.nf.apply(...)`.
See docs/nf-toolkit.md.
"""

from nslab.nf.config import ELEMENTS, load, parse
from nslab.nf.element import Element
from nslab.nf.elements import (
    ARPQuerier,
    ARPResponder,
    AverageCounter,
    Classifier,
    Counter,
    DecIPTTL,
    Discard,
    EtherRewrite,
    FromDevice,
    ICMPPingResponder,
    IPClassifier,
    Print,
    Search,
    Tee,
    ToDevice,
)
from nslab.nf.kernel import apply, render
from nslab.nf.packet import Packet
from nslab.nf.router import Router

__all__ = [
    "ELEMENTS",
    "ARPQuerier",
    "ARPResponder",
    "AverageCounter",
    "Classifier",
    "Counter",
    "DecIPTTL",
    "Discard",
    "Element",
    "EtherRewrite",
    "FromDevice",
    "ICMPPingResponder",
    "IPClassifier",
    "Packet",
    "Print",
    "Router",
    "Search",
    "Tee",
    "ToDevice",
    "apply",
    "load",
    "parse",
    "render",
]
