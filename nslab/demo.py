"""`sudo make demo`: bring up the default datacenter, show it working, tear it down.

Shows all-pairs reachability, an iperf3 between racks over the shaped
inter-rack link, and a table of what runs where.
"""

from __future__ import annotations

import json
import subprocess
import sys

from nslab.cli.status import table
from nslab.engine import Lab, up
from nslab.wait import wait_until


def all_pairs(lab: Lab) -> tuple[int, int]:
    ips = {n: lab.ip(n) for n in lab.state.hosts}
    ok = total = 0
    for src in ips:
        script = " ".join(
            f"(ping -n -q -c1 -W2 {ip} >/dev/null && echo OK || echo FAIL) &"
            for n, ip in ips.items()
            if n != src
        )
        out = lab.exec(src, script + " wait", timeout=60).stdout
        ok += out.count("OK")
        total += out.count("OK") + out.count("FAIL")
    return ok, total


def iperf(lab: Lab, client: str, server: str, seconds: int = 3) -> float:
    srv = lab.popen(server, ["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL)
    try:
        wait_until(
            lambda: ":5201 " in lab.exec(server, ["ss", "-Hltn"]).stdout,
            timeout=10,
            what=f"the iperf3 server on {server} to listen on port 5201",
        )
        r = lab.exec(client, ["iperf3", "-c", lab.ip(server), "-t", str(seconds), "-J"], timeout=30)
        return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        srv.kill()
        srv.wait()


def main() -> int:
    print(
        "== nslab demo: the default datacenter (2 racks x 2 hosts, leaf-spine, 100 Mbit/s uplinks)"
    )
    lab = up("default", name="demo")
    try:
        print()
        print(table(lab))
        print()
        ok, total = all_pairs(lab)
        print(
            f"all-pairs reachability: {ok}/{total} pairs answered "
            f"({100 * (total - ok) / max(total, 1):.0f}% loss)"
        )
        rate = iperf(lab, "h1", "h4")
        print(f"iperf3 h1 (rack 1) -> h4 (rack 2): {rate:.1f} Mbit/s over a 100 Mbit/s uplink")
        print()
        print("Try it yourself:  sudo .venv/bin/nslab up default")
        print("                  sudo .venv/bin/nslab exec h1 -- ping -c3 10.0.0.4")
        print("                  sudo .venv/bin/nslab down dc")
        return 0 if ok == total else 1
    finally:
        lab.down()
        print("\nlab demo is down; the host is as it was.")


if __name__ == "__main__":
    sys.exit(main())
