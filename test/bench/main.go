// Command bench measures qemu-shim against its baselines in one run and
// prints medians, the spread (min–max) and the ratios:
//   - boot: QEMU launch → agent answers, beside QEMU launch → a trivial
//     /init runs on the same kernel and machine (the floor); QEMU's RSS.
//   - containers: create+start of `true` and an exec round trip through
//     the agent, beside the same runc on the host.
//   - ctr run: `ctr run --rm` of echo to its output through a private
//     containerd, beside containerd's runc shim and the boot floor; the
//     shim's and QEMU's RSS.
//   - share: what shared guest memory and virtiofsd cost a VM (boot, RSS).
//   - bind: a bind mount's write, read and stat speed, beside runc's.
//   - net: TCP both ways through a CNI bridge, and what joining a network
//     namespace adds to a start, beside runc's.
//   - cri: a pod's start through containerd's CRI plugin, qemu handler
//     beside runc, and a pod VM's host overhead.
//   - memory: an idle container's host PSS (QEMU, shim, virtiofsd) beside
//     the memory its guest has touched, and the shim's RSS.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/log"

	"github.com/qemu-shim/qemu-shim/test/guestimage"
	"github.com/qemu-shim/qemu-shim/vm"
)

func main() {
	guestDir := flag.String("guest-dir", guestimage.Dir(), "guest image directory")
	runcPath := flag.String("runc", "build/runc", "runc binary for the host baseline")
	runs := flag.Int("n", 7, "runs of each measurement")
	only := flag.String("only", "", "run one section: boot, containers, ctr, share, bind, net, cri, hotplug or memory")
	vmConfig := flag.String("vm-config", "", "lines added to the shim's [vm] configuration in the memory section, to compare settings")
	flag.Parse()
	log.SetLevel("warn")
	section = *only
	memoryVMConfig = *vmConfig
	if err := run(*guestDir, *runcPath, *runs); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// section, when set, is the only one run.
var section string

// memoryVMConfig is added to the shim's [vm] table in the memory section.
var memoryVMConfig string

func want(name string) bool { return section == "" || section == name }

func run(guestDir, runcPath string, runs int) error {
	os.Setenv("QEMU_SHIM_GUEST_DIR", guestDir)
	img, err := guestimage.Find()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "qemu-shim-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	bare, err := buildBareInitrd(work)
	if err != nil {
		return err
	}

	var floor, ours, guestUp, rss []float64
	accel := ""
	fmt.Printf("qemu-shim bench: %d runs each, kernel %s\n\n", runs, img.KernelVersion)
	fmt.Printf("%-44s %10s %21s\n", "measurement", "median", "min – max")
	for i := 0; i < runs && (want("boot") || want("ctr")); i++ {
		// Alternate, so that drifting machine load hits both alike.
		d, err := bareBoot(work, img.Kernel, bare, img.Tools, i)
		if err != nil {
			return fmt.Errorf("bare boot: %w", err)
		}
		floor = append(floor, d.Seconds())
		r, err := agentBoot(work, img, i)
		if err != nil {
			return fmt.Errorf("agent boot: %w", err)
		}
		ours = append(ours, r.ready.Seconds())
		guestUp = append(guestUp, r.uptime.Seconds())
		rss = append(rss, float64(r.rssKiB)/1024)
		accel = r.accel
	}
	if len(floor) > 0 {
		row("boot floor: launch → trivial /init (s)", floor)
		row("qemu-shim: launch → agent answers (s)", ours)
		row("  guest uptime when the agent answered (s)", guestUp)
		row("QEMU RSS after boot (MiB)", rss)
		fmt.Printf("ratio agent-ready / floor: %.3f (target ≤ 1.15), accel %s\n\n", median(ours)/median(floor), accel)
	}
	if want("containers") {
		if err := containerSection(work, img, runcPath, runs); err != nil {
			return err
		}
	}
	if want("ctr") {
		if err := ctrSection(runs, floor); err != nil {
			return err
		}
	}
	for _, s := range []struct {
		name string
		run  func() error
	}{
		{"share", func() error { return shareSection(work, img, runs) }},
		{"bind", func() error { return bindSection(runs) }},
		{"net", func() error { return netSection(runs) }},
		{"cri", func() error { return criSection(runs) }},
		{"hotplug", func() error { return hotplugSection(work, img, runs) }},
		{"memory", func() error { return memorySection(runs, memoryVMConfig) }},
	} {
		if want(s.name) {
			fmt.Printf("\n")
			if err := s.run(); err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
		}
	}
	return nil
}

func containerSection(work string, img guestimage.Image, runcPath string, runs int) error {
	gc, ge, hc, he, err := containerLatencies(work, img, runcPath, runs)
	if err != nil {
		return fmt.Errorf("container latencies: %w", err)
	}
	row("guest: create+start `true` via agent (s)", gc)
	row("host:  create+start `true`, same runc (s)", hc)
	row("guest: exec `true` round trip via agent (s)", ge)
	row("host:  exec `true`, same runc (s)", he)
	fmt.Printf("ratio create+start guest / host: %.2f; exec guest / host: %.2f\n\n", median(gc)/median(hc), median(ge)/median(he))
	return nil
}

func ctrSection(runs int, floor []float64) error {
	ours2, runcShim, shimRSS, qemuRSS, err := ctrRun(runs)
	if err != nil {
		return fmt.Errorf("ctr run: %w", err)
	}
	row("ctr run echo, qemu-shim (s)", ours2)
	row("ctr run echo, runc shim (s)", runcShim)
	fmt.Printf("ratio ctr run qemu-shim / runc shim: %.1f; / boot floor: %.2f\n", median(ours2)/median(runcShim), median(ours2)/median(floor))
	fmt.Printf("resident memory while a container runs: shim %.1f MiB, its QEMU %.1f MiB\n", float64(shimRSS)/1024, float64(qemuRSS)/1024)
	return nil
}

func row(name string, v []float64) {
	fmt.Printf("%-44s %10.3f %10.3f – %8.3f\n", name, median(v), slices.Min(v), slices.Max(v))
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// buildBareInitrd compiles bareinit and packs it as /init.
func buildBareInitrd(work string) (string, error) {
	root := filepath.Join(work, "bare-root")
	if err := os.MkdirAll(filepath.Join(root, "dev"), 0o755); err != nil {
		return "", err
	}
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", filepath.Join(root, "init"), "./test/bench/bareinit")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build bareinit: %v: %s", err, out)
	}
	out := filepath.Join(work, "bare.cpio")
	pack := exec.Command("sh", "-c", "find . -mindepth 1 | LC_ALL=C sort | cpio --create --format=newc --quiet > "+out)
	pack.Dir = root
	if b, err := pack.CombinedOutput(); err != nil {
		return "", fmt.Errorf("pack bare initrd: %v: %s", err, b)
	}
	return out, nil
}

