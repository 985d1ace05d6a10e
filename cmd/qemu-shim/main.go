// Command qemu-shim is the operator's tool beside the shim: check the host,
// and look at the VMs that are running.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/qemu-shim/qemu-shim/internal/busybox"
	"github.com/qemu-shim/qemu-shim/vm/hostcheck"
)

const usage = `usage: qemu-shim COMMAND [flags]

commands:
  check    report what this host has and lacks for qemu-shim, with fixes
  boot     boot a throw-away VM, print what its agent reports, shut it down
  list     list the VMs under the state root, with their QEMU and its memory
  inspect ID
           what a running VM's QEMU has (status, vCPUs, memory, disks), as JSON
  disk attach|detach|ls CONTAINER ...
           attach disk images to a running container's VM (and mount them
           in it), detach them, list them: 'qemu-shim disk' says more
  template build|ls|rm
           the saved guests VMs are restored from: 'qemu-shim template' says more
  busybox-image FILE
           write a small busybox OCI image (docker-archive) for 'ctr images import'
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "check":
		err = check(os.Args[2:])
	case "boot":
		err = boot(os.Args[2:])
	case "list":
		err = list(os.Args[2:])
	case "inspect":
		err = inspect(os.Args[2:])
	case "disk":
		err = disk(os.Args[2:])
	case "template":
		err = templateCmd(os.Args[2:])
	case "busybox-image":
		err = busyboxImage(os.Args[2:])
	case "help", "-h", "--help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "qemu-shim: unknown command %q\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "qemu-shim %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// defaultGuestDir is $QEMU_SHIM_GUEST_DIR, or the build directory beside
// the binary when run from a checkout, or the installed location.
func defaultGuestDir() string {
	if d := os.Getenv("QEMU_SHIM_GUEST_DIR"); d != "" {
		return d
	}
	if exe, err := os.Executable(); err == nil {
		d := filepath.Join(filepath.Dir(exe), "..", "build", "guest")
		if _, err := os.Stat(d); err == nil {
			return filepath.Clean(d)
		}
	}
	return "/usr/local/share/qemu-shim"
}

func check(args []string) error {
	fs := flag.NewFlagSet("check", flag.ExitOnError)
	guestDir := fs.String("guest-dir", defaultGuestDir(), "directory of the guest kernel and initramfs")
	qemu := fs.String("qemu", "qemu-system-x86_64", "QEMU binary")
	fs.Parse(args)
	results := hostcheck.Run(hostcheck.Options{QEMU: *qemu, GuestDir: *guestDir})
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	failed := 0
	for _, r := range results {
		fmt.Fprintf(w, "%s\t%s\t%s\n", r.Level, r.Name, r.Detail)
		if r.Fix != "" {
			fmt.Fprintf(w, "\t\tfix: %s\n", r.Fix)
		}
		if r.Level == hostcheck.Fail {
			failed++
		}
	}
	w.Flush()
	if failed > 0 {
		return fmt.Errorf("%d check(s) failed", failed)
	}
	return nil
}

func busyboxImage(args []string) error {
	fs := flag.NewFlagSet("busybox-image", flag.ExitOnError)
	ref := fs.String("ref", busybox.DefaultRef, "image reference to tag it with")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("usage: qemu-shim busybox-image [-ref REF] FILE")
	}
	f, err := os.Create(fs.Arg(0))
	if err != nil {
		return err
	}
	if err := busybox.WriteDockerArchive(f, *ref); err != nil {
		f.Close()
		os.Remove(fs.Arg(0))
		return err
	}
	return f.Close()
}
