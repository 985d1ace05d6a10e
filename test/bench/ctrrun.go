package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/qemu-shim/qemu-shim/internal/busybox"
	"github.com/qemu-shim/qemu-shim/shim/bundle"
	"github.com/qemu-shim/qemu-shim/test/ctrd"
)

// ctrResult is what ctrRun measured: seconds from launch to the echoed
// line and to ctr's exit, for each way of starting.
type ctrResult struct {
	template, cold, runcShim         []float64
	templateExit, coldExit, runcExit []float64
	shimRSS, qemuRSS                 int
}

// ctrRun measures `ctr run --rm IMAGE echo` from launch to the echoed line
// and to its exit: with our runtime restoring VMs from a template, with
// our runtime booting every VM (templates off, in a containerd of its
// own), and with containerd's runc shim; then the resident memory of our
// shim and its QEMU while a container runs.
func ctrRun(runs int) (res ctrResult, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	d, err := ctrd.StartWith(ctx, ctrd.Options{ExtraVMConfig: extraVMConfig})
	if err != nil {
		return res, err
	}
	defer d.Close()
	dc, err := ctrd.StartWith(ctx, ctrd.Options{ColdBoot: true, ExtraVMConfig: extraVMConfig})
	if err != nil {
		return res, err
	}
	defer dc.Close()
	run := func(d *ctrd.Daemon, runtime, id string) (float64, float64, error) {
		cmd := d.Ctr(ctx, "run", "--rm", "--runtime", runtime, busybox.DefaultRef, id, "echo", "bench-"+id)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			return 0, 0, err
		}
		start := time.Now()
		if err := cmd.Start(); err != nil {
			return 0, 0, err
		}
		sc := bufio.NewScanner(out)
		var took time.Duration
		for sc.Scan() {
			if strings.Contains(sc.Text(), "bench-"+id) && took == 0 {
				took = time.Since(start)
			}
		}
		if err := cmd.Wait(); err != nil {
			return 0, 0, fmt.Errorf("ctr run (%s): %w: %s\ncontainerd's log ends:\n%s", runtime, err, bytes.TrimSpace(stderr.Bytes()), d.LogTail(30))
		}
		if took == 0 {
			return 0, 0, fmt.Errorf("ctr run (%s) printed nothing", runtime)
		}
		return took.Seconds(), time.Since(start).Seconds(), nil
	}
	for i := 0; i <= runs; i++ {
		// The first of each warms caches (the template, layer
		// conversion, the page cache) and is not counted.
		t, te, err := run(d, ctrd.Runtime, "t"+strconv.Itoa(i))
		if err != nil {
			return res, err
		}
		c, ce, err := run(dc, ctrd.Runtime, "c"+strconv.Itoa(i))
		if err != nil {
			return res, err
		}
		r, re, err := run(d, "io.containerd.runc.v2", "r"+strconv.Itoa(i))
		if err != nil {
			return res, err
		}
		if i > 0 {
			res.template, res.cold, res.runcShim = append(res.template, t), append(res.cold, c), append(res.runcShim, r)
			res.templateExit, res.coldExit, res.runcExit = append(res.templateExit, te), append(res.coldExit, ce), append(res.runcExit, re)
		}
	}
	if out, err := d.Ctr(ctx, "run", "-d", "--runtime", ctrd.Runtime, busybox.DefaultRef, "rss", "sleep", "1000").CombinedOutput(); err != nil {
		return res, fmt.Errorf("ctr run -d: %v: %s", err, out)
	}
	defer func() {
		d.Ctr(context.WithoutCancel(ctx), "task", "kill", "-s", "KILL", "rss").Run()
		d.Ctr(context.WithoutCancel(ctx), "task", "delete", "rss").Run()
		d.Ctr(context.WithoutCancel(ctx), "container", "delete", "rss").Run()
	}()
	res.shimRSS = rssKiB(pidOf("containerd-shim-qemu-v1.*-id rss"))
	res.qemuRSS = rssKiB(pidOf("qemu-system.*" + filepath.Join(d.VMStateRoot(), bundle.VMName(ctrd.Namespace, "rss")) + "/"))
	return res, nil
}

func pidOf(pattern string) int {
	out, err := exec.Command("pgrep", "-f", pattern).Output()
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.Fields(string(out))[0])
	return pid
}
