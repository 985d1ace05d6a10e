package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"

	operatorapi "github.com/qemu-shim/qemu-shim/api/operator/v1"
	"github.com/qemu-shim/qemu-shim/shim/bundle"
	"github.com/qemu-shim/qemu-shim/shim/operator"
	"github.com/qemu-shim/qemu-shim/vm"
)

const diskUsage = `usage: qemu-shim disk COMMAND [flags]

  attach CONTAINER IMAGE [--read-only] [--mount PATH] [--type FSTYPE]
         hot-plug a raw disk image (below the shim's operator.disk_roots)
         into the container's VM; with --mount, mount its filesystem
         (ext4 unless --type) in the running container at PATH. Prints
         the disk's serial.
  detach CONTAINER DISK [--force]
         unplug a disk attach made; a mounted one needs --force, which
         unmounts it in the container first
  ls CONTAINER
         list the disks attach made for the container

Every command takes --state-root DIR (the shim's vm.state_root) and
--namespace NS (containerd's, "default"). CONTAINER is a container of the
VM; ls also takes the VM's name (qemu-shim list) and lists all its disks.
Each shim serves these commands on operator.sock in its VM's state
directory: the VM a container booted is found by its name, a pod's later
container by asking each VM's shim.
`

// disk runs 'qemu-shim disk SUBCOMMAND'.
func disk(args []string) error {
	if len(args) < 1 {
		fmt.Fprint(os.Stderr, diskUsage)
		os.Exit(2)
	}
	fs := flag.NewFlagSet("disk "+args[0], flag.ExitOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, diskUsage) }
	root := fs.String("state-root", vm.DefaultStateRoot, "the shim's vm.state_root")
	ns := fs.String("namespace", "default", "containerd namespace of the container")
	readOnly := fs.Bool("read-only", false, "attach read-only (attach)")
	mount := fs.String("mount", "", "mount the disk in the container at this path (attach)")
	fstype := fs.String("type", "", "the disk's filesystem for --mount (attach; default ext4)")
	force := fs.Bool("force", false, "unmount a mounted disk first (detach)")
	pos := parseInterleaved(fs, args[1:])
	want := map[string]int{"attach": 2, "detach": 2, "ls": 1}
	n, ok := want[args[0]]
	if !ok {
		fmt.Fprintf(os.Stderr, "qemu-shim disk: unknown command %q\n%s", args[0], diskUsage)
		os.Exit(2)
	}
	if len(pos) != n {
		fmt.Fprint(os.Stderr, diskUsage)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := dialOperator(ctx, *root, *ns, pos[0])
	if err != nil {
		return err
	}
	defer c.Close()
	client := operatorapi.NewDisksClient(c)
	switch args[0] {
	case "attach":
		image, err := filepath.Abs(pos[1])
		if err != nil {
			return err
		}
		d, err := client.Attach(ctx, &operatorapi.AttachRequest{ContainerId: pos[0], Image: image, ReadOnly: *readOnly, Mount: *mount, Fstype: *fstype})
		if err != nil {
			return errgrpc.ToNative(err)
		}
		fmt.Println(d.Serial)
	case "detach":
		if _, err := client.Detach(ctx, &operatorapi.DetachRequest{ContainerId: pos[0], Serial: pos[1], Force: *force}); err != nil {
			return errgrpc.ToNative(err)
		}
	case "ls":
		resp, err := client.List(ctx, &operatorapi.ListRequest{})
		if err != nil {
			return errgrpc.ToNative(err)
		}
		all := !slices.Contains(resp.Containers, pos[0]) // named by its VM
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "DISK\tCONTAINER\tMODE\tMOUNT\tIMAGE")
		for _, d := range resp.Disks {
			if !all && d.ContainerId != pos[0] {
				continue
			}
			mode, mnt := "rw", d.Mount
			if d.ReadOnly {
				mode = "ro"
			}
			if mnt == "" {
				mnt = "-"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", d.Serial, d.ContainerId, mode, mnt, d.Image)
		}
		return w.Flush()
	}
	return nil
}

// parseInterleaved parses flags wherever they are among the positional
// arguments, which it returns.
func parseInterleaved(fs *flag.FlagSet, args []string) []string {
	var pos []string
	for {
		fs.Parse(args)
		if fs.NArg() == 0 {
			return pos
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// dialOperator finds the operator socket of the VM that runs container
// (or is named so): the VM's own directory, the directory of the VM the
// container booted (bundle.VMName), else the VM whose shim lists the
// container in that namespace (a pod's later containers).
func dialOperator(ctx context.Context, root, ns, container string) (*ttrpc.Client, error) {
	for _, name := range []string{container, bundle.VMName(ns, container)} {
		if strings.Contains(name, "/") || name == "." || name == ".." {
			continue
		}
		if c, err := dialSocket(ctx, filepath.Join(root, name, operator.SocketName)); err == nil {
			return c, nil
		}
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("state root %s: %w", root, err)
	}
	for _, e := range entries {
		c, err := dialSocket(ctx, filepath.Join(root, e.Name(), operator.SocketName))
		if err != nil {
			continue
		}
		resp, err := operatorapi.NewDisksClient(c).List(ctx, &operatorapi.ListRequest{})
		if err == nil && resp.Namespace == ns && slices.Contains(resp.Containers, container) {
			return c, nil
		}
		c.Close()
	}
	return nil, fmt.Errorf("no running VM under %s has container %s in namespace %s: %w", root, container, ns, errdefs.ErrNotFound)
}

func dialSocket(ctx context.Context, path string) (*ttrpc.Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	return ttrpc.NewClient(conn), nil
}
