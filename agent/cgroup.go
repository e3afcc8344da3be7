package agent

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// ErrMalformedProcCgroup is returned for /proc/<pid>/cgroup content that is not
// "hierarchy-id:controllers:path" lines.
var ErrMalformedProcCgroup = errors.New("malformed /proc/<pid>/cgroup")

// CgroupLine is one line of /proc/<pid>/cgroup.
type CgroupLine struct {
	// HierarchyID is 0 for the cgroup v2 (unified) hierarchy.
	HierarchyID int
	// Controllers of a v1 hierarchy ("cpu,cpuacct", "name=systemd"); empty for v2.
	Controllers []string
	// Path of the cgroup, relative to the hierarchy's mount point, starting with "/".
	Path string
}

// ParseProcCgroup parses the content of /proc/<pid>/cgroup (cgroup v1, v2 or hybrid).
func ParseProcCgroup(data []byte) ([]CgroupLine, error) {
	var lines []CgroupLine
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		text := sc.Text()
		if text == "" {
			continue
		}
		parts := strings.SplitN(text, ":", 3)
		if len(parts) != 3 {
			return nil, fmt.Errorf("line %d %q: want 3 fields: %w", n, text, ErrMalformedProcCgroup)
		}
		id, err := strconv.Atoi(parts[0])
		if err != nil || id < 0 {
			return nil, fmt.Errorf("line %d %q: hierarchy id: %w", n, text, ErrMalformedProcCgroup)
		}
		if !strings.HasPrefix(parts[2], "/") {
			return nil, fmt.Errorf("line %d %q: path must start with /: %w", n, text, ErrMalformedProcCgroup)
		}
		l := CgroupLine{HierarchyID: id, Path: parts[2]}
		if parts[1] != "" {
			l.Controllers = strings.Split(parts[1], ",")
		}
		lines = append(lines, l)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	return lines, nil
}

// UnifiedPath returns the path of the cgroup v2 line, if any.
func UnifiedPath(lines []CgroupLine) (string, bool) {
	for _, l := range lines {
		if l.HierarchyID == 0 && len(l.Controllers) == 0 {
			return l.Path, true
		}
	}
	return "", false
}

// podUIDInPath matches the pod UID in the kubelet's cgroup names, for both cgroup drivers:
// cgroupfs ".../kubepods/besteffort/pod<uid>/<container>" and systemd
// ".../kubepods-besteffort-pod<uid with _ for ->.slice/cri-containerd-<id>.scope".
// A UID is written with one separator throughout: dashes (cgroupfs) or underscores
// (systemd); a mix is no kubelet's.
var podUIDInPath = regexp.MustCompile(`pod([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12})(?:\.slice)?(?:/|$)`)

// PodUIDFromCgroupPath returns the UID of the pod a kubelet-style cgroup path belongs to.
func PodUIDFromCgroupPath(path string) (string, bool) {
	if !strings.Contains(path, "kubepods") {
		return "", false
	}
	m := podUIDInPath.FindAllStringSubmatch(path, -1)
	if len(m) == 0 {
		return "", false
	}
	// The innermost pod segment wins (a kubelet nested in a pod, as in kind).
	return strings.ReplaceAll(m[len(m)-1][1], "_", "-"), true
}

// PodUIDFromProcCgroup returns the pod UID found in any hierarchy of a /proc/<pid>/cgroup
// content, the unified one first: on cgroup v1 nodes the socket's cgroup v2 id is the root's,
// and the v1 paths are what tell the pod.
func PodUIDFromProcCgroup(lines []CgroupLine) (string, bool) {
	if p, ok := UnifiedPath(lines); ok {
		if uid, ok := PodUIDFromCgroupPath(p); ok {
			return uid, true
		}
	}
	for _, l := range lines {
		if uid, ok := PodUIDFromCgroupPath(l.Path); ok {
			return uid, true
		}
	}
	return "", false
}
