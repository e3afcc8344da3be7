//go:build ignore

// capture.c: which process (cgroup) owns the ztunnel capture listeners of each pod network
// namespace, and how many connections each one accepted.
//
// Source of truth is the inet_sock_set_state tracepoint (BTF raw tracepoint, no kprobes, no
// trampolines): CLOSE->LISTEN records an owner, LISTEN->CLOSE releases it, SYN_RECV->ESTABLISHED
// counts an accepted connection. An accepted socket is cloned from the listener that took the
// SYN, cgroup included, so with two SO_REUSEPORT listeners in different cgroups each accept is
// attributed to the one that really served it. The iter/tcp program lists the listeners that
// existed before the tracepoint was attached; user space reconciles the owners map with it.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

char __license[] SEC("license") = "Dual MIT/GPL";

// zt_owner_key identifies one owner of a capture port: a pod network namespace, a port and the
// cgroup (v2) of the sockets that listen on it. Padding is explicit so every byte is set.
struct zt_owner_key {
	__u64 netns_cookie;
	__u64 cgroup_id;
	__u16 port;
	__u8 pad[6];
};

// zt_owner is what is known about one owner key. Times are CLOCK_BOOTTIME nanoseconds.
struct zt_owner {
	__u64 bound_ns;       // last time a socket of this owner started listening
	__u64 closed_ns;      // last time its listener count dropped to zero (0: never)
	__u64 accepts;        // connections accepted (SYN_RECV -> ESTABLISHED)
	__u64 last_accept_ns; // time of the last accepted connection
	__u32 tgid;           // process that called listen() last
	__s32 listeners;      // listening sockets now held by this owner
	char comm[16];        // command name of tgid
};

// zt_listener is one record of the iter/tcp scan.
struct zt_listener {
	__u64 netns_cookie;
	__u64 cgroup_id;
	__u32 uid;
	__u16 port;
	__u8 pad[2];
};

// capture_ports holds the ports to follow (host byte order); user space fills it.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u16);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} capture_ports SEC(".maps");

// owners: (netns cookie, cgroup id, port) -> owner. 250 pods x 3 ports x 2 revisions fits
// many times over; user space deletes closed owners and vanished namespaces.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct zt_owner_key);
	__type(value, struct zt_owner);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} owners SEC(".maps");

// Makes bpf2go emit a Go type for the iterator's records (the map types are emitted anyway).
const struct zt_listener *unused_listener __attribute__((unused));

static __always_inline int is_capture_port(__u16 port)
{
	return bpf_map_lookup_elem(&capture_ports, &port) != NULL;
}

static __always_inline __u64 sk_cgroup_id(const struct sock *sk)
{
	return BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);
}

static __always_inline __u64 sk_netns_cookie(const struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, net_cookie);
}

static __always_inline struct zt_owner *owner_of(const struct sock *sk, __u16 port)
{
	struct zt_owner_key key = {};
	key.netns_cookie = sk_netns_cookie(sk);
	key.cgroup_id = sk_cgroup_id(sk);
	key.port = port;

	struct zt_owner *o = bpf_map_lookup_elem(&owners, &key);
	if (o)
		return o;
	struct zt_owner zero = {};
	bpf_map_update_elem(&owners, &key, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&owners, &key);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(sock_set_state, const struct sock *sk, const int oldstate, const int newstate)
{
	// Most transitions of a connection are none of these: leave before touching the socket.
	int listen = newstate == TCP_LISTEN && oldstate != TCP_LISTEN;
	int unlisten = oldstate == TCP_LISTEN && newstate == TCP_CLOSE;
	int accepted = oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED;
	if (!listen && !unlisten && !accepted)
		return 0;

	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;

	__u16 port = BPF_CORE_READ(sk, __sk_common.skc_num);
	if (!is_capture_port(port))
		return 0;

	struct zt_owner *o = owner_of(sk, port);
	if (!o)
		return 0;
	__u64 now = bpf_ktime_get_boot_ns();

	if (listen) {
		o->tgid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(&o->comm, sizeof(o->comm));
		o->bound_ns = now;
		__sync_fetch_and_add(&o->listeners, 1);
	} else if (unlisten) {
		// Never go below zero: a listener that existed before the tracepoint was attached
		// and was not reconciled yet must not make a later one look closed.
		if (o->listeners > 0 && __sync_fetch_and_add(&o->listeners, -1) == 1)
			o->closed_ns = now;
	} else {
		__sync_fetch_and_add(&o->accepts, 1);
		o->last_accept_ns = now;
	}
	return 0;
}

// scan_listeners writes one struct zt_listener per TCP listener on a capture port of the network
// namespace of the thread that opened the iterator.
SEC("iter/tcp")
int scan_listeners(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	if (!skc)
		return 0;
	if (BPF_CORE_READ(skc, skc_state) != TCP_LISTEN)
		return 0;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	const struct sock *sk = (const struct sock *)tp;

	__u16 port = BPF_CORE_READ(sk, __sk_common.skc_num);
	if (!is_capture_port(port))
		return 0;

	struct zt_listener rec = {};
	rec.netns_cookie = sk_netns_cookie(sk);
	rec.cgroup_id = sk_cgroup_id(sk);
	rec.uid = ctx->uid;
	rec.port = port;
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	return 0;
}
