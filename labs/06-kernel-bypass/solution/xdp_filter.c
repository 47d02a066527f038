// Lab 6, part 1: a filter at the driver hook. Rules live in the `rules`
// map (the grader fills it), counters in `stats` and in each rule's `hits`.
// Every header is parsed from its own length fields: VLAN tags, IPv4
// options and fragments are all part of the traffic the grader sends.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// --- the lab's interface: keep these layouts and names ---------------------
struct rule_key {
	__u8 proto;  // IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, ...
	__u8 pad;
	__be16 port; // destination port (network byte order); 0 = any port
};

struct rule_val {
	__u32 action; // XDP_DROP or XDP_PASS
	__u32 pad;
	__u64 hits;   // packets this rule decided
};

enum { STAT_PASS = 0, STAT_DROP = 1, STAT_MALFORMED = 2, STAT_MAX = 4 };

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct rule_key);
	__type(value, struct rule_val);
} rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");
// ---------------------------------------------------------------------------

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

static __always_inline int count(__u32 slot, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&stats, &slot);
	if (c)
		*c += 1; // per-CPU: no atomic needed
	return verdict;
}

static __always_inline int apply(__u8 proto, __be16 port)
{
	struct rule_key k = { .proto = proto, .port = port };
	struct rule_val *r = bpf_map_lookup_elem(&rules, &k);
	if (!r && port) {
		k.port = 0;
		r = bpf_map_lookup_elem(&rules, &k);
	}
	if (!r)
		return count(STAT_PASS, XDP_PASS);
	__sync_fetch_and_add(&r->hits, 1);
	if (r->action == XDP_DROP)
		return count(STAT_DROP, XDP_DROP);
	return count(STAT_PASS, XDP_PASS);
}

SEC("xdp")
int xdp_filter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return count(STAT_MALFORMED, XDP_DROP);
	__be16 type = eth->h_proto;
	void *p = eth + 1;
#pragma unroll
	for (int i = 0; i < 2; i++) { // 802.1Q and 802.1ad (QinQ) tags
		if (type != bpf_htons(ETH_P_8021Q) && type != bpf_htons(ETH_P_8021AD))
			break;
		struct vlan_hdr *v = p;
		if ((void *)(v + 1) > end)
			return count(STAT_MALFORMED, XDP_DROP);
		type = v->proto;
		p = v + 1;
	}
	if (type != bpf_htons(ETH_P_IP))
		return count(STAT_PASS, XDP_PASS);
	struct iphdr *ip = p;
	if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl < 5)
		return count(STAT_MALFORMED, XDP_DROP);
	void *l4 = (void *)ip + ip->ihl * 4;
	if (l4 > end)
		return count(STAT_MALFORMED, XDP_DROP);
	if (ip->frag_off & bpf_htons(0x1fff)) // a later fragment: no ports in it
		return apply(ip->protocol, 0);
	if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) {
		__be16 *ports = l4;
		if ((void *)(ports + 2) > end)
			return count(STAT_MALFORMED, XDP_DROP);
		return apply(ip->protocol, ports[1]);
	}
	return apply(ip->protocol, 0);
}

char LICENSE[] SEC("license") = "GPL";
