//go:build linux

package simdataplane

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The stand-in ztunnel is the running binary re-executed with these variables set.
const (
	envPorts    = "ZTCANARY_SIMDATAPLANE_ZTUNNEL_PORTS"
	envNoListen = "ZTCANARY_SIMDATAPLANE_ZTUNNEL_NOLISTEN"
	envDrain    = "ZTCANARY_SIMDATAPLANE_ZTUNNEL_DRAIN"
)

func init() {
	if spec := os.Getenv(envPorts); spec != "" {
		os.Exit(standinMain(spec))
	}
}

// standinMain is a stand-in ztunnel in in-pod mode. It reads commands on stdin and
// answers each with "ok" or "error: ...":
//
//	add <pod uid> <netns path>   bind the capture ports in the pod's namespace
//	del <pod uid>                close them
//
// On SIGTERM it closes every listener at once, as ztunnel does, and exits after its
// drain period; on end of input (its parent gone) it exits.
func standinMain(spec string) int {
	var ports []int
	for _, p := range strings.Split(spec, ",") {
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 || n > 65535 {
			fmt.Fprintf(os.Stderr, "stand-in ztunnel: bad port %q\n", p)
			return 2
		}
		ports = append(ports, n)
	}
	drain, err := time.ParseDuration(os.Getenv(envDrain))
	if err != nil {
		drain = time.Second
	}
	s := &standin{ports: ports, noListen: os.Getenv(envNoListen) != "", pods: map[string][]net.Listener{}}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() {
		<-term
		s.terminate()
		fmt.Fprintf(os.Stderr, "stand-in ztunnel: SIGTERM: listeners closed, draining %s\n", drain)
		time.Sleep(drain)
		os.Exit(0)
	}()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		var err error
		switch {
		case len(f) == 3 && f[0] == "add":
			err = s.add(f[1], f[2])
		case len(f) == 2 && f[0] == "del":
			s.del(f[1])
		default:
			err = fmt.Errorf("unknown command %q", in.Text())
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "stand-in ztunnel: %v\n", err)
			fmt.Printf("error: %v\n", err)
			continue
		}
		fmt.Println("ok")
	}
	return 0
}

type standin struct {
	ports       []int
	noListen    bool
	mu          sync.Mutex
	pods        map[string][]net.Listener
	terminating bool
}

func (s *standin) add(uid, path string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.terminating {
		return errors.New("terminating: no new pods")
	}
	if _, ok := s.pods[uid]; ok {
		return nil
	}
	if s.noListen {
		s.pods[uid] = nil // told about the pod, binds nothing
		return nil
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer unix.Close(fd)
	var ls []net.Listener
	err = inNetns(fd, func() error {
		for _, port := range s.ports {
			l, err := listenReusePort(port)
			if err != nil {
				return fmt.Errorf("listen on %d: %w", port, err)
			}
			ls = append(ls, l)
		}
		return nil
	})
	if err != nil {
		for _, l := range ls {
			l.Close()
		}
		return fmt.Errorf("pod %s: %w", uid, err)
	}
	for _, l := range ls {
		go serve(l)
	}
	s.pods[uid] = ls
	return nil
}

func (s *standin) del(uid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.pods[uid] {
		l.Close()
	}
	delete(s.pods, uid)
}

func (s *standin) terminate() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.terminating = true
	for uid, ls := range s.pods {
		for _, l := range ls {
			l.Close()
		}
		delete(s.pods, uid)
	}
}

// listenReusePort listens on all addresses of the current namespace with
// SO_REUSEPORT, so two ztunnels can hold the port during a handoff.
func listenReusePort(port int) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	lc.SetMultipathTCP(false) // Go listens with MPTCP by default; ztunnel uses plain TCP
	return lc.Listen(context.Background(), "tcp4", ":"+strconv.Itoa(port))
}

// serve accepts connections and holds each until its peer closes it.
func serve(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			_, _ = io.Copy(io.Discard, c)
			c.Close()
		}()
	}
}

// ztunnel is the parent's handle on a running stand-in.
type ztunnel struct {
	pod      podRef
	seq      int // start order, to break creation-time ties
	cmd      *exec.Cmd
	in       *os.File
	out      *os.File
	rd       *bufio.Reader
	scope    string // cgroup v2 directory of its container
	podSlice string // the pod's cgroup directory
	noListen bool
	serving  map[string]bool // pod UIDs handed to it

	terminating bool
	exited      chan struct{}
	exitErr     error
}

