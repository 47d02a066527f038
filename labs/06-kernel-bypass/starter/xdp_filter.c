// Lab 6, part 1 (starter): a filter at the driver hook. Rules live in the `rules`
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

SEC("xdp")
int xdp_filter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_DROP;
	// TODO 1: skip up to two VLAN tags (ETH_P_8021Q, ETH_P_8021AD); a tag
	//         cut short is malformed.
	// TODO 2: not IPv4: XDP_PASS. IPv4: check version and ihl, find the L4
	//         header at ihl * 4 (options!); anything cut short is malformed.
	// TODO 3: later fragments (offset != 0) have no ports: look up {proto, 0}.
	//         TCP/UDP: look up {proto, dst port}, then {proto, 0}. Others: {proto, 0}.
	// TODO 4: a matching rule decides (its action) and counts a hit
	//         (__sync_fetch_and_add); no rule: XDP_PASS.
	// TODO 5: count every frame in stats: STAT_PASS, STAT_DROP or
	//         STAT_MALFORMED (malformed frames are dropped).
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
