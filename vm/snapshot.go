package vm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	agentapi "github.com/qemu-shim/qemu-shim/api/agent/v1"
	"github.com/qemu-shim/qemu-shim/internal/transport"
	"github.com/qemu-shim/qemu-shim/vm/cmdline"
)

// A VM can be saved once booted (SaveState) and later VMs started by
// restoring that state (Config.Restore) instead of booting: QEMU's
// migration stream, written to a file and read back by a new QEMU with the
// same guest-visible devices. Host backends (sockets, QMP, console, taps,
// virtiofsd) come from the new command line; what is not on the template's
// command line (disks, network cards, the virtio-fs share) is hot-plugged
// after the restore, as for a booted VM.

// Bounds of saving and restoring.
var (
	saveTimeout = 2 * time.Minute
	seedBytes   = 64
)

// shareDeviceID and shareChardevID name a hot-plugged virtio-fs device.
const (
	shareDeviceID  = "virtiofs0"
	shareChardevID = "virtiofs"
)

// templateStateDir stands in for a VM's state directory in the command
// line that ShapeKey hashes: the paths under it differ between VMs and are
// host backends only.
const templateStateDir = "/qemu-shim-template"

// Templatable says why cfg cannot be saved or restored as a template, or
// nil: such a VM has no devices but its boot devices and the tools disk.
// Its memory may be shared or private either way: the same state restores
// into both (a VM that will have a share restores into shared memory;
// private memory loads faster).
func (c Config) Templatable() error {
	switch {
	case len(c.Disks) > 0:
		return fmt.Errorf("boot disks are not part of a template: %w", errdefs.ErrNotImplemented)
	case len(c.NICs) > 0:
		return fmt.Errorf("boot network cards are not part of a template: %w", errdefs.ErrNotImplemented)
	}
	return nil
}

// ShapeKey identifies what a VM restored from a template must have in
// common with the template: the guest-visible command line (machine,
// vCPUs, memory, devices, kernel command line, accelerator, transport) and
// the identity of every file the guest or QEMU was started from. Two
// configurations with the same key can restore each other's state.
func ShapeKey(cfg Config) (string, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return "", err
	}
	if err := cfg.Templatable(); err != nil {
		return "", err
	}
	// Where the memory lives and what is restored are the host's; the
	// template's RAM is in a memory file, like every restored VM's.
	cfg.Share, cfg.Restore, cfg.SharedMemory, cfg.ForTemplate = nil, "", false, true
	i := &Instance{cfg: cfg, stateDir: templateStateDir}
	accel, kind := i.resolve()
	var link agentLink = &serialLink{socket: templateStateDir + "/" + agentSocketName}
	if kind == transport.VSock {
		// The CID is the new VM's own: the guest learns it again after
		// the restore (vhost-vsock resets its transport on load).
		link = placeholderVsock{}
	}
	m, err := i.machine(accel, link, confinement{})
	if err != nil {
		return "", err
	}
	args, err := m.Args()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "qemu-shim template v2\n%s\n", strings.Join(args, "\x00"))
	qemu, err := exec.LookPath(cfg.QEMU)
	if err != nil {
		return "", fmt.Errorf("QEMU %s: %w", cfg.QEMU, err)
	}
	for _, f := range []string{qemu, cfg.Kernel, cfg.Initrd, cfg.Tools, cfg.Firmware} {
		if f == "" {
			continue
		}
		id, err := fileIdentity(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\n", id)
	}
	return hex.EncodeToString(h.Sum(nil))[:24], nil
}

// fileIdentity names a file's content as far as its metadata can: a file
// rewritten or replaced gets another identity.
func fileIdentity(path string) (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return "", fmt.Errorf("template input %s: %w", path, err)
	}
	return fmt.Sprintf("%s dev=%d ino=%d size=%d mtime=%d.%09d ctime=%d.%09d", path, st.Dev, st.Ino, st.Size,
		st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec), nil
}

// placeholderVsock is the vsock link as ShapeKey sees it: any CID.
type placeholderVsock struct{}

func (placeholderVsock) kind() transport.Kind         { return transport.VSock }
func (placeholderVsock) configure(m *cmdline.Machine) { m.VsockCID = 3 }
func (placeholderVsock) connect(context.Context) (transport.Host, error) {
	return nil, errdefs.ErrNotImplemented
}
func (placeholderVsock) park(context.Context) error { return nil }
func (placeholderVsock) release()                   {}

