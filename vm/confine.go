package vm

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/errdefs"

	"github.com/qemu-shim/qemu-shim/internal/lease"
)

// Setpriv is util-linux's setpriv, which QEMU is started through to leave
// it no capabilities but those it needs to drop to its own user.
const Setpriv = "/usr/bin/setpriv"

// confinement is how QEMU is held in: its seccomp filter (-sandbox), the
// capabilities it starts with, and the user and directory it drops to once
// it has opened everything on its command line.
type confinement struct {
	// seccomp says QEMU runs with -sandbox on (and its deny options).
	seccomp bool
	// wrapper, if set, is the command QEMU is started through.
	wrapper []string
	// user, if set, is the user and group ID QEMU switches to (-runas),
	// after chrooting into chroot, an empty directory it cannot write.
	user   *lease.Lease
	chroot string
}

// confine works out QEMU's confinement. Without seccomp or setpriv, the
// VM does not start unless the configuration allows it to run unconfined:
// a guest that escaped into QEMU would otherwise hold whatever root holds.
// The user ID it leases (unless running is only being described) is
// released with release.
func confine(cfg Config, leaseUser bool) (confinement, error) {
	var c confinement
	var missing []string
	if sandboxSupported(cfg.QEMU, cfg.StateRoot) {
		c.seccomp = true
	} else {
		missing = append(missing, cfg.QEMU+" has no seccomp filter (-sandbox)")
	}
	ownUser := os.Geteuid() == 0
	if !ownUser {
		missing = append(missing, "the shim is not root, so QEMU cannot switch to a user of its own")
	}
	if path, err := exec.LookPath(Setpriv); err == nil {
		// Of root's capabilities, QEMU keeps only those it needs to
		// chroot and switch to its VM's user, which leaves it none.
		// Until then it opens what its command line names as root: the
		// guest is not running yet.
		bounding := "-all"
		if ownUser {
			bounding = "-all,+sys_chroot,+setuid,+setgid"
		}
		c.wrapper = []string{path, "--bounding-set=" + bounding, "--inh-caps=-all", "--ambient-caps=-all", "--no-new-privs", "--"}
	} else {
		missing = append(missing, "no "+Setpriv+" to drop QEMU's capabilities")
	}
	if len(missing) > 0 && !cfg.AllowUnconfined {
		return c, fmt.Errorf("QEMU cannot be confined: %v (install Debian's qemu-system-x86 and util-linux and run the shim as root, or set vm.allow_unconfined = true to run it anyway): %w", missing, errdefs.ErrFailedPrecondition)
	}
	if !ownUser {
		return c, nil
	}
	c.chroot = filepath.Join(cfg.StateRoot, ChrootDirName)
	if !leaseUser {
		return c, nil
	}
	if err := makeEmptyRoot(c.chroot); err != nil {
		return c, err
	}
	alloc := &lease.Allocator{Dir: filepath.Join(cfg.StateRoot, UIDLeaseDirName), First: cfg.QEMUUIDFirst, Last: cfg.QEMUUIDFirst + cfg.QEMUUIDCount - 1}
	l, err := alloc.Allocate()
	if err != nil {
		return c, fmt.Errorf("a user ID for QEMU (vm.qemu_uid_first, vm.qemu_uid_count): %w", err)
	}
	c.user = l
	return c, nil
}

// release gives back the user ID; QEMU, which inherited its lease, keeps
// it taken until it exits.
func (c *confinement) release() {
	if c.user != nil {
		c.user.Release()
		c.user = nil
	}
}

// runAs is QEMU's -runas value: its VM's user and group ID.
func (c *confinement) runAs() string {
	if c.user == nil {
		return ""
	}
	return fmt.Sprintf("%d:%d", c.user.N, c.user.N)
}

// makeEmptyRoot makes dir an empty directory only root may write, for
// QEMU to chroot into.
func makeEmptyRoot(dir string) error {
	if err := os.Mkdir(dir, 0o555); err != nil && !os.IsExist(err) {
		return fmt.Errorf("create QEMU's empty root %s: %w", dir, err)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("QEMU's empty root: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("QEMU's empty root %s is not a directory: %w", dir, errdefs.ErrFailedPrecondition)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("QEMU's empty root: %w", err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("QEMU's empty root %s is not empty: %w", dir, errdefs.ErrFailedPrecondition)
	}
	if err := os.Chown(dir, 0, 0); err != nil {
		return fmt.Errorf("QEMU's empty root: %w", err)
	}
	return os.Chmod(dir, 0o555)
}

// CheckConfinement says why QEMU could not be confined on this host, if
// it could not (for qemu-shim check).
func CheckConfinement(qemu string) error {
	if qemu == "" {
		qemu = "qemu-system-x86_64"
	}
	_, err := confine(Config{QEMU: qemu}, false)
	return err
}

var (
	sandboxMu    sync.Mutex
	sandboxCache = map[string]bool{}
)

// sandboxSupported says whether this QEMU was built with seccomp
// (-sandbox). Asking QEMU means starting it (60 ms here, on every VM's
// start), so the answer is kept, per process and, when stateRoot is
// set, in stateRoot's QEMUFeaturesName for the binary's identity (a
// QEMU replaced or upgraded is asked again).
func sandboxSupported(qemu, stateRoot string) bool {
	sandboxMu.Lock()
	defer sandboxMu.Unlock()
	if v, ok := sandboxCache[qemu]; ok {
		return v
	}
	var identity, cache string
	if path, err := exec.LookPath(qemu); err == nil && stateRoot != "" {
		if id, err := fileIdentity(path); err == nil {
			identity, cache = id, filepath.Join(stateRoot, QEMUFeaturesName)
		}
	}
	if cache != "" {
		var f qemuFeatures
		if b, err := os.ReadFile(cache); err == nil && json.Unmarshal(b, &f) == nil && f.Identity == identity {
			sandboxCache[qemu] = f.Sandbox
			return f.Sandbox
		}
	}
	out, err := execOutput(qemu, "-help")
	v := strings.Contains(out, "-sandbox on")
	sandboxCache[qemu] = v
	if cache != "" && err == nil {
		writeFeatures(cache, qemuFeatures{Identity: identity, Sandbox: v})
	}
	return v
}

// QEMUFeaturesName is the state root's file of what the QEMU binary in
// use can do (see sandboxSupported).
const QEMUFeaturesName = ".qemu-features"

// qemuFeatures is what a QEMU binary, named by its identity, can do.
type qemuFeatures struct {
	Identity string `json:"identity"`
	Sandbox  bool   `json:"sandbox"`
}

// writeFeatures replaces the features file whole (a reader sees the old
// or the new one); failing is harmless: QEMU is asked again next time.
func writeFeatures(path string, f qemuFeatures) {
	b, err := json.Marshal(f)
	if err != nil {
		return
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), QEMUFeaturesName+".*")
	if err != nil {
		return
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil || tmp.Close() != nil {
		tmp.Close()
		return
	}
	os.Rename(tmp.Name(), path)
}
