package task

import (
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	agentapi "github.com/qemu-shim/qemu-shim/api/agent/v1"
)

// ShareMountPoint is where the host's share of files (virtio-fs) is
// mounted in the guest.
const ShareMountPoint = "/run/qemu-shim/share"

// shareWait bounds how long a mount waits for the share's device: a share
// hot-plugged after a restore (see vm.Config.Restore) is probed while the
// first container that needs it is being created.
var shareWait = 15 * time.Second

// MountShare returns a function that mounts the host's share at dir the
// first time it succeeds and returns dir; every later call returns dir. A
// failed mount is tried again by the next call. Nothing on it is a device
// or set-uid, whatever the host put there.
func MountShare(dir string) func() (string, error) {
	var (
		mu      sync.Mutex
		mounted bool
	)
	return func() (string, error) {
		mu.Lock()
		defer mu.Unlock()
		if mounted {
			return dir, nil
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", err
		}
		deadline := time.Now().Add(shareWait)
		for {
			err := unix.Mount(agentapi.ShareTag, dir, "virtiofs", unix.MS_NODEV|unix.MS_NOSUID, "")
			if err == nil {
				break
			}
			// virtio-fs answers EINVAL for a tag no device has (yet).
			if err != unix.EINVAL || time.Now().After(deadline) {
				return "", fmt.Errorf("mount the host's share (virtio-fs %s) on %s: %w", agentapi.ShareTag, dir, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		mounted = true
		return dir, nil
	}
}
