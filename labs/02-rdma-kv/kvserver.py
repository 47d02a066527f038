"""Run lab 2's KV server (the code is nslab/rdma/kv.py): `python kvserver.py [--addr IP]`."""

import sys

from nslab.rdma.kv import main

sys.exit(main(["serve", *sys.argv[1:]]))
