"""Lab 0 starter: a (very slow) switch for a leaf-spine fabric. Make it learn.

As given, this app is *safe* and *correct* but *slow*:

- every packet goes to the controller (the table-miss flow is the only flow);
- the controller floods every packet along a spanning tree of the switches
  plus all host-facing ports, so each host receives one copy, and the loops
  of the fabric (leaf -> spine 1 -> leaf -> spine 2 -> leaf) never carry a
  packet round and round.

Run it, ping between hosts, and watch the table-miss flow's counter grow
with every packet (README, "Looking at flows").

Your job (README, exercises 1 and 2) is to fill in the TODOs so that steady
traffic no longer reaches the controller and inter-rack traffic uses both
spines. Do NOT flood on every port (OFPP_FLOOD / OFPP_ALL) of a leaf-spine:
that is a broadcast storm.

Helpers from nslab.controller.fabric (read its docstrings):

    self.fabric.is_host_port(dpid, port)    -> bool
    self.fabric.flood_ports(dpid, in_port)  -> [port, ...]   spanning tree + hosts
    self.fabric.next_hops(dpid, dst_dpid)   -> [port, ...]   equal-cost first hops
    self.fabric.shortest_paths(src_dpid, dst_dpid) -> [[Hop(dpid, port), ...], ...]
    ecmp_pick(choices, *keys)               -> one of choices, stable per keys
"""

from __future__ import annotations

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib.packet import ether_types, ethernet, packet
from os_ken.ofproto import ofproto_v1_3

from nslab.controller.fabric import Fabric, ecmp_pick  # noqa: F401 (ecmp_pick: exercise 2)

FLOW_PRIORITY = 10
MISS_PRIORITY = 0


class LearningSwitch(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fabric = Fabric.from_env()
        if self.fabric is None:
            raise RuntimeError("this app needs the lab's fabric.json ($NSLAB_FABRIC)")
        self.datapaths = {}  # dpid -> datapath, to install flows on other switches
        self.hosts = {}  # mac -> (dpid, port): where each host is attached

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def on_switch(self, ev):
        dp = ev.msg.datapath
        ofp, parser = dp.ofproto, dp.ofproto_parser
        self.datapaths[dp.id] = dp
        # Table-miss: whatever no flow matches goes to the controller.
        to_controller = [parser.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)]
        self.add_flow(dp, MISS_PRIORITY, parser.OFPMatch(), to_controller)

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def on_packet_in(self, ev):
        msg = ev.msg
        dp = msg.datapath
        in_port = msg.match["in_port"]
        eth = packet.Packet(msg.data).get_protocol(ethernet.ethernet)
        if eth is None or eth.ethertype == ether_types.ETH_TYPE_LLDP:
            return

        # TODO 1a (learn): if the packet came in on a host-facing port, remember
        # that eth.src lives at (dp.id, in_port) in self.hosts. Do not learn from
        # packets that came from another switch. Skip broadcast/multicast sources.

        # TODO 1b (forward): if eth.dst is a unicast address in self.hosts, send
        # the packet out of ONE port towards it (the host's port if it is on this
        # switch, else a first hop of a shortest path) instead of flooding.

        # TODO 1c (flows): when the packet came from a host and the destination
        # is known, install flows (self.add_flow) on the switches of the path so
        # that the next packets from eth.src to eth.dst skip the controller.

        # TODO 2 (ECMP): between two leaves there is one shortest path per spine.
        # Pick the path per (src, dst) pair (ecmp_pick) so that different pairs
        # use different spines.

        # Safe default: flood along the spanning tree (never on every port).
        self.send(dp, in_port, self.fabric.flood_ports(dp.id, in_port), msg.data)

    def add_flow(self, dp, priority, match, actions):
        ofp, parser = dp.ofproto, dp.ofproto_parser
        inst = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)]
        dp.send_msg(parser.OFPFlowMod(dp, priority=priority, match=match, instructions=inst))

    def send(self, dp, in_port, ports, data):
        if not ports:
            return
        ofp, parser = dp.ofproto, dp.ofproto_parser
        actions = [parser.OFPActionOutput(p) for p in ports]
        dp.send_msg(
            parser.OFPPacketOut(
                dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=in_port, actions=actions, data=data
            )
        )
