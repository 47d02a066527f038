"""A classic Ryu-style learning switch, written the way Ryu tutorials write it
(imports from `ryu.*`, `app_manager.RyuApp`). The kit must run it unchanged on
os-ken through the `ryu` alias package. Loop-free topologies only.

Also exports the number of packet-ins it saw to the file named by
$TCTL_PKTIN_FILE, so the test can tell this app (not another one) forwarded."""

import os

from ryu.base import app_manager
from ryu.controller import ofp_event
from ryu.controller.handler import CONFIG_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from ryu.lib.packet import arp, ether_types, ethernet, ipv4, packet
from ryu.ofproto import ofproto_v1_3


class RyuStyleSwitch(app_manager.RyuApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super(RyuStyleSwitch, self).__init__(*args, **kwargs)  # noqa: UP008 (Ryu-era style)
        self.mac_to_port = {}
        self.seen = {"packet_in": 0, "arp": 0, "ipv4": 0}

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def on_features(self, ev):
        dp = ev.msg.datapath
        ofp = dp.ofproto
        parser = dp.ofproto_parser
        match = parser.OFPMatch()
        actions = [parser.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)]
        self.install(dp, 0, match, actions)

    def install(self, dp, priority, match, actions):
        ofp = dp.ofproto
        parser = dp.ofproto_parser
        inst = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)]
        dp.send_msg(
            parser.OFPFlowMod(datapath=dp, priority=priority, match=match, instructions=inst)
        )

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def on_packet_in(self, ev):
        msg = ev.msg
        dp = msg.datapath
        ofp = dp.ofproto
        parser = dp.ofproto_parser
        in_port = msg.match["in_port"]

        pkt = packet.Packet(msg.data)
        eth = pkt.get_protocols(ethernet.ethernet)[0]
        if eth.ethertype == ether_types.ETH_TYPE_LLDP:
            return
        self.seen["packet_in"] += 1
        if pkt.get_protocol(arp.arp):
            self.seen["arp"] += 1
        if pkt.get_protocol(ipv4.ipv4):
            self.seen["ipv4"] += 1
        self.export()

        self.mac_to_port.setdefault(dp.id, {})
        self.mac_to_port[dp.id][eth.src] = in_port
        out_port = self.mac_to_port[dp.id].get(eth.dst, ofp.OFPP_FLOOD)
        actions = [parser.OFPActionOutput(out_port)]
        if out_port != ofp.OFPP_FLOOD:
            match = parser.OFPMatch(in_port=in_port, eth_dst=eth.dst, eth_src=eth.src)
            self.install(dp, 1, match, actions)
        out = parser.OFPPacketOut(
            datapath=dp,
            buffer_id=ofp.OFP_NO_BUFFER,
            in_port=in_port,
            actions=actions,
            data=msg.data,
        )
        dp.send_msg(out)

    def export(self):
        path = os.environ.get("TCTL_PKTIN_FILE")
        if path:
            with open(path, "w") as f:
                f.write("%(packet_in)d %(arp)d %(ipv4)d\n" % self.seen)  # noqa: UP031
