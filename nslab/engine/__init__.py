"""The engine: realises a topology model on this host and tears it down.

from nslab.engine import up, Lab
with up("leaf-spine", name="ls0") as lab:
    print(lab.exec("h1", "ping -c1 " + lab.ip("h2")).stdout)
"""

from nslab.engine.lab import Lab, down_all, running_labs, up

__all__ = ["Lab", "up", "down_all", "running_labs"]