// startZtunnel starts a stand-in for pod z inside a new container cgroup of the pod,
// created under root the way the kubelet's systemd driver names it.
func startZtunnel(root string, z podRef, seq int, cfg Config, logPath string) (_ *ztunnel, err error) {
	podSlice := podCgroupDir(root, z.node, z.uid)
	scope := podSlice + "/cri-containerd-" + randHex(32) + ".scope"
	if err := os.MkdirAll(scope, 0o755); err != nil {
		return nil, fmt.Errorf("create cgroup of ztunnel %s: %w", z.key(), err)
	}
	defer func() {
		if err != nil {
			_ = unix.Rmdir(scope)
		}
	}()
	cg, err := unix.Open(scope, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open cgroup %s: %w", scope, err)
	}
	defer unix.Close(cg)
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this executable: %w", err)
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open ztunnel log: %w", err)
	}
	defer logf.Close()
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	var ports []string
	for _, p := range cfg.Ports {
		ports = append(ports, strconv.Itoa(int(p)))
	}
	noListen := false
	for _, r := range cfg.NoListen {
		noListen = noListen || r == z.revision
	}
	cmd := exec.Command(exe)
	cmd.Args = []string{"ztunnel"}
	cmd.Env = append(os.Environ(), envPorts+"="+strings.Join(ports, ","), envDrain+"="+cfg.Drain.String())
	if noListen {
		cmd.Env = append(cmd.Env, envNoListen+"=1")
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, logf
	// Born inside its cgroup (CLONE_INTO_CGROUP), so every socket it ever opens is
	// charged to the pod; killed if this process dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cg, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, fmt.Errorf("start stand-in ztunnel %s: %w", z.key(), err)
	}
	zt := &ztunnel{pod: z, seq: seq, cmd: cmd, in: inW, out: outR, rd: bufio.NewReader(outR), scope: scope, podSlice: podSlice,
		noListen: noListen, serving: map[string]bool{}, exited: make(chan struct{})}
	return zt, nil
}

// do sends one command and waits for its answer.
func (z *ztunnel) do(cmd string) error {
	if _, err := fmt.Fprintln(z.in, cmd); err != nil {
		return fmt.Errorf("ztunnel %s: send %q: %w", z.pod.key(), cmd, err)
	}
	_ = z.out.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := z.rd.ReadString('\n')
	if err != nil {
		return fmt.Errorf("ztunnel %s: answer to %q: %w", z.pod.key(), cmd, err)
	}
	if line = strings.TrimSpace(line); line != "ok" {
		return fmt.Errorf("ztunnel %s: %s", z.pod.key(), line)
	}
	return nil
}

// serve hands pod p (its namespace at path) to the ztunnel.
func (z *ztunnel) serve(p *podNetns) error {
	if z.serving[p.uid] {
		return nil
	}
	if err := z.do("add " + p.uid + " " + p.fdPath()); err != nil {
		return err
	}
	z.serving[p.uid] = true
	return nil
}

// forget tells the ztunnel that pod uid is gone.
func (z *ztunnel) forget(uid string) error {
	if !z.serving[uid] {
		return nil
	}
	delete(z.serving, uid)
	if z.terminating || z.done() {
		return nil // it closed everything already
	}
	return z.do("del " + uid)
}

// terminate sends SIGTERM once.
func (z *ztunnel) terminate() {
	if z.terminating {
		return
	}
	z.terminating = true
	_ = z.cmd.Process.Signal(syscall.SIGTERM)
}

// kill sends SIGKILL (by PID) and waits for the exit.
func (z *ztunnel) kill() {
	if !z.done() {
		_ = z.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-z.exited
}

func (z *ztunnel) done() bool {
	select {
	case <-z.exited:
		return true
	default:
		return false
	}
}

// removeCgroups removes the container's cgroup and, when no other container is left
// in it, the pod's.
func (z *ztunnel) removeCgroups() error {
	if err := unix.Rmdir(z.scope); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove cgroup %s: %w", z.scope, err)
	}
	if err := unix.Rmdir(z.podSlice); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("remove cgroup %s: %w", z.podSlice, err)
	}
	return nil
}

func (z *ztunnel) state() ZtunnelState {
	s := ZtunnelState{Namespace: z.pod.namespace, Name: z.pod.name, UID: z.pod.uid, Revision: z.pod.revision,
		PID: z.cmd.Process.Pid, Cgroup: z.scope, Listening: !z.noListen, Terminating: z.terminating}
	return s
}
