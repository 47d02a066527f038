"""The kit's reference L2 learning switch (os-ken, OpenFlow 1.3).

Safe on looped fabrics (leaf-spine, fat-tree): no broadcast storm.

With a fabric.json (the engine passes its path in $NSLAB_FABRIC):

- broadcasts, multicasts and unknown unicasts are flooded by the controller
  along one spanning tree of the switch graph plus every host-facing port,
  so each host gets one copy and nothing circles;
- a host's location (switch, port) is learned only from packets that enter
  on a host-facing port (a copy that crossed the fabric says nothing new);
- once a host H is known, every switch gets "transit" flows
  `in_port=<switch-facing port>, eth_dst=H -> next hop towards H`, and the
  ingress switch gets a "pair" flow `in_port, eth_src, eth_dst -> next hop`
  when a first packet from a known host to H reaches the controller. After
  that, the traffic between the two hosts never reaches the controller;
- where several shortest paths exist (two spines), the pair flow picks one by
  a stable hash of (src, dst) and transit flows by a hash of dst, so flows
  spread over the spines.

Without fabric.json it is a plain per-switch learning switch that floods on
all ports: fine on a tree, a broadcast storm on a loop.

The only path to the controller is the table-miss flow (priority 0), so its
`n_packets` in `ovs-ofctl -O OpenFlow13 dump-flows BRIDGE` counts packet-ins.
"""

from __future__ import annotations

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import (
    CONFIG_DISPATCHER,
    DEAD_DISPATCHER,
    MAIN_DISPATCHER,
    set_ev_cls,
)
from os_ken.lib.packet import ether_types, ethernet, packet
from os_ken.ofproto import ofproto_v1_3

from nslab.controller.fabric import Fabric, ecmp_pick

PRIO_PAIR = 20  # ingress switch: in_port + src + dst
PRIO_TRANSIT = 10  # any switch, from a switch-facing port: dst
PRIO_MISS = 0  # everything else: to the controller
COOKIE = 0x6E736C6162  # "nslab": marks the flows this app installs


def is_group(mac: str) -> bool:
    """Broadcast or multicast: the I/G bit of the first octet is set."""
    return bool(int(mac.split(":", 1)[0], 16) & 1)


