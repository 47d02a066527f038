# Appended by tests/test_grading_hostile_lab0.py to the starter: no switching
# code of its own. At import it (a) loads the kit's controller app by every
# route a student can find (module path, the file next to the installed nslab
# package, the runner's name lookup, os-ken's / Ryu's app loader) and serves
# it under the expected class name, (b) patches nslab.controller.fabric so a
# switches-only fabric.json reads as a full one, and patches the kit's
# measurement functions (which only the grader's own process uses) to report
# perfect counters. Where no route reaches the kit, it serves the same thing
# itself: a proactive flood-everything fabric built from the public helpers.
# It must score no more than the starter.
import importlib as _importlib
import importlib.util as _ilu
from pathlib import Path as _Path

import nslab as _nslab
import nslab.controller.fabric as _fabric_mod
import nslab.measure as _measure
import nslab.measure.openflow as _mof

_kit_cls = None
_kit_dir = _Path(_nslab.__file__).resolve().parents[1] / "controller"


def _by_module(name):
    return vars(_importlib.import_module(name))


def _by_file(path):
    spec = _ilu.spec_from_file_location("kit_" + _Path(path).stem, path)
    mod = _ilu.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return vars(mod)


def _by_runner(name):
    from nslab.controller.runner import resolve_app

    return _by_file(resolve_app(name))


def _by_app_manager(name):
    from ryu.base import app_manager  # the kit's Ryu alias of os_ken

    cls = app_manager.AppManager.get_instance().load_app(name)
    return {cls.__name__: cls}


_routes = [
    ("module controller.fabric_router", _by_module, "controller.fabric_router"),
    ("module controller.l2_learning", _by_module, "controller.l2_learning"),
    ("file next to nslab", _by_file, str(_kit_dir / "fabric_router.py")),
    ("runner name l2_learning", _by_runner, "l2_learning"),
    ("ryu app_manager", _by_app_manager, "controller.fabric_router"),
]
for _label, _load, _arg in _routes:
    try:
        _found = [
            v
            for v in _load(_arg).values()
            if isinstance(v, type) and v.__name__ in ("FabricRouter", "L2Learning")
        ]
    except Exception as _exc:  # noqa: BLE001 (a hostile probe: any failure is fine)
        print("KIT DENIED", _label, type(_exc).__name__, _exc, flush=True)
        continue
    if _found:
        print("KIT LOADED", _label, flush=True)
        _kit_cls = _found[0]
        break

# Where the engine keeps its own view of the lab: the topology with every MAC
# (nslab.engine.state.RUN_DIR, public). Reading it would make learning moot.
try:
    import pickle as _pickle

    from nslab.engine.state import RUN_DIR as _RUN_DIR

    for _p in sorted(_RUN_DIR.glob("*/topology.pickle")):
        try:
            _topo = _pickle.loads(_p.read_bytes())
            _macs = [i.mac for n in _topo.nodes.values() for i in n.interfaces.values() if i.mac]
            print("STATE LEAK", _p, len(_macs), "MACs", flush=True)
        except Exception as _exc:  # noqa: BLE001
            print("STATE DENIED", _p, type(_exc).__name__, flush=True)
except Exception as _exc:  # noqa: BLE001
    print("STATE DENIED", type(_exc).__name__, _exc, flush=True)

# (b) patches at import
_real_from_dict = _fabric_mod.Fabric.from_dict.__func__


def _forged_from_dict(cls, data, source="fabric.json"):
    fabric = _real_from_dict(cls, data, source)
    fabric.view = "full"  # "there are hosts": the kit's router stops refusing
    return fabric


_fabric_mod.Fabric.from_dict = classmethod(_forged_from_dict)
_mof.packets_to_controller = lambda bridge: 0
_measure.packets_to_controller = lambda bridge: 0
# os-ken's own view of the counters: every flow and port "perfect"
import os_ken.ofproto.ofproto_v1_3_parser as _p13  # noqa: E402

_p13.OFPFlowStats.parser = classmethod(lambda cls, buf, offset: cls(packet_count=0))
_p13.OFPPortStats.parser = classmethod(lambda cls, buf, offset: cls(rx_packets=0))
print("PATCHED", flush=True)

if _kit_cls is None:
    # No route to the kit: the same proactive flooding from the public helpers.
    class _Hub(LearningSwitch):  # noqa: F821 (the starter's class, above)
        def on_switch(self, ev):
            super().on_switch(ev)
            dp = ev.msg.datapath
            parser = dp.ofproto_parser
            for port in self.fabric.switch(dp.id).ports if self.fabric.knows(dp.id) else ():
                out = [parser.OFPActionOutput(p) for p in self.fabric.flood_ports(dp.id, port)]
                self.add_flow(dp, FLOW_PRIORITY, parser.OFPMatch(in_port=port), out)  # noqa: F821

    _kit_cls = _Hub

del LearningSwitch  # noqa: F821 (the starter's class goes; the kit's takes its name)
LearningSwitch = type("LearningSwitch", (_kit_cls,), {"__module__": __name__})
