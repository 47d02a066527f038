"""Lab 2's hash table layout (nslab.rdma.kv) without a network: PUT/GET,
overwrite, probing, self-validating values, and what a reader sees mid-PUT."""

from __future__ import annotations

import pytest

from nslab.rdma import kv


def table(n: int = 16, slot: int = 128) -> kv.Table:
    return kv.Table(memoryview(bytearray(kv.Table.size(n, slot))), n, slot)


def test_put_get_overwrite_and_absent():
    t = table()
    t.put(b"a", b"1")
    t.put(b"b", b"22")
    t.put(b"a", b"333")
    assert (t.get(b"a"), t.get(b"b"), t.get(b"zz")) == (b"333", b"22", None)
    with pytest.raises(kv.KVError, match="do not fit"):
        t.put(b"k", b"v" * 200)


def test_bucket_and_slot_versions_agree_and_are_even():
    t = table()
    for i in range(5):
        t.put(b"key", b"v%d" % i)
    i = kv.key_hash(b"key") % t.n
    ver, kh, off, ln = kv.BUCKET.unpack_from(t.buf, kv.HEADER_SIZE + i * kv.BUCKET.size)
    sver, crc, kl, vl = kv.SLOT_HDR.unpack_from(t.buf, t.values_off + off)
    assert ver == sver == 10 and kh == kv.key_hash(b"key")
    s = t.values_off + off + kv.SLOT_HDR.size
    assert kv.slot_crc(bytes(t.buf[s : s + kl]), bytes(t.buf[s + kl : s + kl + vl])) == crc


def test_linear_probing_until_the_window_is_full():
    t = table(n=4)
    keys = [b"k%d" % i for i in range(4)]
    for k in keys:
        t.put(k, k.upper())
    assert [t.get(k) for k in keys] == [k.upper() for k in keys]
    with pytest.raises(kv.KVError, match="table full"):
        t.put(b"one-too-many", b"x")


def test_versioned_values_detect_tearing():
    v = kv.versioned_value(b"key", 7, 60)
    assert len(v) == 60 and kv.check_value(b"key", v) == 7
    assert kv.check_value(b"other", v) is None
    torn = v[:20] + kv.versioned_value(b"key", 8, 60)[20:]
    assert kv.check_value(b"key", torn) is None
