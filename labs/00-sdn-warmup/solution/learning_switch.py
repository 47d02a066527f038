"""Lab 0 reference solution: a learning switch for a leaf-spine fabric.

What it does, in the order the README's exercises ask for it:

1. Broadcasts (ARP requests) and unknown destinations are flooded along a
   spanning tree of the switches plus every host-facing port: one copy per
   host, no loop, no storm. (This part is already in the starter.)
2. Learning: a host's location is (switch, port) of the *host-facing* port a
   packet from it arrives on. Copies that arrive from another switch teach
   nothing and are not learned from.
3. Flows: when a packet from a known host S to a known host D reaches the
   controller, install a flow `eth_src=S, eth_dst=D -> next port` on every
   switch of one shortest path from S's switch to D's switch. The next
   packets from S to D are forwarded by the switches alone: the table-miss
   flow's packet counter stops growing.
4. ECMP (exercise 2): between two leaves there is one shortest path per
   spine. The path is picked by a stable hash of (S, D), so different host
   pairs spread over the spines and one pair never reorders.
"""

from __future__ import annotations

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib.packet import ether_types, ethernet, packet
from os_ken.ofproto import ofproto_v1_3

from nslab.controller.fabric import Fabric, ecmp_pick

FLOW_PRIORITY = 10
MISS_PRIORITY = 0


def is_group(mac: str) -> bool:
    """Broadcast or multicast address (lowest bit of the first byte set)."""
    return bool(int(mac[:2], 16) & 1)


class LearningSwitch(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fabric = Fabric.from_env()
        if self.fabric is None:
            raise RuntimeError("this app needs the lab's fabric.json ($NSLAB_FABRIC)")
        self.datapaths = {}  # dpid -> datapath, to install flows on other switches
        self.hosts = {}  # mac -> (dpid, port)

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

        # Exercise 1a: learn only from host-facing ports.
        from_host = self.fabric.is_host_port(dp.id, in_port)
        if from_host and not is_group(eth.src):
            if self.hosts.get(eth.src) != (dp.id, in_port):
                self.logger.info("learned %s at %016x port %d", eth.src, dp.id, in_port)
            self.hosts[eth.src] = (dp.id, in_port)

        dst = None if is_group(eth.dst) else self.hosts.get(eth.dst)
        if dst is None:
            self.send(dp, in_port, self.fabric.flood_ports(dp.id, in_port), msg.data)
            return

        # Exercise 1b + 2: one shortest path, chosen per (src, dst) pair.
        dst_dpid, dst_port = dst
        paths = self.fabric.shortest_paths(dp.id, dst_dpid)
        if not paths:
            return  # no path: drop
        path = ecmp_pick(list(range(len(paths))), eth.src, eth.dst)
        hops = [(h.dpid, h.port) for h in paths[path]] + [(dst_dpid, dst_port)]

        if from_host:
            # Install from the far end back, so the flows downstream are (most
            # likely) in place before the first packet gets there.
            for dpid, port in reversed(hops):
                sw = self.datapaths.get(dpid)
                if sw is not None:
                    match = sw.ofproto_parser.OFPMatch(eth_src=eth.src, eth_dst=eth.dst)
                    out = [sw.ofproto_parser.OFPActionOutput(port)]
                    self.add_flow(sw, FLOW_PRIORITY, match, out)
        # Either way, this one packet leaves by the first hop of the path.
        out_port = hops[0][1]
        if out_port != in_port:
            self.send(dp, in_port, [out_port], msg.data)

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
