package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	agentapi "github.com/qemu-shim/qemu-shim/api/agent/v1"
)

// DefaultVirtiofsd is the C virtiofsd Debian 12's qemu-system-common ships.
const DefaultVirtiofsd = "/usr/lib/qemu/virtiofsd"

// ShareTag is the virtio-fs tag the guest mounts the share by.
const ShareTag = agentapi.ShareTag

// Names in a VM's state directory.
const (
	// ShareDirName is the staging directory exported to the guest.
	ShareDirName        = "share"
	virtiofsdSocketName = "virtiofs.sock"
)

// virtiofsdStartWait bounds how long virtiofsd may take to listen.
var virtiofsdStartWait = 10 * time.Second

// Share exports the VM's staging directory (ShareDir) to the guest over
// virtio-fs: one virtiofsd per VM, the guest's RAM in shared memory (which
// virtiofsd maps). Only what is mounted into the staging directory is
// reachable from the guest.
type Share struct {
	// Virtiofsd is the daemon's binary (DefaultVirtiofsd).
	Virtiofsd string
}

// ShareMarker is a file at the top of the share directory, by which a
// process that entered virtiofsd's mount namespace knows it is there.
const ShareMarker = ".qemu-shim-share"

// ShareNamespacePid is a process in virtiofsd's mount namespace (0 without
// a share), whose root there is the share directory. Mounts made there
// reach the guest without ever being in the host's mount namespace, where
// they would keep the host's directories busy.
func (i *Instance) ShareNamespacePid() int {
	if i.virtiofsd == nil {
		return 0
	}
	return i.virtiofsd.pid()
}

// ShareDir is the directory exported to the guest, when the VM has a
// share: what is mounted below it in virtiofsd's mount namespace appears
// in the guest under the share's mount point.
func (i *Instance) ShareDir() string {
	if i.cfg.Share == nil {
		return ""
	}
	return filepath.Join(i.stateDir, ShareDirName)
}

func (i *Instance) virtiofsdSocket() string {
	return filepath.Join(i.stateDir, virtiofsdSocketName)
}

// startVirtiofsd starts virtiofsd on the staging directory, returning once
// it listens.
func (i *Instance) startVirtiofsd(ctx context.Context) error {
	dir := i.ShareDir()
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("vm %s: share directory: %w", i.cfg.ID, err)
	}
	// The staging mounts are made inside virtiofsd's own mount namespace
	// (see ShareNamespacePid), which this file marks the root of.
	if err := os.WriteFile(filepath.Join(dir, ShareMarker), nil, 0o400); err != nil {
		return fmt.Errorf("vm %s: share directory: %w", i.cfg.ID, err)
	}
	socket := i.virtiofsdSocket()
	// cache=auto with no timeout: the guest revalidates every lookup and
	// reopened file with the host, so a host change is seen at the next
	// access (close-to-open), while open files keep the page cache.
	args := []string{"--socket-path=" + socket, "-o", "source=" + dir, "-o", "cache=auto", "-o", "timeout=0",
		"-o", "sandbox=namespace", "-o", "announce_submounts", "-o", "log_level=warn"}
	p, err := startProcess(i.cfg.Share.Virtiofsd, args, nil)
	if err != nil {
		return fmt.Errorf("vm %s: %w", i.cfg.ID, err)
	}
	i.virtiofsd = p
	deadline := time.Now().Add(virtiofsdStartWait)
	for {
		if _, err := os.Stat(socket); err == nil {
			break
		}
		select {
		case <-p.exited:
			return fmt.Errorf("vm %s: virtiofsd exited at start: %s", i.cfg.ID, p.describe())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("vm %s: virtiofsd did not listen after %v: %w", i.cfg.ID, virtiofsdStartWait, context.DeadlineExceeded)
		}
	}
	go i.watchVirtiofsd(p)
	return nil
}

// watchVirtiofsd treats virtiofsd's death as the VM's: the containers'
// host files are gone, and a guest waiting on them would hang.
func (i *Instance) watchVirtiofsd(p *process) {
	<-p.exited
	select {
	case <-i.stopping:
		return
	default:
	}
	log.G(context.Background()).WithField("vm", i.cfg.ID).WithField("status", p.describe()).Error("virtiofsd exited under the VM: stopping it")
	if i.proc != nil {
		i.proc.signal(syscall.SIGKILL)
	}
}

// stopVirtiofsd ends virtiofsd (it normally exits with QEMU's connection).
func (i *Instance) stopVirtiofsd() {
	if i.virtiofsd == nil {
		return
	}
	if !i.virtiofsd.waitExit(time.Second) {
		i.virtiofsd.signal(syscall.SIGTERM)
		if !i.virtiofsd.waitExit(2 * time.Second) {
			i.virtiofsd.signal(syscall.SIGKILL)
			i.virtiofsd.waitExit(sigkillWait)
		}
	}
}

// checkShare validates the share's configuration.
func (s *Share) check() error {
	if s.Virtiofsd == "" {
		s.Virtiofsd = DefaultVirtiofsd
	}
	if _, err := os.Stat(s.Virtiofsd); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("virtiofsd %s is missing (Debian's qemu-system-common ships it; run 'make deps'): %w", s.Virtiofsd, errdefs.ErrNotFound)
		}
		return err
	}
	return nil
}
