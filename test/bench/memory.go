package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/qemu-shim/qemu-shim/internal/busybox"
	"github.com/qemu-shim/qemu-shim/shim/bundle"
	"github.com/qemu-shim/qemu-shim/test/ctrd"
)

// Memory targets (issue 12): the host's PSS of an idle container at most
// this many times what its guest has touched, and the shim's RSS.
const (
	memRatioTarget  = 1.5
	shimRSSTargetMi = 15
)

// Idle is when the host's PSS of a container has moved less than
// idleBandKiB over idleWindow; a container that has not settled after
// idleDeadline is measured anyway, and said so.
const (
	idleBandKiB  = 1024
	idleWindow   = 6 * time.Second
	idleDeadline = 90 * time.Second
)

// memorySection starts an idle busybox container through a private
// containerd, waits until its host footprint settles, and compares the
// host's PSS of everything the container runs on (QEMU, the shim,
// virtiofsd if any) with the memory its guest has touched (MemTotal −
// MemFree, read inside the container: its /proc/meminfo is the guest's).
// vmConfig, when set, is added to the shim's [vm] configuration.
func memorySection(runs int, vmConfig string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	d, err := ctrd.StartWith(ctx, ctrd.Options{ExtraVMConfig: vmConfig})
	if err != nil {
		return err
	}
	defer d.Close()
	var groupHost, groupRatio, host, noJIT, jitRatio, jit, afterFill, qemu, qemuAnon, qemuShmem, qemuFile, shimPSS, shimRSS, vfs, total, touched, ratio, settle []float64
	unsettled := 0
	for i := 0; i < runs; i++ {
		m, err := idleContainer(ctx, d, fmt.Sprintf("mem%d", i))
		if err != nil {
			return err
		}
		if !m.settled {
			unsettled++
		}
		mi := func(kib int) float64 { return float64(kib) / 1024 }
		host = append(host, mi(m.qemu.pss+m.shim.pss+m.virtiofsd.pss))
		afterFill = append(afterFill, mi(m.afterFill))
		all := m.qemu.pss + m.shim.pss + m.virtiofsd.pss
		jit, noJIT = append(jit, mi(m.qemu.jit)), append(noJIT, mi(all-m.qemu.jit))
		jitRatio = append(jitRatio, float64(all-m.qemu.jit)/float64(m.memTotal-m.memFree))
		qemu, qemuAnon, qemuShmem, qemuFile = append(qemu, mi(m.qemu.pss)), append(qemuAnon, mi(m.qemu.pssAnon)), append(qemuShmem, mi(m.qemu.pssShmem)), append(qemuFile, mi(m.qemu.pssFile))
		shimPSS, shimRSS, vfs = append(shimPSS, mi(m.shim.pss)), append(shimRSS, mi(m.shim.rss)), append(vfs, mi(m.virtiofsd.pss))
		total, touched = append(total, mi(m.memTotal)), append(touched, mi(m.memTotal-m.memFree))
		ratio = append(ratio, float64(m.qemu.pss+m.shim.pss+m.virtiofsd.pss)/float64(m.memTotal-m.memFree))
		settle = append(settle, m.settle.Seconds())
		h, g, err := idleGroup(ctx, d, fmt.Sprintf("group%d", i))
		if err != nil {
			return err
		}
		groupHost, groupRatio = append(groupHost, mi(h)), append(groupRatio, float64(h)/float64(g))
	}
	row("idle container: host PSS, all (MiB)", host)
	row("  QEMU PSS (MiB)", qemu)
	row("    anonymous (MiB)", qemuAnon)
	row("      of which TCG's translation cache (MiB)", jit)
	row("    shared memory (MiB)", qemuShmem)
	row("    file-backed (MiB)", qemuFile)
	row("  shim PSS (MiB)", shimPSS)
	row("  virtiofsd PSS (MiB)", vfs)
	row("guest MemTotal (MiB)", total)
	row("guest touched: MemTotal − MemFree (MiB)", touched)
	row("ratio host PSS / guest touched", ratio)
	row("host PSS without TCG's cache (MiB)", noJIT)
	row("ratio without TCG's cache / guest touched", jitRatio)
	row("shim RSS (MiB)", shimRSS)
	row("time until the host PSS settled (s)", settle)
	row(fmt.Sprintf("host PSS, %d MiB used and freed (MiB)", fillMiB), afterFill)
	row(fmt.Sprintf("%d at once: host PSS each (MiB)", groupSize), groupHost)
	row(fmt.Sprintf("%d at once: ratio to guest touched", groupSize), groupRatio)
	fmt.Printf("host PSS / guest touched: %.2f (target ≤ %.1f; %.2f without TCG's translation cache, which KVM does not have: an estimate, KVM is not measured here); shim RSS %.1f MiB (target ≤ %d)",
		median(ratio), memRatioTarget, median(jitRatio), median(shimRSS), shimRSSTargetMi)
	if unsettled > 0 {
		fmt.Printf("; %d of %d runs had not settled after %v", unsettled, runs, idleDeadline)
	}
	fmt.Printf("\n\n")
	return nil
}