// bareBoot launches QEMU exactly as the driver would, but with the trivial
// init, and times launch → its line on the console.
func bareBoot(work, kernel, initrd, tools string, i int) (time.Duration, error) {
	inst, err := vm.New(vm.Config{ID: "bare" + strconv.Itoa(i), StateRoot: work, Kernel: kernel, Initrd: initrd, Tools: tools})
	if err != nil {
		return 0, err
	}
	args, err := inst.CommandLine()
	if err != nil {
		return 0, err
	}
	dir := inst.StateDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	console := filepath.Join(dir, "console.sock")
	for j, a := range args {
		if strings.HasPrefix(a, "file,id=console,") {
			args[j] = "socket,id=console,path=" + console + ",server=on,wait=off"
		}
	}
	start := time.Now()
	cmd := exec.Command("qemu-system-x86_64", args...)
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	var conn net.Conn
	for deadline := start.Add(10 * time.Second); ; {
		if conn, err = net.Dial("unix", console); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return 0, err
		}
		time.Sleep(time.Millisecond)
	}
	defer conn.Close()
	conn.SetReadDeadline(start.Add(60 * time.Second))
	sc := bufio.NewScanner(conn)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "BARE-INIT-READY") {
			return time.Since(start), nil
		}
	}
	return 0, fmt.Errorf("no line from the trivial init: %v", sc.Err())
}

type bootResult struct {
	ready, uptime time.Duration
	rssKiB        int
	accel         string
}

func agentBoot(work string, img guestimage.Image, i int) (bootResult, error) {
	inst, err := vm.New(vm.Config{ID: "agent" + strconv.Itoa(i), StateRoot: work, Kernel: img.Kernel, Initrd: img.Initrd, Tools: img.Tools})
	if err != nil {
		return bootResult{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	if err := inst.Start(ctx); err != nil {
		return bootResult{}, err
	}
	r := bootResult{ready: time.Since(start), accel: string(inst.Accel())}
	defer inst.Shutdown(ctx)
	info, err := inst.Info(ctx)
	if err != nil {
		return r, err
	}
	r.uptime = time.Duration(info.UptimeNs)
	r.rssKiB = rssKiB(inst.Pid())
	return r, nil
}

func rssKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return n
		}
	}
	return 0
}
