"""Kernel bypass for nslab: XDP programs and AF_XDP sockets from Python.

- `loader`: the clang command line, loading objects (bpftool into a private
  bpffs), verifier errors cut to the failing instruction and source line.
- `bpf`: the bpf(2) calls a grader needs from its own process:
  BPF_PROG_TEST_RUN on a packet (verdict + output bytes), map reads/writes.
- `netlink`: attach a program by fd (generic/native).
- `xsk`: AF_XDP sockets (copy or zero-copy) with the AF_PACKET socket's API,
  the NF toolkit's `--io afxdp` backend.
- `probe`: what `nslab doctor` reports (XDP generic/native, AF_XDP, BTF).

The kit holds no lab's answers: lab 06's reference models live under
labs/06-kernel-bypass/grader/.
"""
