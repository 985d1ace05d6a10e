package vm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/qemu-shim/qemu-shim/internal/transport"
	"github.com/qemu-shim/qemu-shim/internal/transport/vsock"
	"github.com/qemu-shim/qemu-shim/vm/cmdline"
)

func TestCheckID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"crash", true},
		{"default_pod1-0123456789abcdef", true},
		{strings.Repeat("a", 64), true},
		{strings.Repeat("a", 65), false},
		{"", false},
		{"-x", false},
		{"a/b", false},
		{"..", false},
		{CIDLeaseDirName, false}, // the CID leases' directory under the state root
	} {
		err := CheckID(tc.id)
		if tc.ok != (err == nil) || err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("CheckID(%q) = %v, want ok %v", tc.id, err, tc.ok)
		}
		// New checks it first.
		if _, err := New(Config{ID: tc.id}); !tc.ok && (err == nil || !strings.Contains(err.Error(), "id ")) {
			t.Errorf("New with id %q: %v", tc.id, err)
		}
	}
}

func newTestInstance(t *testing.T, edit func(*Config)) *Instance {
	t.Helper()
	dir := t.TempDir()
	cfg := Config{ID: "cl", StateRoot: filepath.Join(dir, "state"), Accel: "tcg", Transport: transport.Serial}
	for _, f := range []*string{&cfg.Kernel, &cfg.Initrd, &cfg.Tools} {
		*f = filepath.Join(dir, fmt.Sprintf("f%p", f))
		if err := os.WriteFile(*f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if edit != nil {
		edit(&cfg)
	}
	i, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return i
}

// Building the command line changes nothing: the same arguments each time,
// the instance still New, nothing held.
func TestMachineIsPure(t *testing.T) {
	i := newTestInstance(t, nil)
	link := &serialLink{socket: filepath.Join(i.stateDir, agentSocketName)}
	a, err := i.machine(cmdline.TCG, link, confinement{seccomp: true})
	if err != nil {
		t.Fatal(err)
	}
	b, err := i.machine(cmdline.TCG, link, confinement{seccomp: true})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a, b) {
		t.Errorf("two builds differ:\n%+v\n%+v", a, b)
	}
	if a.AgentSocket != link.socket || a.VsockCID != 0 || a.ConsoleFD != consoleFD {
		t.Errorf("machine %+v", a)
	}
	if i.State() != StateNew || i.accel != "" || i.transport != "" || i.link != nil || i.hp.disks != nil {
		t.Errorf("machine changed the instance: %s %q %q %v", i.State(), i.accel, i.transport, i.link)
	}
}

func TestCommandLineHoldsNothing(t *testing.T) {
	for _, kind := range []transport.Kind{transport.Serial, transport.VSock} {
		i := newTestInstance(t, func(c *Config) { c.Transport = kind })
		args, err := i.CommandLine()
		if err != nil {
			t.Fatal(err)
		}
		joined := strings.Join(args, " ")
		if want := map[transport.Kind]string{transport.Serial: "virtserialport", transport.VSock: "vhost-vsock-pci"}[kind]; !strings.Contains(joined, want) {
			t.Errorf("%s: no %s in %s", kind, want, joined)
		}
		if i.State() != StateNew || i.link != nil {
			t.Errorf("%s: CommandLine changed the instance", kind)
		}
		if kind == transport.VSock {
			// The CID taken for the command line was given back.
			lease, err := (&vsock.CIDAllocator{Dir: filepath.Join(i.cfg.StateRoot, CIDLeaseDirName)}).Allocate()
			if err != nil {
				t.Fatal(err)
			}
			if lease.CID != vsock.FirstCID {
				t.Errorf("CID %d still held", vsock.FirstCID)
			}
			lease.Release()
		}
	}
}

// A QEMU that cannot be confined does not start unless the configuration
// says it may run unconfined; the error says what is missing and how to
// allow it.
func TestUnconfinedQEMUIsRefused(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "qemu-without-seccomp")
	os.WriteFile(fake, []byte("#!/bin/sh\necho 'QEMU emulator, no sandbox option'\n"), 0o755)
	_, err := confine(Config{QEMU: fake, StateRoot: t.TempDir()}, false)
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "-sandbox") || !strings.Contains(err.Error(), "vm.allow_unconfined") {
		t.Errorf("confine(no seccomp) = %v; want a failed precondition naming -sandbox and vm.allow_unconfined", err)
	}
	c, err := confine(Config{QEMU: fake, StateRoot: t.TempDir(), AllowUnconfined: true}, false)
	if err != nil || c.seccomp {
		t.Errorf("confine(no seccomp, allowed) = %+v, %v", c, err)
	}
	if _, err := os.Stat(Setpriv); err == nil && len(c.wrapper) == 0 {
		t.Errorf("setpriv is here but QEMU keeps its capabilities")
	}
}

// What QEMU can do is asked once per binary and kept in the state root: a
// later shim reads it, and a replaced binary is asked again.
func TestQEMUFeaturesAreKept(t *testing.T) {
	dir, root := t.TempDir(), t.TempDir()
	qemu := filepath.Join(dir, "qemu")
	asked := filepath.Join(dir, "asked")
	script := func(help string) {
		os.Remove(qemu)
		os.WriteFile(qemu, []byte("#!/bin/sh\necho x >> "+asked+"\necho '"+help+"'\n"), 0o755)
	}
	forget := func() {
		sandboxMu.Lock()
		delete(sandboxCache, qemu)
		sandboxMu.Unlock()
	}
	times := func() int {
		b, _ := os.ReadFile(asked)
		return strings.Count(string(b), "x")
	}
	script("-sandbox on[,obsolete=allow|deny]")
	if !sandboxSupported(qemu, root) || times() != 1 {
		t.Fatalf("first probe: asked %d times", times())
	}
	forget() // as a new shim process would
	if !sandboxSupported(qemu, root) || times() != 1 {
		t.Errorf("second shim asked QEMU again (%d times in all)", times())
	}
	if !StateRootEntry(QEMUFeaturesName) {
		t.Errorf("%s is taken for a VM's state directory", QEMUFeaturesName)
	}
	forget()
	script("no seccomp here")
	if sandboxSupported(qemu, root) || times() != 2 {
		t.Errorf("a replaced QEMU: asked %d times in all, want 2, and no sandbox", times())
	}
}