type procMem struct{ pss, pssAnon, pssShmem, pssFile, rss, jit int }

type idleMeasure struct {
	qemu, shim, virtiofsd procMem
	memTotal, memFree     int
	settle                time.Duration
	settled               bool
	// afterFill is the host's PSS once the guest has filled fillMiB and
	// freed it again, and things have settled.
	afterFill int
}

// idleContainer runs `sleep` in a new container, waits until the host's
// PSS of its processes settles, measures them, then reads the guest's
// /proc/meminfo from inside the container.
func idleContainer(ctx context.Context, d *ctrd.Daemon, id string) (idleMeasure, error) {
	var m idleMeasure
	if out, err := d.Ctr(ctx, "run", "-d", "--runtime", ctrd.Runtime, busybox.DefaultRef, id, "sleep", "100000").CombinedOutput(); err != nil {
		return m, fmt.Errorf("ctr run -d: %v: %s", err, out)
	}
	defer func() {
		bg := context.WithoutCancel(ctx)
		d.Ctr(bg, "task", "kill", "-s", "KILL", id).Run()
		d.Ctr(bg, "task", "delete", "-f", id).Run()
		d.Ctr(bg, "container", "delete", id).Run()
	}()
	stateDir := filepath.Join(d.VMStateRoot(), bundle.VMName(ctrd.Namespace, id))
	measure := func() {
		m.qemu = sumMem("qemu-system.*" + stateDir + "/")
		m.virtiofsd = sumMem("virtiofsd.*" + stateDir + "/")
		m.shim = sumMem("containerd-shim-qemu-v1.*-id " + id + "( |$)")
	}
	if m.settle, m.settled = settle(measure, func() int { return m.qemu.pss + m.shim.pss + m.virtiofsd.pss }); m.qemu.pss == 0 {
		return m, fmt.Errorf("no QEMU found for %s", stateDir)
	}
	var err error
	if m.memTotal, m.memFree, err = guestMeminfo(ctx, d, id); err != nil {
		return m, err
	}
	// Memory the guest used for a while and freed: does the host get it
	// back? (/dev/shm is a tmpfs of 64 MiB in the container.)
	fill := fmt.Sprintf("dd if=/dev/zero of=/dev/shm/fill bs=1M count=%d 2>/dev/null; rm /dev/shm/fill", fillMiB)
	if out, err := d.Ctr(ctx, "task", "exec", "--exec-id", "fill", id, "sh", "-c", fill).CombinedOutput(); err != nil {
		return m, fmt.Errorf("fill the guest's memory: %v: %s", err, out)
	}
	idle := m
	settle(measure, func() int { return m.qemu.pss + m.shim.pss + m.virtiofsd.pss })
	idle.afterFill = m.qemu.pss + m.shim.pss + m.virtiofsd.pss
	return idle, nil
}

// guestMeminfo reads the guest's MemTotal and MemFree (KiB) from inside
// a container. The exec's runc has exited when cat runs: what cat sees is
// the idle guest with one more shell.
func guestMeminfo(ctx context.Context, d *ctrd.Daemon, id string) (total, free int, err error) {
	out, err := d.Ctr(ctx, "task", "exec", "--exec-id", "meminfo", id, "sh", "-c", "sleep 2; cat /proc/meminfo").Output()
	if err != nil {
		return 0, 0, fmt.Errorf("read the guest's meminfo: %w", err)
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.Atoi(f[1])
		switch f[0] {
		case "MemTotal:":
			total = n
		case "MemFree:":
			free = n
		}
	}
	if total == 0 {
		return 0, 0, fmt.Errorf("no MemTotal in the guest's meminfo: %q", out)
	}
	return total, free, nil
}

// groupSize is how many idle containers run at once in the shared
// measurement.
const groupSize = 3

