package agent

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/ztcanary/ztcanary/bpf"
)

// Probe holds the loaded capture programs, their links and their pinned maps.
type Probe struct {
	log    *zap.Logger
	opts   ProbeOptions
	objs   bpf.CaptureObjects
	tracer link.Link
	iter   *link.Iter
	closed bool
}

// Load loads the capture programs, reuses or creates their maps pinned in opts.PinDir (so
// counts survive a restart), sets the capture ports and attaches the programs.
func Load(log *zap.Logger, opts ProbeOptions) (*Probe, error) {
	opts = opts.withDefaults()
	if len(opts.Ports) > 16 {
		return nil, fmt.Errorf("%d capture ports: at most 16", len(opts.Ports))
	}
	if err := ensureBPFFS(filepath.Dir(opts.PinDir)); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.PinDir, 0o700); err != nil {
		return nil, fmt.Errorf("create pin dir: %w", err)
	}
	p := &Probe{log: log.Named("probe"), opts: opts}
	start := time.Now()
	err := bpf.LoadCaptureObjects(&p.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: opts.PinDir}})
	if err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("load capture programs: pins in %s have another shape (bump the version in the folder name): %w", opts.PinDir, err)
		}
		return nil, fmt.Errorf("load capture programs: %w", err)
	}
	if err := p.SetPorts(opts.Ports); err != nil {
		p.objs.Close()
		return nil, err
	}
	p.tracer, err = link.AttachTracing(link.TracingOptions{Program: p.objs.SockSetState})
	if err != nil {
		p.objs.Close()
		return nil, fmt.Errorf("attach tp_btf/inet_sock_set_state: %w", err)
	}
	p.iter, err = link.AttachIter(link.IterOptions{Program: p.objs.ScanListeners})
	if err != nil {
		p.tracer.Close()
		p.objs.Close()
		return nil, fmt.Errorf("attach iter/tcp: %w", err)
	}
	p.log.Info("capture programs attached", zap.String("pinDir", opts.PinDir),
		zap.Uint16s("ports", opts.Ports), zap.Duration("took", time.Since(start)))
	return p, nil
}

// ensureBPFFS checks that dir is on a bpf filesystem, mounting one at /sys/fs/bpf when dir
// is below it and nothing is mounted there yet.
func ensureBPFFS(dir string) error {
	const mnt = "/sys/fs/bpf"
	onBPF := func() (bool, error) {
		for d := dir; ; d = filepath.Dir(d) {
			var st unix.Statfs_t
			if err := unix.Statfs(d, &st); err == nil {
				return st.Type == unix.BPF_FS_MAGIC, nil
			} else if !errors.Is(err, unix.ENOENT) {
				return false, fmt.Errorf("statfs %s: %w", d, err)
			}
			if d == "/" || d == "." {
				return false, nil
			}
		}
	}
	ok, err := onBPF()
	if err != nil || ok {
		return err
	}
	if dir != mnt && !strings.HasPrefix(dir, mnt+"/") {
		return fmt.Errorf("pin folder %s is not on a bpf filesystem", dir)
	}
	if err := unix.Mount("bpf", mnt, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", mnt, err)
	}
	return nil
}

// Close detaches the programs and closes the maps. The maps stay pinned, with their counts.
// Closing twice is harmless.
func (p *Probe) Close() error {
	if p.closed {
		return nil
	}
	p.closed = true
	var errs []error
	if p.iter != nil {
		errs = append(errs, p.iter.Close())
	}
	if p.tracer != nil {
		errs = append(errs, p.tracer.Close())
	}
	errs = append(errs, p.objs.Close())
	return errors.Join(errs...)
}

