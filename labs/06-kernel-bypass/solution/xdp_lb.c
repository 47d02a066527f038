// Lab 6, part 2: an L4 load balancer at the driver hook (lab 1's lb1, in
// XDP). TCP to VIP:port is sent to a backend chosen by a hash of the flow,
// remembered in `flows` (sticky: a flow keeps its backend when the backend
// table changes); replies get the VIP back as their source. Both directions
// leave by bpf_redirect() with the IPv4 and TCP checksums updated.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// --- the lab's interface: keep these layouts and names ---------------------
struct lb_config {
	__be32 vip;
	__be16 port;            // the service's TCP port (network byte order)
	__u16 num_backends;     // entries 0..num_backends-1 of `backends` are in use
	__u32 client_ifindex;   // interface towards the clients
	__u32 backend_ifindex;  // interface towards the backends
	__u8 client_mac[6];     // next hop towards the clients
	__u8 client_if_mac[6];  // our MAC on the client side
	__u8 backend_if_mac[6]; // our MAC on the backend side
	__u16 pad;
};

struct backend {
	__be32 ip;
	__u8 mac[6];
	__u16 pad;
};

struct flow_key {
	__be32 client_ip;
	__be16 client_port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, struct backend);
} backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct backend);
} flows SEC(".maps");
// ---------------------------------------------------------------------------

static __always_inline __u16 fold(__u64 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

// RFC 1624: checksum `c` after a 32-bit field changed from `from` to `to`.
static __always_inline __sum16 csum_replace4(__sum16 c, __be32 from, __be32 to)
{
	__u64 s = (__u16)~c;
	s += (__u16)~from + (__u16)(~from >> 16);
	s += (__u16)to + (__u16)(to >> 16);
	return ~fold(s);
}

static __always_inline __u32 flow_hash(__be32 saddr, __be16 sport, __be32 daddr, __be16 dport)
{
	__u32 h = 2166136261u; // FNV-1a over the 4-tuple
	__u32 w[3] = { saddr, daddr, ((__u32)sport << 16) | dport };
#pragma unroll
	for (int i = 0; i < 3; i++) {
#pragma unroll
		for (int b = 0; b < 4; b++) {
			h ^= (w[i] >> (b * 8)) & 0xff;
			h *= 16777619u;
		}
	}
	return h;
}

SEC("xdp")
int xdp_lb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct lb_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return XDP_ABORTED;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS; // ARP, IPv6, VLAN-tagged frames: the kernel's business
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return XDP_PASS; // too short to be ours
	if (ip->version != 4 || ip->ihl < 5)
		return ip->daddr == cfg->vip ? XDP_DROP : XDP_PASS;
	int to_vip = ip->daddr == cfg->vip;
	struct tcphdr *tcp = (void *)ip + ip->ihl * 4;
	if ((void *)(tcp + 1) > end || ip->protocol != IPPROTO_TCP ||
	    (ip->frag_off & bpf_htons(0x3fff)))
		return to_vip ? XDP_DROP : XDP_PASS; // the VIP serves unfragmented TCP only

	if (to_vip) {
		if (tcp->dest != cfg->port)
			return XDP_DROP;
		struct flow_key k = { .client_ip = ip->saddr, .client_port = tcp->source };
		struct backend *b = bpf_map_lookup_elem(&flows, &k);
		if (!b) {
			if (cfg->num_backends == 0)
				return XDP_DROP;
			__u32 idx = flow_hash(ip->saddr, tcp->source, ip->daddr, tcp->dest) %
				    cfg->num_backends;
			b = bpf_map_lookup_elem(&backends, &idx);
			if (!b)
				return XDP_DROP;
			struct backend copy = *b;
			bpf_map_update_elem(&flows, &k, &copy, BPF_ANY);
		}
		__be32 to = b->ip;
		__builtin_memcpy(eth->h_dest, b->mac, 6);
		__builtin_memcpy(eth->h_source, cfg->backend_if_mac, 6);
		ip->check = csum_replace4(ip->check, ip->daddr, to);
		tcp->check = csum_replace4(tcp->check, ip->daddr, to); // pseudo-header
		ip->daddr = to;
		return bpf_redirect(cfg->backend_ifindex, 0);
	}
	if (tcp->source != cfg->port)
		return XDP_PASS;
	struct flow_key k = { .client_ip = ip->daddr, .client_port = tcp->dest };
	struct backend *b = bpf_map_lookup_elem(&flows, &k);
	if (!b || b->ip != ip->saddr)
		return XDP_PASS; // not a reply of a balanced flow
	__be32 vip = cfg->vip;
	__builtin_memcpy(eth->h_dest, cfg->client_mac, 6);
	__builtin_memcpy(eth->h_source, cfg->client_if_mac, 6);
	ip->check = csum_replace4(ip->check, ip->saddr, vip);
	tcp->check = csum_replace4(tcp->check, ip->saddr, vip);
	ip->saddr = vip;
	return bpf_redirect(cfg->client_ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
