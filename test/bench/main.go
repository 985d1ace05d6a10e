// Command bench measures qemu-shim against its baselines in one run and
// prints medians, the spread (min–max) and the ratios:
//   - boot: QEMU launch → agent answers, beside QEMU launch → a trivial
//     /init runs on the same kernel and machine (the floor); QEMU's RSS.
//   - containers: create+start of `true` and an exec round trip through
//     the agent, beside the same runc on the host.
//   - ctr run: `ctr run --rm` of echo to its output through a private
//     containerd, beside containerd's runc shim and the boot floor; the
//     shim's and QEMU's RSS.
//   - stdio: an exec round trip (`ctr tasks exec` of echo) and a 4 MiB
//     stdin → cat → stdout round trip through containerd's fifos, in a
//     running container, beside containerd's runc shim.
//   - share: what shared guest memory and virtiofsd cost a VM (boot, RSS).
//   - bind: a bind mount's write, read and stat speed, beside runc's.
//   - net: TCP both ways through a CNI bridge, and what joining a network
//     namespace adds to a start, beside runc's.
//   - cri: a pod's start through containerd's CRI plugin, qemu handler
//     beside runc, and a pod VM's host overhead.
//   - hotplug: vCPU grow and shrink, disk attach and detach.
//   - runtimes: the guest's OCI runtimes (crun, runc) side by side: the
//     first container after boot, the next, an exec.
//   - trace: where a cold `ctr run --rm` of echo spends its time, from the
//     shim's and the guest's debug logs, and QEMU's CPU time.
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
	only := flag.String("only", "", "run one section: boot, containers, ctr, stdio, share, bind, net, cri, hotplug, memory, runtimes or trace")
	vmConfig := flag.String("vm-config", "", "lines added to the shim's [vm] configuration in the ctr, memory and trace sections, to compare settings")
	flag.Parse()
	log.SetLevel("warn")
	section = *only
	extraVMConfig = *vmConfig
	if err := run(*guestDir, *runcPath, *runs); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// section, when set, is the only one run.
var section string

// extraVMConfig (-vm-config) is added to the shim's [vm] table in the ctr,
// memory and trace sections.
var extraVMConfig string

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
		{"stdio", func() error { return stdioSection(work, img, runs) }},
		{"share", func() error { return shareSection(work, img, runs) }},
		{"bind", func() error { return bindSection(runs) }},
		{"net", func() error { return netSection(runs) }},
		{"cri", func() error { return criSection(runs) }},
		{"hotplug", func() error { return hotplugSection(work, img, runs) }},
		{"memory", func() error { return memorySection(runs, extraVMConfig) }},
		{"runtimes", func() error { return runtimesSection(work, img, runs) }},
		{"trace", func() error {
			if section != "trace" {
				return nil // a diagnosis, not a figure: only when asked
			}
			return traceSection(runs)
		}},
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
	r, err := ctrRun(runs)
	if err != nil {
		return fmt.Errorf("ctr run: %w", err)
	}
	row("ctr run echo → output, from template (s)", r.template)
	row("ctr run echo → output, booted (s)", r.cold)
	row("ctr run echo → output, runc shim (s)", r.runcShim)
	row("ctr run --rm echo → exit, from template (s)", r.templateExit)
	row("ctr run --rm echo → exit, booted (s)", r.coldExit)
	row("ctr run --rm echo → exit, runc shim (s)", r.runcExit)
	f := median(floor)
	fmt.Printf("ratio to exit, from template: / boot floor %.2f (target ≤ 0.5), / runc shim %.1f\n", median(r.templateExit)/f, median(r.templateExit)/median(r.runcExit))
	fmt.Printf("ratio to exit, booted:        / boot floor %.2f (target ≤ 1.15), / runc shim %.1f\n", median(r.coldExit)/f, median(r.coldExit)/median(r.runcExit))
	fmt.Printf("ratio to output: from template / floor %.2f, booted / floor %.2f\n", median(r.template)/f, median(r.cold)/f)
	fmt.Printf("resident memory while a container runs: shim %.1f MiB, its QEMU %.1f MiB\n\n", float64(r.shimRSS)/1024, float64(r.qemuRSS)/1024)
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
		// The driver's console is a descriptor QEMU inherits; the bare
		// boot listens on a socket of its own instead.
		if strings.HasPrefix(a, "socket,id=console,") {
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