class L2Learning(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fabric = Fabric.from_env()
        self.datapaths: dict[int, object] = {}
        self.hosts: dict[str, tuple[int, int]] = {}  # mac -> (dpid, port), fabric mode
        self.mac_to_port: dict[int, dict[str, int]] = {}  # plain mode, per switch
        if self.fabric is None:
            self.logger.info("no fabric.json: plain learning switch (loop-free topologies only)")
        else:
            self.logger.info("fabric with switches %s", self.fabric.dpids)
            for link in self.fabric.unresolved:
                self.logger.warning("fabric: treating %s as an edge port", link)

    # ------------------------------------------------------------ switch life cycle

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def switch_features(self, ev):
        dp = ev.msg.datapath
        ofp, parser = dp.ofproto, dp.ofproto_parser
        # Start from a clean table: flows of an earlier controller run may be stale.
        dp.send_msg(
            parser.OFPFlowMod(
                dp,
                command=ofp.OFPFC_DELETE,
                table_id=ofp.OFPTT_ALL,
                out_port=ofp.OFPP_ANY,
                out_group=ofp.OFPG_ANY,
                match=parser.OFPMatch(),
            )
        )
        to_controller = [parser.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)]
        self.add_flow(dp, PRIO_MISS, parser.OFPMatch(), to_controller)
        self.datapaths[dp.id] = dp
        self.mac_to_port.setdefault(dp.id, {})
        if self.fabric is not None and not self.fabric.knows(dp.id):
            self.logger.warning("switch %016x is not in fabric.json: plain learning there", dp.id)
        for mac in self.hosts:
            self.install_transit(mac, only=dp.id)
        self.logger.info("switch %016x connected", dp.id)

    @set_ev_cls(ofp_event.EventOFPStateChange, DEAD_DISPATCHER)
    def switch_gone(self, ev):
        if ev.datapath.id is not None:
            self.datapaths.pop(ev.datapath.id, None)

    # ------------------------------------------------------------ packet-in

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def packet_in(self, ev):
        msg = ev.msg
        dp = msg.datapath
        in_port = msg.match["in_port"]
        eth = packet.Packet(msg.data).get_protocol(ethernet.ethernet)
        if eth is None or eth.ethertype == ether_types.ETH_TYPE_LLDP:
            return
        if self.fabric is not None and self.fabric.knows(dp.id):
            self.fabric_forward(dp, in_port, eth.src, eth.dst, msg.data)
        else:
            self.plain_forward(dp, in_port, eth.src, eth.dst, msg.data)

    def fabric_forward(self, dp, in_port: int, src: str, dst: str, data: bytes) -> None:
        fabric = self.fabric
        from_host = fabric.is_host_port(dp.id, in_port)
        if from_host and not is_group(src):
            self.learn(src, dp.id, in_port)
        where = None if is_group(dst) else self.hosts.get(dst)
        if where is None:
            self.packet_out(dp, in_port, fabric.flood_ports(dp.id, in_port), data)
            return
        out = self.out_port(dp.id, where, src, dst)
        if out is None or out == in_port:
            return  # unreachable, or would hairpin: drop
        if from_host and self.hosts.get(src) == (dp.id, in_port):
            parser = dp.ofproto_parser
            match = parser.OFPMatch(in_port=in_port, eth_src=src, eth_dst=dst)
            self.add_flow(dp, PRIO_PAIR, match, [parser.OFPActionOutput(out)])
        self.packet_out(dp, in_port, [out], data)

    def out_port(self, dpid: int, where: tuple[int, int], src: str | None, dst: str) -> int | None:
        """Port of `dpid` towards host `dst` at `where`; ECMP by (src, dst) or by dst."""
        dst_dpid, dst_port = where
        if dpid == dst_dpid:
            return dst_port
        choices = self.fabric.next_hops(dpid, dst_dpid)
        if not choices:
            return None
        return ecmp_pick(choices, src, dst) if src else ecmp_pick(choices, dst)

    def learn(self, mac: str, dpid: int, port: int) -> None:
        old = self.hosts.get(mac)
        if old == (dpid, port):
            return
        if old is not None:
            self.logger.info("host %s moved from %016x:%d", mac, *old)
            self.forget_flows(mac)
        self.hosts[mac] = (dpid, port)
        self.logger.info("host %s at switch %016x port %d", mac, dpid, port)
        self.install_transit(mac)

    def install_transit(self, mac: str, only: int | None = None) -> None:
        """On every switch (or just `only`): from switch-facing ports, eth_dst=mac -> next hop."""
        where = self.hosts[mac]
        for dpid, dp in list(self.datapaths.items()):
            if (only is not None and dpid != only) or not self.fabric.knows(dpid):
                continue
            out = self.out_port(dpid, where, None, mac)
            if out is None:
                continue
            parser = dp.ofproto_parser
            for in_port in self.fabric.switch_ports(dpid):
                if in_port != out:
                    match = parser.OFPMatch(in_port=in_port, eth_dst=mac)
                    self.add_flow(dp, PRIO_TRANSIT, match, [parser.OFPActionOutput(out)])

    def forget_flows(self, mac: str) -> None:
        for dp in self.datapaths.values():
            ofp, parser = dp.ofproto, dp.ofproto_parser
            for match in (parser.OFPMatch(eth_dst=mac), parser.OFPMatch(eth_src=mac)):
                dp.send_msg(
                    parser.OFPFlowMod(
                        dp,
                        cookie=COOKIE,
                        cookie_mask=0xFFFFFFFFFFFFFFFF,
                        command=ofp.OFPFC_DELETE,
                        table_id=ofp.OFPTT_ALL,
                        out_port=ofp.OFPP_ANY,
                        out_group=ofp.OFPG_ANY,
                        match=match,
                    )
                )

    # ------------------------------------------------------------ plain mode

    def plain_forward(self, dp, in_port: int, src: str, dst: str, data: bytes) -> None:
        ofp, parser = dp.ofproto, dp.ofproto_parser
        table = self.mac_to_port.setdefault(dp.id, {})
        table[src] = in_port
        out = table.get(dst, ofp.OFPP_FLOOD)
        if out == in_port:
            return
        if out != ofp.OFPP_FLOOD:
            match = parser.OFPMatch(in_port=in_port, eth_src=src, eth_dst=dst)
            self.add_flow(dp, PRIO_PAIR, match, [parser.OFPActionOutput(out)])
        self.packet_out(dp, in_port, [out], data)

    # ------------------------------------------------------------ OpenFlow helpers

    def add_flow(self, dp, priority: int, match, actions) -> None:
        ofp, parser = dp.ofproto, dp.ofproto_parser
        inst = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)]
        dp.send_msg(
            parser.OFPFlowMod(
                dp,
                cookie=COOKIE if priority > PRIO_MISS else 0,
                priority=priority,
                match=match,
                instructions=inst,
            )
        )

    def packet_out(self, dp, in_port: int, ports: list[int], data: bytes) -> None:
        if not ports:
            return
        ofp, parser = dp.ofproto, dp.ofproto_parser
        actions = [parser.OFPActionOutput(p) for p in ports]
        dp.send_msg(
            parser.OFPPacketOut(
                dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=in_port, actions=actions, data=data
            )
        )
