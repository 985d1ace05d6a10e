package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/qemu-shim/qemu-shim/shim/config"
	"github.com/qemu-shim/qemu-shim/shim/sandbox"
)

const templateUsage = `usage: qemu-shim template COMMAND [-config FILE]

VMs start by restoring a template (a guest booted once per VM shape and
saved) instead of booting; a missing template is built by the first VM
that needs it. The configuration is the shim's ([template] section).

commands:
  build     build the template of the configured VM shape now (if missing)
  ls        list the templates, their size, when built and last used
  rm KEY    remove a template (a broken one is then built again); -all: every one
`

func templateCmd(args []string) error {
	if len(args) < 1 {
		fmt.Fprint(os.Stderr, templateUsage)
		os.Exit(2)
	}
	fs := flag.NewFlagSet("template "+args[0], flag.ExitOnError)
	path := fs.String("config", "", "qemu-shim configuration (default: as the shim finds it)")
	all := fs.Bool("all", false, "with rm: remove every template")
	fs.Parse(args[1:])
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	store := sandbox.TemplateStore(cfg)
	switch args[0] {
	case "build":
		t, err := sandbox.TemplateConfig(cfg)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		begin := time.Now()
		state, err := store.Get(ctx, t)
		if err != nil {
			return err
		}
		fmt.Printf("template ready in %v: %s\n", time.Since(begin).Round(time.Millisecond), state)
		return nil
	case "ls":
		list, err := store.List()
		if err != nil {
			return err
		}
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "KEY\tVCPUS\tMEMORY\tSTATE\tBUILT\tLAST USED\tSTATUS")
		for _, t := range list {
			status := "ok"
			if t.Broken != "" {
				status = "broken: " + t.Broken
			}
			fmt.Fprintf(w, "%s\t%d\t%d MiB\t%.1f MiB\t%s\t%s\t%s\n", t.Key, t.CPUs, t.Memory, float64(t.Bytes)/(1<<20),
				t.Built.Format(time.RFC3339), t.LastUsed.Format(time.RFC3339), status)
		}
		return w.Flush()
	case "rm":
		if *all {
			list, err := store.List()
			if err != nil {
				return err
			}
			for _, t := range list {
				if err := store.Remove(t.Key); err != nil {
					return err
				}
			}
			return nil
		}
		if fs.NArg() != 1 {
			return fmt.Errorf("usage: qemu-shim template rm KEY|-all")
		}
		return store.Remove(fs.Arg(0))
	}
	fmt.Fprint(os.Stderr, templateUsage)
	os.Exit(2)
	return nil
}
