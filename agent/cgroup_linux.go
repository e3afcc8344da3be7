package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// DefaultCgroup2Root is where cgroup v2 is mounted on hybrid nodes; pure v2 nodes mount it
// at /sys/fs/cgroup.
const DefaultCgroup2Root = "/sys/fs/cgroup/unified"

// FindCgroup2Root returns the cgroup v2 mount point of this host.
func FindCgroup2Root() (string, error) {
	for _, p := range []string{DefaultCgroup2Root, "/sys/fs/cgroup"} {
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return p, nil
		}
	}
	return "", errors.New("no cgroup v2 mount at /sys/fs/cgroup/unified or /sys/fs/cgroup")
}

// CgroupID returns the id of the cgroup v2 directory dir: its inode number, which is what the
// kernel reports as the cgroup's kernfs id.
func CgroupID(dir string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, fmt.Errorf("stat cgroup %s: %w", dir, err)
	}
	return st.Ino, nil
}

// PodCgroupIndex maps cgroup ids to the pods they belong to.
type PodCgroupIndex struct {
	// PodOf maps the id of every cgroup of a pod (the pod's own and its containers') to the
	// pod UID.
	PodOf map[uint64]string
	// PodDir maps a pod UID to the id of the pod's own cgroup (the outermost one).
	PodDir map[string]uint64
}

// PodCgroups walks the cgroup v2 tree under root and indexes the cgroups of pods.
func PodCgroups(root string) (PodCgroupIndex, error) {
	ix := PodCgroupIndex{PodOf: map[uint64]string{}, PodDir: map[string]uint64{}}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // a cgroup removed while walking
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		uid, ok := PodUIDFromCgroupPath("/" + rel)
		if !ok {
			return nil
		}
		id, err := CgroupID(path)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		ix.PodOf[id] = uid
		if _, ok := ix.PodDir[uid]; !ok { // WalkDir visits parents first
			ix.PodDir[uid] = id
		}
		return nil
	})
	if err != nil {
		return PodCgroupIndex{}, fmt.Errorf("walk cgroups under %s: %w", root, err)
	}
	return ix, nil
}

// ProcessPodUID reads /proc/<pid>/cgroup under procRoot ("/proc" on the host) and returns the
// UID of the pod the process runs in. This is the fallback for cgroup v1 nodes, where the
// socket's cgroup v2 id does not tell the pod.
func ProcessPodUID(procRoot string, pid uint32) (string, error) {
	data, err := os.ReadFile(filepath.Join(procRoot, strconv.FormatUint(uint64(pid), 10), "cgroup"))
	if err != nil {
		return "", fmt.Errorf("read cgroup of pid %d: %w", pid, err)
	}
	lines, err := ParseProcCgroup(data)
	if err != nil {
		return "", fmt.Errorf("pid %d: %w", pid, err)
	}
	uid, ok := PodUIDFromProcCgroup(lines)
	if !ok {
		return "", fmt.Errorf("pid %d: no pod cgroup", pid)
	}
	return uid, nil
}
