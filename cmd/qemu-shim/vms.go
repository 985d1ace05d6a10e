package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/qemu-shim/qemu-shim/vm"
	"github.com/qemu-shim/qemu-shim/vm/qmp"
)

// list prints the VMs whose state directories are under the state root.
func list(args []string) error {
	fs := flag.NewFlagSet("list", flag.ExitOnError)
	root := fs.String("state-root", vm.DefaultStateRoot, "the shim's vm.state_root")
	fs.Parse(args)
	entries, err := os.ReadDir(*root)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tQEMU PID\tSTATE\tRSS\tSTARTED")
	for _, e := range entries {
		dir := filepath.Join(*root, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, vm.PidFileName))
		if err != nil {
			continue // not a VM directory
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		state, rss, started := "gone (stale directory)", "-", "-"
		if st, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil && pid > 0 {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if strings.Contains(string(cmdline), dir) {
				state, rss, started = "running", rssOf(pid), st.ModTime().Format(time.RFC3339)
			}
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\n", e.Name(), pid, state, rss, started)
	}
	return w.Flush()
}

func rssOf(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "-"
}

// inspect asks a running VM's QEMU, on its operator QMP socket, what it has.
func inspect(args []string) error {
	fs := flag.NewFlagSet("inspect", flag.ExitOnError)
	root := fs.String("state-root", vm.DefaultStateRoot, "the shim's vm.state_root")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("usage: qemu-shim inspect [--state-root DIR] VM_ID")
	}
	dir := filepath.Join(*root, fs.Arg(0))
	if _, err := os.Stat(filepath.Join(dir, vm.PidFileName)); err != nil {
		return fmt.Errorf("no VM %s under %s", fs.Arg(0), *root)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := qmp.Connect(ctx, filepath.Join(dir, vm.OperatorQMPSocketName))
	if err != nil {
		return fmt.Errorf("VM %s: %w", fs.Arg(0), err)
	}
	defer m.Close()
	report := map[string]any{"id": fs.Arg(0), "state_dir": dir, "console_log": filepath.Join(dir, vm.ConsoleLogName)}
	for key, cmd := range map[string]string{
		"status": "query-status", "cpus": "query-cpus-fast", "memory": "query-memory-size-summary",
		"memory_devices": "query-memory-devices", "block": "query-block", "version": "query-version",
		// QEMU opens hot-plugged disks from descriptors the shim passed
		// (/dev/fdset/N in "block"); each set names its image.
		"fdsets": "query-fdsets",
	} {
		var out any
		if err := m.Run(ctx, cmd, nil, &out); err != nil {
			report[key] = "error: " + err.Error()
			continue
		}
		report[key] = out
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(report)
}
