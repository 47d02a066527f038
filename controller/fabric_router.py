"""The kit's fabric controller (os-ken, OpenFlow 1.3): proactive, from fabric.json.

Everything is computed from the fabric.json the engine writes (switches, their
ports and links, every host interface's MAC and the switch port it is plugged
into) and installed when a switch connects. It never looks at a packet:
no flow sends anything to the controller, so nothing is learned at run time.

Per switch, one table:

| table, priority | match | action |
|---|---|---|
| 0, 10 | `eth_dst=<host MAC>` | the host's port on its own switch; elsewhere the next hop towards its switch, or ECMP (below) when there are several |
| 0, 1 | `in_port=<host port or spanning-tree port>` | flood: every host port and tree port but `in_port` |
| 0, 1 | `in_port=<other switch port>` | drop (floods only travel the tree) |
| 0, 0 | everything else | drop |
| 1, 10 | `reg1=<ECMP set>, reg0=<i>` | output the i-th equal-cost first hop |

- Broadcasts, multicasts and MACs the fabric does not place (a host behind a
  transparent NF, a virtual IP's MAC) take the flood flows: one copy per host
  port, no loop on leaf-spine or fat-tree.
- ECMP: between switches with several shortest paths (two spines) the host
  route loads the set of first hops into reg1 and Open vSwitch's `multipath`
  action hashes the packet's flow (symmetric L2-L4 fields: addresses and
  ports) into reg0, then table 1 outputs that hop. Flows spread over the
  spines, one flow keeps its path, both directions take the same spine.
  (A plain OpenFlow select group spread nothing here: with OVS 3.1's
  userspace datapath its default hash sent 32 UDP flows one way.)

It needs a full fabric.json: a lab that gives its controller a switches-only
view (topology `controller: {fabric: switches-only}`) wants a learning switch,
which this app is not; it refuses to start there. The old name `l2_learning`
is an alias of this app (nslab/controller/runner.py: ALIASES).
"""

from __future__ import annotations

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, set_ev_cls
from os_ken.ofproto import nicira_ext, ofproto_v1_3

from nslab.controller.fabric import Fabric
from nslab.errors import NslabError

ECMP_TABLE = 1
PRIO_HOST = 10
PRIO_FLOOD = 1
PRIO_MISS = 0
COOKIE = 0x6E736C6172  # "nslar": marks the flows this app installs
# OVS's nx_hash_fields: symmetric L3+L4 with UDP ports (os-ken names only 0-1;
# symmetric_l4 (1) ignores UDP ports, so all UDP flows of a pair took one path).
HASH_SYMMETRIC_L3L4_UDP = 3


class FabricRouter(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        fabric = Fabric.from_env()
        if fabric is None:
            raise NslabError(
                "fabric_router needs the lab's fabric.json ($NSLAB_FABRIC or --fabric): "
                "it routes from the file, it does not learn"
            )
        if fabric.view != "full":
            raise NslabError(
                f"fabric_router: this lab's fabric.json is a {fabric.view} view (no host "
                "MACs or attachment ports), so there is nothing to route with; this lab "
                "asks for a controller that learns where hosts are"
            )
        self.fabric = fabric
        self.hosts = fabric.attachments()  # MAC -> Hop(dpid, port)
        self.logger.info(
            "fabric_router: %d switches, %d host MACs", len(fabric.dpids), len(self.hosts)
        )
        for link in fabric.unresolved:
            self.logger.warning("fabric: treating %s as an edge port", link)

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def switch_features(self, ev):
        dp = ev.msg.datapath
        ofp, parser = dp.ofproto, dp.ofproto_parser
        # Start from clean tables: flows and groups of an earlier run may be stale.
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
        self.add_flow(dp, PRIO_MISS, parser.OFPMatch(), [])  # no instructions: drop
        if not self.fabric.knows(dp.id):
            self.logger.warning("switch %016x is not in fabric.json: it drops everything", dp.id)
            return
        n = self.install_floods(dp) + self.install_host_routes(dp)
        self.logger.info("switch %016x connected: %d flows", dp.id, n + 1)

    def install_floods(self, dp) -> int:
        parser = dp.ofproto_parser
        fabric, n = self.fabric, 0
        sw = fabric.switch(dp.id)
        tree = set(fabric.tree_ports(dp.id))
        for port in sorted(sw.ports):
            on_tree = port in tree or fabric.is_host_port(dp.id, port)
            out = fabric.flood_ports(dp.id, port) if on_tree else []
            actions = [parser.OFPActionOutput(p) for p in out]
            self.add_flow(dp, PRIO_FLOOD, parser.OFPMatch(in_port=port), actions)
            n += 1
        return n

    def install_host_routes(self, dp) -> int:
        parser = dp.ofproto_parser
        sets: dict[tuple[int, ...], int] = {}  # equal-cost first hops -> id in reg1
        n = 0
        for mac, where in sorted(self.hosts.items()):
            if where.dpid == dp.id:
                actions = [parser.OFPActionOutput(where.port)]
            else:
                choices = tuple(self.fabric.next_hops(dp.id, where.dpid))
                if not choices:
                    continue  # another component: unreachable from here
                if len(choices) == 1:
                    actions = [parser.OFPActionOutput(choices[0])]
                else:
                    if choices not in sets:
                        sets[choices] = len(sets) + 1
                        n += self.add_ecmp_set(dp, sets[choices], choices)
                    actions = self.ecmp_actions(dp, sets[choices], len(choices))
            self.add_flow(dp, PRIO_HOST, parser.OFPMatch(eth_dst=mac), actions)
            n += 1
        return n

    # ------------------------------------------------------------ OpenFlow helpers

    def ecmp_actions(self, dp, set_id: int, width: int) -> list:
        """reg1 = set id, reg0 = hash of the flow mod `width`, on to table 1."""
        parser = dp.ofproto_parser
        return [
            parser.OFPActionSetField(reg1=set_id),
            parser.NXActionMultipath(
                fields=HASH_SYMMETRIC_L3L4_UDP,
                basis=0,
                algorithm=nicira_ext.NX_MP_ALG_MODULO_N,
                max_link=width - 1,
                arg=0,
                ofs_nbits=nicira_ext.ofs_nbits(0, 15),
                dst="reg0",
            ),
            parser.NXActionResubmitTable(table_id=ECMP_TABLE),
        ]

    def add_ecmp_set(self, dp, set_id: int, ports: tuple[int, ...]) -> int:
        parser = dp.ofproto_parser
        for i, port in enumerate(ports):
            match = parser.OFPMatch(reg1=set_id, reg0=i)
            actions = [parser.OFPActionOutput(port)]
            self.add_flow(dp, PRIO_HOST, match, actions, table_id=ECMP_TABLE)
        return len(ports)

    def add_flow(self, dp, priority: int, match, actions, table_id: int = 0) -> None:
        ofp, parser = dp.ofproto, dp.ofproto_parser
        inst = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)] if actions else []
        dp.send_msg(
            parser.OFPFlowMod(
                dp,
                table_id=table_id,
                cookie=COOKIE,
                priority=priority,
                match=match,
                instructions=inst,
            )
        )
