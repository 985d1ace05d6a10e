package vm

import (
	"fmt"
	"os/exec"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
)

// Setpriv is util-linux's setpriv, which QEMU is started through to leave
// it no capabilities.
const Setpriv = "/usr/bin/setpriv"

// confinement is how QEMU is held in: its seccomp filter (-sandbox) and
// the capabilities it runs without.
type confinement struct {
	// seccomp says QEMU runs with -sandbox on (and its deny options).
	seccomp bool
	// wrapper, if set, is the command QEMU is started through.
	wrapper []string
}

// confine works out QEMU's confinement. Without seccomp or setpriv, the
// VM does not start unless the configuration allows it to run unconfined:
// a guest that escaped into QEMU would otherwise hold whatever root holds.
func confine(qemu string, allowUnconfined bool) (confinement, error) {
	var c confinement
	var missing []string
	if sandboxSupported(qemu) {
		c.seccomp = true
	} else {
		missing = append(missing, qemu+" has no seccomp filter (-sandbox)")
	}
	if path, err := exec.LookPath(Setpriv); err == nil {
		// Root without capabilities: QEMU still opens the state
		// directory's files and the disks it is given (they are root's),
		// but cannot mount, trace, load modules, reach other users' files
		// or configure the network. Taps and sockets come as descriptors.
		c.wrapper = []string{path, "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all", "--no-new-privs", "--"}
	} else {
		missing = append(missing, "no "+Setpriv+" to drop QEMU's capabilities")
	}
	if len(missing) > 0 && !allowUnconfined {
		return c, fmt.Errorf("QEMU cannot be confined: %v (install Debian's qemu-system-x86 and util-linux, or set vm.allow_unconfined = true to run it anyway): %w", missing, errdefs.ErrFailedPrecondition)
	}
	return c, nil
}

// CheckConfinement says why QEMU could not be confined on this host, if
// it could not (for qemu-shim check).
func CheckConfinement(qemu string) error {
	if qemu == "" {
		qemu = "qemu-system-x86_64"
	}
	_, err := confine(qemu, false)
	return err
}

var (
	sandboxMu    sync.Mutex
	sandboxCache = map[string]bool{}
)

// sandboxSupported says whether this QEMU was built with seccomp (-sandbox).
func sandboxSupported(qemu string) bool {
	sandboxMu.Lock()
	defer sandboxMu.Unlock()
	if v, ok := sandboxCache[qemu]; ok {
		return v
	}
	out, _ := execOutput(qemu, "-help")
	v := strings.Contains(out, "-sandbox on")
	sandboxCache[qemu] = v
	return v
}
