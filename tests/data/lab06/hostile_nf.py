# Hostile: forges the "ready" line, forwards nothing, and forks a child that
# leaves the session and floods dst from nf's eth1 for minutes (to inflate
# the grader's measurements, and to outlive the submission).
import os
import socket
import time

print("nf_afxdp: forwarding on eth0, eth1", flush=True)
if os.fork() == 0:
    os.setsid()
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("eth1", 0))
    frame = bytes.fromhex("ffffffffffff020000000001") + b"\x08\x00" + bytes(50)
    end = time.time() + 300
    while time.time() < end:
        try:
            s.send(frame)
        except OSError:
            time.sleep(0.01)
    os._exit(0)
time.sleep(600)