// Unpin removes the pinned maps and the pin folder, for uninstall and tests. Close the probe
// afterwards.
func (p *Probe) Unpin() error {
	errs := []error{p.objs.Owners.Unpin(), p.objs.CapturePorts.Unpin()}
	if err := os.Remove(p.opts.PinDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// SetPorts replaces the set of capture ports the programs follow.
func (p *Probe) SetPorts(ports []uint16) error {
	want := map[uint16]bool{}
	for _, port := range ports {
		want[port] = true
		if err := p.objs.CapturePorts.Put(port, uint8(1)); err != nil {
			return fmt.Errorf("set capture port %d: %w", port, err)
		}
	}
	var (
		port  uint16
		v     uint8
		stale []uint16
	)
	it := p.objs.CapturePorts.Iterate()
	for it.Next(&port, &v) {
		if !want[port] {
			stale = append(stale, port)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list capture ports: %w", err)
	}
	for _, port := range stale {
		if err := p.objs.CapturePorts.Delete(port); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("unset capture port %d: %w", port, err)
		}
	}
	return nil
}

// Listener is one listening socket found by a scan.
type Listener struct {
	NetnsCookie uint64
	Port        uint16
	CgroupID    uint64
	UID         uint32
}

// Scan lists the capture-port listeners of network namespace ns with the iter/tcp program
// (the iterator sees the namespace of the thread that opens it) and returns them with the
// namespace's cookie.
func (p *Probe) Scan(ns netns.NsHandle) (uint64, []Listener, error) {
	var (
		cookie uint64
		rd     io.ReadCloser
	)
	err := InNetns(ns, func() error {
		var err error
		if cookie, err = currentNetnsCookie(); err != nil {
			return err
		}
		if rd, err = p.iter.Open(); err != nil {
			return fmt.Errorf("open tcp iterator: %w", err)
		}
		return nil
	})
	if err != nil {
		return 0, nil, err
	}
	defer rd.Close()
	data, err := io.ReadAll(rd)
	if err != nil {
		return 0, nil, fmt.Errorf("read tcp iterator: %w", err)
	}
	var rec bpf.CaptureZtListener
	size := binary.Size(rec)
	if len(data)%size != 0 {
		return 0, nil, fmt.Errorf("tcp iterator gave %d bytes, not a multiple of %d", len(data), size)
	}
	var out []Listener
	r := bytes.NewReader(data)
	for r.Len() > 0 {
		if err := binary.Read(r, binary.NativeEndian, &rec); err != nil {
			return 0, nil, fmt.Errorf("decode listener: %w", err)
		}
		if rec.NetnsCookie != cookie {
			continue // cannot happen: the iterator is per namespace
		}
		out = append(out, Listener{NetnsCookie: rec.NetnsCookie, Port: rec.Port, CgroupID: rec.CgroupId, UID: rec.Uid})
	}
	return cookie, out, nil
}

// Reconcile scans network namespaces and corrects the owners map to match the listeners
// they hold now: owners bound before the programs were attached (or while the agent was
// down) are added, owners whose listeners went away meanwhile are marked closed. Counts of
// accepted connections are kept. It returns the namespaces' cookies. The map is read once
// for all namespaces. A listen or close in a namespace between its scan and the correction
// can be overwritten; the agent reconciles a namespace only when it first sees it.
func (p *Probe) Reconcile(nss ...netns.NsHandle) ([]uint64, error) {
	type key struct {
		cookie, cgroup uint64
		port           uint16
	}
	seen := map[key]int32{}
	scanned := map[uint64]bool{}
	var cookies []uint64
	for _, ns := range nss {
		cookie, ls, err := p.Scan(ns)
		if err != nil {
			return nil, err
		}
		cookies = append(cookies, cookie)
		scanned[cookie] = true
		for _, l := range ls {
			seen[key{cookie, l.CgroupID, l.Port}]++
		}
	}
	now := bootNanos()
	var (
		k    bpf.CaptureZtOwnerKey
		v    bpf.CaptureZtOwner
		fix  = map[bpf.CaptureZtOwnerKey]bpf.CaptureZtOwner{}
		done = map[key]bool{}
	)
	it := p.objs.Owners.Iterate()
	for it.Next(&k, &v) {
		if !scanned[k.NetnsCookie] {
			continue
		}
		kk := key{k.NetnsCookie, k.CgroupId, k.Port}
		done[kk] = true
		n := seen[kk]
		if v.Listeners == n {
			continue
		}
		if n == 0 && v.Listeners > 0 {
			v.ClosedNs = now
		}
		v.Listeners = n
		fix[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list owners: %w", err)
	}
	for kk, n := range seen {
		if done[kk] {
			continue
		}
		fix[bpf.CaptureZtOwnerKey{NetnsCookie: kk.cookie, CgroupId: kk.cgroup, Port: kk.port}] = bpf.CaptureZtOwner{Listeners: n}
	}
	for k, v := range fix {
		if err := p.objs.Owners.Put(k, v); err != nil {
			return nil, fmt.Errorf("reconcile owner: %w", err)
		}
	}
	if len(fix) > 0 {
		p.log.Info("reconciled listeners", zap.Int("namespaces", len(nss)), zap.Int("fixed", len(fix)))
	}
	return cookies, nil
}

// Snapshot reads every owner from the map.
func (p *Probe) Snapshot() ([]Owner, error) {
	clock := newBootClock()
	var (
		k   bpf.CaptureZtOwnerKey
		v   bpf.CaptureZtOwner
		out []Owner
	)
	it := p.objs.Owners.Iterate()
	for it.Next(&k, &v) {
		out = append(out, Owner{
			NetnsCookie: k.NetnsCookie,
			Port:        k.Port,
			CgroupID:    k.CgroupId,
			TGID:        v.Tgid,
			Comm:        commString(v.Comm),
			Listeners:   v.Listeners,
			Accepts:     v.Accepts,
			Bound:       clock.wall(v.BoundNs),
			Closed:      clock.wall(v.ClosedNs),
			LastAccept:  clock.wall(v.LastAcceptNs),
		})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read owners: %w", err)
	}
	return out, nil
}

// GC deletes owners in network namespaces not in live (when live is not nil) and owners
// closed before closedBefore that listen no more. It returns how many it deleted.
func (p *Probe) GC(live map[uint64]bool, closedBefore time.Time) (int, error) {
	clock := newBootClock()
	var (
		k    bpf.CaptureZtOwnerKey
		v    bpf.CaptureZtOwner
		dead []bpf.CaptureZtOwnerKey
	)
	it := p.objs.Owners.Iterate()
	for it.Next(&k, &v) {
		gone := live != nil && !live[k.NetnsCookie]
		stale := v.Listeners <= 0 && v.ClosedNs != 0 && clock.wall(v.ClosedNs).Before(closedBefore)
		if gone || stale {
			dead = append(dead, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("list owners: %w", err)
	}
	n := 0
	for _, k := range dead {
		if err := p.objs.Owners.Delete(k); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue
			}
			return n, fmt.Errorf("delete owner: %w", err)
		}
		n++
	}
	return n, nil
}

// MapStats describes the size of the owners map.
type MapStats struct {
	Entries, MaxEntries int
	KeySize, ValueSize  int
	// Memlock is the kernel memory charged for the map, in bytes (0 if unknown).
	Memlock uint64
}

// Stats counts the owners map's entries.
func (p *Probe) Stats() (MapStats, error) {
	info, err := p.objs.Owners.Info()
	if err != nil {
		return MapStats{}, fmt.Errorf("owners map info: %w", err)
	}
	s := MapStats{MaxEntries: int(info.MaxEntries), KeySize: int(info.KeySize), ValueSize: int(info.ValueSize)}
	s.Memlock, _ = info.Memlock()
	var (
		k bpf.CaptureZtOwnerKey
		v bpf.CaptureZtOwner
	)
	it := p.objs.Owners.Iterate()
	for it.Next(&k, &v) {
		s.Entries++
	}
	return s, it.Err()
}

func commString(c [16]int8) string {
	b := make([]byte, 0, len(c))
	for _, x := range c {
		if x == 0 {
			break
		}
		b = append(b, byte(x))
	}
	return string(b)
}

func bootNanos() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return uint64(ts.Nano())
}

// bootClock converts CLOCK_BOOTTIME nanoseconds (bpf_ktime_get_boot_ns) to wall time.
type bootClock struct {
	now  time.Time
	boot uint64
}

func newBootClock() bootClock { return bootClock{now: time.Now(), boot: bootNanos()} }

func (c bootClock) wall(ns uint64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return c.now.Add(-time.Duration(int64(c.boot) - int64(ns)))
}
