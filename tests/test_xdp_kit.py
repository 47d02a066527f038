"""nslab.xdp on the real kernel: clang builds, bpftool loads into a private
bpffs, BPF_PROG_TEST_RUN from this process, maps read back, verifier
rejections cut to the source line, and what `nslab doctor` says."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest

from nslab.xdp import bpf, loader

pytestmark = pytest.mark.root

COUNTER = r"""
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 2);
         __type(key, __u32); __type(value, __u64); } seen SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 8);
         __type(key, __u32); __type(value, __u32); } cfg SEC(".maps");
SEC("xdp") int prog(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    __u32 k = 0;
    if ((void *)(eth + 1) > end) return XDP_ABORTED;
    __u32 *drop = bpf_map_lookup_elem(&cfg, &k);
    __u64 *c = bpf_map_lookup_elem(&seen, &k);
    if (c) *c += 1;
    eth->h_dest[0] = 0xaa;                     /* a visible rewrite */
    return drop && *drop == bpf_ntohs(eth->h_proto) ? XDP_DROP : XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""

UNCHECKED = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp") int bad(struct xdp_md *ctx) {
    unsigned char *p = (void *)(long)ctx->data;

    return p[40] == 6 ? XDP_DROP : XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""

PINNED = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32);
         __type(value, __u32); __uint(pinning, LIBBPF_PIN_BY_NAME); } xdpkitpin SEC(".maps");
SEC("xdp") int p(struct xdp_md *ctx) { __u32 k = 0; return bpf_map_lookup_elem(&xdpkitpin, &k) ? XDP_PASS : XDP_DROP; }
char LICENSE[] SEC("license") = "GPL";
"""


def build(tmp_path, name: str, code: str) -> str:
    if shutil.which("clang") is None:
        pytest.skip("clang not installed (scripts/provision.sh installs it)")
    (tmp_path / f"{name}.c").write_text(code)
    r = subprocess.run(
        loader.compile_argv(f"{name}.c", f"{name}.o"), cwd=tmp_path, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    return str(tmp_path / f"{name}.o")


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.skip("loading BPF needs root")


def test_test_run_verdict_bytes_and_maps(tmp_path):
    with loader.load(build(tmp_path, "counter", COUNTER)) as o:
        frame = bytes(6) + bytes.fromhex("020000000001") + b"\x08\x00" + bytes(46)
        r = o.run(frame)
        assert r.name == "XDP_PASS" and r.data == b"\xaa" + frame[1:]
        o.map("cfg").set(struct.pack("=I", 0), struct.pack("=I", 0x0800))
        assert o.run(frame).verdict == bpf.XDP_DROP
        assert o.run(frame[:12] + b"\x86\xdd" + frame[14:]).verdict == bpf.XDP_PASS
        # per-CPU slots summed: three runs so far
        assert o.map("seen").u64_sum(struct.pack("=I", 0)) == 3
        assert o.map("seen").percpu and o.map("cfg").keys() == [struct.pack("=I", 0)]
        with pytest.raises(Exception, match="keys are 4 bytes"):
            o.map("cfg").get(b"\0")
        with pytest.raises(Exception, match="no map 'nope'.*cfg, seen"):
            o.map("nope")
        pin_root = o.root
    assert not pin_root.exists()  # the private bpffs is gone with the object


def test_verifier_rejection_names_the_source_line(tmp_path):
    with pytest.raises(loader.VerifierError) as e:
        loader.load(build(tmp_path, "unchecked", UNCHECKED))
    msg = e.value.summary
    assert "the verifier rejected program 'bad'" in msg
    assert "unchecked.c:7: return p[40] == 6" in msg
    assert "invalid access to packet" in msg and "BEGIN PROG LOAD LOG" in e.value.log


def test_pinning_by_name_cannot_reach_the_host(tmp_path):
    """The loader's bpftool sees an empty tmpfs at /sys/fs/bpf: a map that
    asks to be pinned by name fails to load instead of reusing a host map."""
    with pytest.raises(loader.VerifierError, match="could not be loaded"):
        loader.load(build(tmp_path, "pinned", PINNED))
    assert not os.path.exists("/sys/fs/bpf/xdpkitpin")


def test_object_symlink_is_refused(tmp_path):
    (tmp_path / "x.o").symlink_to("/etc/shadow")
    with pytest.raises(Exception, match="cannot open the object file"):
        loader.load(tmp_path / "x.o")


def test_doctor_reports_xdp_afxdp_btf():
    r = subprocess.run(
        [sys.executable, "-m", "nslab", "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    caps = json.loads(r.stdout)
    for key in ("xdp", "afxdp", "btf"):
        assert key in caps, caps.keys()
    assert caps["xdp"]["status"] in ("real", "fallback", "missing")
    # veth has no AF_XDP zero-copy: copy mode is the fallback the kit uses
    assert caps["afxdp"]["status"] == "fallback" and "copy mode" in caps["afxdp"]["detail"]
