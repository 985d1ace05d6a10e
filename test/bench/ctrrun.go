package main

import (
	"bufio"
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

// ctrRun measures `ctr run --rm IMAGE echo` from launch to the echoed line,
// with our runtime and with containerd's runc shim, and the resident
// memory of our shim and its QEMU while a container runs.
func ctrRun(runs int) (ours, runcShim []float64, shimRSS, qemuRSS int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	d, err := ctrd.Start(ctx)
	if err != nil {
		return nil, nil, 0, 0, err
	}
	defer d.Close()
	run := func(runtime, id string) (float64, error) {
		cmd := d.Ctr(ctx, "run", "--rm", "--runtime", runtime, busybox.DefaultRef, id, "echo", "bench-"+id)
		out, err := cmd.StdoutPipe()
		if err != nil {
			return 0, err
		}
		start := time.Now()
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		sc := bufio.NewScanner(out)
		var took time.Duration
		for sc.Scan() {
			if strings.Contains(sc.Text(), "bench-"+id) && took == 0 {
				took = time.Since(start)
			}
		}
		if err := cmd.Wait(); err != nil {
			return 0, fmt.Errorf("ctr run (%s): %w", runtime, err)
		}
		if took == 0 {
			return 0, fmt.Errorf("ctr run (%s) printed nothing", runtime)
		}
		return took.Seconds(), nil
	}
	for i := 0; i <= runs; i++ {
		q, err := run(ctrd.Runtime, "q"+strconv.Itoa(i))
		if err != nil {
			return nil, nil, 0, 0, err
		}
		r, err := run("io.containerd.runc.v2", "r"+strconv.Itoa(i))
		if err != nil {
			return nil, nil, 0, 0, err
		}
		if i > 0 { // the first of each warms caches (layer conversion, page cache)
			ours, runcShim = append(ours, q), append(runcShim, r)
		}
	}
	if out, err := d.Ctr(ctx, "run", "-d", "--runtime", ctrd.Runtime, busybox.DefaultRef, "rss", "sleep", "1000").CombinedOutput(); err != nil {
		return nil, nil, 0, 0, fmt.Errorf("ctr run -d: %v: %s", err, out)
	}
	defer func() {
		d.Ctr(context.WithoutCancel(ctx), "task", "kill", "-s", "KILL", "rss").Run()
		d.Ctr(context.WithoutCancel(ctx), "task", "delete", "rss").Run()
		d.Ctr(context.WithoutCancel(ctx), "container", "delete", "rss").Run()
	}()
	shimRSS = rssKiB(pidOf("containerd-shim-qemu-v1.*-id rss"))
	qemuRSS = rssKiB(pidOf("qemu-system.*" + filepath.Join(d.VMStateRoot(), bundle.VMName(ctrd.Namespace, "rss")) + "/"))
	return ours, runcShim, shimRSS, qemuRSS, nil
}

func pidOf(pattern string) int {
	out, err := exec.Command("pgrep", "-f", pattern).Output()
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.Fields(string(out))[0])
	return pid
}