// Restored says whether the VM was started from a saved state.
func (i *Instance) Restored() bool { return i.cfg.Restore != "" }

// SaveState readies the guest (Prepare), lets go of it so that it waits for
// the next host, pauses it and writes its state into dir (SavedStateName
// and SavedMemoryName), which must exist. QEMU stays paused afterwards:
// the caller ends it (Kill). The VM must be templatable and started
// ForTemplate.
func (i *Instance) SaveState(ctx context.Context, dir string) error {
	if err := i.state.require(i.cfg.ID, "save its state", StateRunning); err != nil {
		return err
	}
	if err := i.cfg.Templatable(); err != nil {
		return fmt.Errorf("vm %s: %w", i.cfg.ID, err)
	}
	if i.memory == nil {
		return fmt.Errorf("vm %s: save its state: it was not started ForTemplate: %w", i.cfg.ID, errdefs.ErrFailedPrecondition)
	}
	f, err := os.OpenFile(filepath.Join(dir, SavedStateName), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("vm %s: save state: %w", i.cfg.ID, err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(ctx, saveTimeout)
	defer cancel()
	if _, err := i.TaskClient(ctx); err != nil {
		return fmt.Errorf("vm %s: wait for the task service: %w", i.cfg.ID, err)
	}
	if _, err := i.agent.Prepare(ctx, &agentapi.PrepareRequest{}); err != nil {
		return fmt.Errorf("vm %s: prepare the guest: %w", i.cfg.ID, err)
	}
	if err := i.waitReported(ctx); err != nil {
		return fmt.Errorf("vm %s: wait for the guest's free memory: %w", i.cfg.ID, err)
	}
	// The guest must be waiting for a host when it is saved, as it waits at
	// boot, so that a restored copy greets its new host the same way.
	i.tasks.mu.Lock()
	i.agentConn.mu.Lock()
	i.tasks.closeLocked()
	i.agentConn.closeLocked()
	i.host.Close()
	i.agentConn.mu.Unlock()
	i.tasks.mu.Unlock()
	if err := i.link.park(ctx); err != nil {
		return fmt.Errorf("vm %s: leave the guest waiting for a host: %w", i.cfg.ID, err)
	}
	if err := i.qmp.Run(ctx, "stop", nil, nil); err != nil {
		return fmt.Errorf("vm %s: pause: %w", i.cfg.ID, err)
	}
	if err := i.ignoreShared(ctx); err != nil {
		return fmt.Errorf("vm %s: leave the guest's memory out of its saved state: %w", i.cfg.ID, err)
	}
	if err := i.qmp.RunWithFile(ctx, "getfd", fdName{FDName: "migration"}, nil, f); err != nil {
		return fmt.Errorf("vm %s: pass the state file to QEMU: %w", i.cfg.ID, err)
	}
	if err := i.qmp.Run(ctx, "migrate", migrate{URI: "fd:migration"}, nil); err != nil {
		return fmt.Errorf("vm %s: save state: %w", i.cfg.ID, err)
	}
	for {
		var st migrationInfo
		if err := i.qmp.Run(ctx, "query-migrate", nil, &st); err != nil {
			return fmt.Errorf("vm %s: save state: %w", i.cfg.ID, err)
		}
		switch st.Status {
		case "completed":
			if err := f.Sync(); err != nil {
				return fmt.Errorf("vm %s: save state: %w", i.cfg.ID, err)
			}
			n, err := i.saveMemory(dir)
			if err != nil {
				return err
			}
			log.G(ctx).WithField("vm", i.cfg.ID).WithField("state_bytes", st.RAM.Transferred).WithField("memory_bytes", n).Info("VM state saved")
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("vm %s: save state: migration %s: %s", i.cfg.ID, st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("vm %s: save state: %w", i.cfg.ID, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// adoptRestored makes a restored guest this VM's own before anything runs
// in it: a fresh random seed and the host's clock (see agent Restored),
// then the share, which the template did not have.
func (i *Instance) adoptRestored(ctx context.Context) error {
	seed := make([]byte, seedBytes)
	if _, err := rand.Read(seed); err != nil {
		return err
	}
	if _, err := i.agent.Restored(ctx, &agentapi.RestoredRequest{Seed: seed, UnixTimeNs: time.Now().UnixNano(), WarmUp: i.cfg.WarmUp && i.accel == cmdline.TCG}); err != nil {
		return fmt.Errorf("reseed the restored guest: %w", err)
	}
	if i.cfg.Share != nil {
		if err := i.plugShare(ctx); err != nil {
			return err
		}
	}
	return nil
}

// plugShare hot-plugs the virtio-fs device on virtiofsd's socket; the guest
// mounts it by its tag when a container first needs it.
func (i *Instance) plugShare(ctx context.Context) error {
	i.hp.mu.Lock()
	defer i.hp.mu.Unlock()
	port := slices.Index(i.hp.ports, "")
	if port < 0 {
		return fmt.Errorf("no hot-plug slot left for the share: %w", errdefs.ErrResourceExhausted)
	}
	// The shim connects and hands QEMU the connection: QEMU, in its empty
	// root as its own user, could not reach the socket.
	if err := i.passConnection(ctx, i.virtiofsdSocket(), shareChardevID); err != nil {
		return fmt.Errorf("connect to virtiofsd: %w", err)
	}
	if err := i.qmp.Run(ctx, "chardev-add", fdChardevAdd(shareChardevID, shareChardevID), nil); err != nil {
		i.qmp.Run(context.WithoutCancel(ctx), "closefd", fdName{FDName: shareChardevID}, nil)
		return fmt.Errorf("connect to virtiofsd: %w", err)
	}
	dev := shareDeviceAdd{Driver: "vhost-user-fs-pci", ID: shareDeviceID, Chardev: shareChardevID, Tag: ShareTag, Bus: cmdline.HotplugPortName(port)}
	if err := i.qmp.Run(ctx, "device_add", dev, nil); err != nil {
		return fmt.Errorf("plug the share: %w", err)
	}
	i.hp.ports[port] = shareDeviceID
	return nil
}

// passConnection connects to the Unix socket at path and hands QEMU the
// connection as name (getfd).
func (i *Instance) passConnection(ctx context.Context, path, name string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return err
	}
	defer c.Close()
	f, err := c.(*net.UnixConn).File()
	if err != nil {
		return err
	}
	defer f.Close() // QEMU has its own copy once getfd returns
	return i.qmp.RunWithFile(ctx, "getfd", fdName{FDName: name}, nil, f)
}

// ErrRestore marks a failure to restore a saved state (QEMU could not load
// it, or exited while loading it), as opposed to a slow or interrupted
// start: a template that fails so will fail again.
var ErrRestore = errors.New("restore the saved state")

// resumeRestored waits until QEMU has loaded the state it restores and
// runs the guest, which was paused when it was saved.
func (i *Instance) resumeRestored(ctx context.Context) error {
	begin := time.Now()
	defer func() {
		log.G(ctx).WithField("vm", i.cfg.ID).WithField("took", time.Since(begin)).Debug("saved state loaded")
	}()
	if err := i.ignoreShared(ctx); err != nil {
		return fmt.Errorf("%w: leave the guest's memory out of the stream: %w", ErrRestore, err)
	}
	select {
	case err := <-i.memoryLoaded:
		if err != nil {
			return err
		}
	case <-ctx.Done():
		return fmt.Errorf("restore: %w", ctx.Err())
	}
	if err := i.qmp.Run(ctx, "migrate-incoming", migrate{URI: fmt.Sprintf("fd:%d", i.incomingFD())}, nil); err != nil {
		return fmt.Errorf("%w: load the state: %w", ErrRestore, err)
	}
	for {
		var st struct {
			Status string `json:"status"`
		}
		if err := i.qmp.Run(ctx, "query-status", nil, &st); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		switch st.Status {
		case "inmigrate":
		case "paused", "prelaunch":
			if err := i.qmp.Run(ctx, "cont", nil, nil); err != nil {
				return fmt.Errorf("%w: resume the guest: %w", ErrRestore, err)
			}
			i.resumed.Store(true)
			return nil
		case "running":
			i.resumed.Store(true)
			return nil
		default:
			var mi migrationInfo
			i.qmp.Run(ctx, "query-migrate", nil, &mi)
			return fmt.Errorf("%w: VM %s after loading its state (%s)", ErrRestore, st.Status, mi.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("restore: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
