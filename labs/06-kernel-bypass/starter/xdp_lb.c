// Lab 6, part 2 (starter): an L4 load balancer at the driver hook (lab 1's lb1, in
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
		return XDP_PASS;
	// TODO 1: parse IPv4 (ihl: options!) and TCP; to the VIP, only
	//         unfragmented TCP to cfg->port is served, the rest dropped.
	// TODO 2: forward: look the flow up in `flows`; a new flow gets
	//         backends[hash(4-tuple) % cfg->num_backends], remembered in `flows`.
	//         Rewrite MACs and the destination address, fix the IPv4 and TCP
	//         checksums (csum_replace4 above), bpf_redirect(cfg->backend_ifindex, 0).
	// TODO 3: replies (from a flow's backend, source port cfg->port): source
	//         back to the VIP, MACs towards the client, checksums,
	//         bpf_redirect(cfg->client_ifindex, 0). Anything else: XDP_PASS.
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