// idleGroup starts groupSize idle containers, waits until their summed
// host PSS settles, and returns it per container with the mean of what
// their guests have touched (KiB): the files every VM maps (kernel,
// initramfs, QEMU's and the shim's binaries) are then shared, as on a host
// that runs several.
func idleGroup(ctx context.Context, d *ctrd.Daemon, prefix string) (hostKiB, touchedKiB int, err error) {
	var ids []string
	defer func() {
		bg := context.WithoutCancel(ctx)
		for _, id := range ids {
			d.Ctr(bg, "task", "kill", "-s", "KILL", id).Run()
			d.Ctr(bg, "task", "delete", "-f", id).Run()
			d.Ctr(bg, "container", "delete", id).Run()
		}
	}()
	for i := 0; i < groupSize; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		if out, err := d.Ctr(ctx, "run", "-d", "--runtime", ctrd.Runtime, busybox.DefaultRef, id, "sleep", "100000").CombinedOutput(); err != nil {
			return 0, 0, fmt.Errorf("ctr run -d: %v: %s", err, out)
		}
		ids = append(ids, id)
	}
	sum := 0
	measure := func() {
		sum = 0
		for _, id := range ids {
			stateDir := filepath.Join(d.VMStateRoot(), bundle.VMName(ctrd.Namespace, id))
			for _, pattern := range []string{"qemu-system.*" + stateDir + "/", "virtiofsd.*" + stateDir + "/", "containerd-shim-qemu-v1.*-id " + id + "( |$)"} {
				sum += sumMem(pattern).pss
			}
		}
	}
	settle(measure, func() int { return sum })
	host := sum
	for _, id := range ids {
		total, free, err := guestMeminfo(ctx, d, id)
		if err != nil {
			return 0, 0, err
		}
		touchedKiB += total - free
	}
	return host / groupSize, touchedKiB / groupSize, nil
}

// fillMiB is how much the container writes to its /dev/shm and removes.
const fillMiB = 60

// settle calls measure until total has moved less than idleBandKiB over
// idleWindow, or idleDeadline has passed; it returns how long that took
// and whether it settled.
func settle(measure func(), total func() int) (time.Duration, bool) {
	start := time.Now()
	type sample struct {
		at  time.Time
		pss int
	}
	var samples []sample
	for {
		measure()
		now := time.Now()
		if total() == 0 {
			return time.Since(start), false
		}
		samples = append(samples, sample{now, total()})
		for len(samples) > 1 && now.Sub(samples[1].at) >= idleWindow {
			samples = samples[1:]
		}
		if now.Sub(samples[0].at) >= idleWindow {
			lo, hi := samples[0].pss, samples[0].pss
			for _, s := range samples {
				lo, hi = min(lo, s.pss), max(hi, s.pss)
			}
			if hi-lo < idleBandKiB {
				return time.Since(start), true
			}
		}
		if now.Sub(start) > idleDeadline {
			return time.Since(start), false
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// sumMem adds up the memory of the processes whose command line matches
// pattern (pgrep -f).
func sumMem(pattern string) procMem {
	var t procMem
	out, _ := exec.Command("pgrep", "-f", pattern).Output()
	for _, f := range strings.Fields(string(out)) {
		pid, _ := strconv.Atoi(f)
		p := readSmapsRollup(pid)
		// Pages of its memory files that no mapping holds yet (a restored
		// guest's saved pages before it touches them) are its too.
		un := unmappedMemfdKiB(pid)
		p.pss, p.pssShmem = p.pss+un, p.pssShmem+un
		t.pss += p.pss
		t.pssAnon += p.pssAnon
		t.pssShmem += p.pssShmem
		t.pssFile += p.pssFile
		t.rss += p.rss
		t.jit += jitPSSKiB(pid)
	}
	return t
}

// jitPSSKiB is the PSS of a process's anonymous mappings that are
// writable and executable: in QEMU, TCG's translation cache (KVM has none).
func jitPSSKiB(pid int) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	total, in := 0, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			in = fields[1] == "rwxp" && len(fields) == 5
			continue
		}
		if in && len(fields) >= 2 && fields[0] == "Pss:" {
			n, _ := strconv.Atoi(fields[1])
			total += n
		}
	}
	return total
}

// readSmapsRollup reads a process's memory totals (KiB).
func readSmapsRollup(pid int) procMem {
	var p procMem
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return p
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
		switch key {
		case "Pss":
			p.pss = n
		case "Pss_Anon":
			p.pssAnon = n
		case "Pss_Shmem":
			p.pssShmem = n
		case "Pss_File":
			p.pssFile = n
		case "Rss":
			p.rss = n
		}
	}
	return p
}

// unmappedMemfdKiB is how much of the memory files (memfd) a process holds
// open is resident but not mapped by it, so not in its PSS.
func unmappedMemfdKiB(pid int) int {
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	allocated := map[string]int{}
	for _, fd := range fds {
		path := fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())
		target, err := os.Readlink(path)
		if err != nil || !strings.HasPrefix(target, "/memfd:") {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(path, &st) == nil {
			allocated[target] = int(st.Blocks / 2)
		}
	}
	if len(allocated) == 0 {
		return 0
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	mapped := map[string]int{}
	name := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			name = ""
			if len(fields) >= 6 {
				name = strings.Join(fields[5:], " ")
			}
			continue
		}
		if name != "" && len(fields) >= 2 && fields[0] == "Rss:" {
			n, _ := strconv.Atoi(fields[1])
			mapped[name] += n
		}
	}
	total := 0
	for target, kib := range allocated {
		total += max(0, kib-mapped[target])
	}
	return total
}
