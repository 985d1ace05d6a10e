package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/qemu-shim/qemu-shim/internal/busybox"
	"github.com/qemu-shim/qemu-shim/shim/bundle"
	"github.com/qemu-shim/qemu-shim/test/ctrd"
	"github.com/qemu-shim/qemu-shim/vm"
)

// A phase of a cold `ctr run --rm`, as the trace section reports it.
type phase struct {
	name string
	// from host log lines (msg=…, and call=… for guest calls), or from the
	// guest's debug lines ("guest:" + msg, its took= or at= value).
	what string
}

// The host's marks, in order: each phase runs from the mark before it.
var hostMarks = []phase{
	{"ctr → shim launches QEMU", "starting QEMU"},
	{"QEMU launch → agent answers", "VM running"},
	{"agent answers → sandbox up, rootfs next", "rootfs mount"},
	{"→ rootfs converted and hot-plugged", "rootfs attached"},
	{"→ guest create returns", "call=create"},
	{"→ guest start returns", "call=start"},
}

// The guest's own durations: between two boot steps, or a step's took=.
var guestSpans = []struct{ name, from, to string }{
	{"guest: first answer → all modules loaded", "first-info", "all-modules"},
	{"guest: → tools disk mounted", "all-modules", "tools"},
	{"guest: taskd exec → listening", "taskd-started", "task service listening"},
}

var guestTook = []string{"rootfs mounted", "runtime create", "runtime start", "runtime delete"}

// traceSection runs `ctr run --rm` of echo with the shim's and the guest's
// debug logs on, and splits each run into phases: the host's from the
// shim's log lines, the guest's from its console (boot steps and the task
// service's timings), and QEMU's CPU time, which the machine's load does
// not stretch as it does wall time. QEMU_SHIM_TRACE_LOGS=1 prints the logs.
func traceSection(runs int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	d, err := ctrd.StartWith(ctx, ctrd.Options{Debug: true, ExtraVMConfig: extraVMConfig})
	if err != nil {
		return err
	}
	defer d.Close()
	values := map[string][]float64{}
	var order []string
	add := func(name string, v float64) {
		if _, ok := values[name]; !ok {
			order = append(order, name)
		}
		values[name] = append(values[name], v)
	}
	for i := 0; i <= runs; i++ {
		t, err := traceRun(ctx, d, "trace"+strconv.Itoa(i))
		if err != nil {
			return err
		}
		if i == 0 { // warms the layer cache and the host's page cache
			continue
		}
		for _, m := range t {
			add(m.name, m.v)
		}
	}
	for _, name := range order {
		row(name, values[name])
	}
	return nil
}

type traced struct {
	name string
	v    float64
}

func traceRun(ctx context.Context, d *ctrd.Daemon, id string) ([]traced, error) {
	logStart := len(d.LogTail(1 << 30))
	stateDir := filepath.Join(d.VMStateRoot(), bundle.VMName(ctrd.Namespace, id))
	watch := watchVM(stateDir)
	cmd := d.Ctr(ctx, "run", "--rm", "--runtime", ctrd.Runtime, busybox.DefaultRef, id, "echo", "trace-"+id)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	var outAt time.Time
	var qemuCPUAtOutput float64
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "trace-"+id) && outAt.IsZero() {
			outAt = time.Now()
			qemuCPUAtOutput = watch.cpu()
		}
	}
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("ctr run: %w: %s", err, stderr.Bytes())
	}
	end := time.Now()
	console, qemuCPU := watch.stop()
	if outAt.IsZero() {
		return nil, fmt.Errorf("ctr run printed nothing")
	}
	host := d.LogTail(1 << 30)[logStart:]
	if os.Getenv("QEMU_SHIM_TRACE_LOGS") != "" {
		fmt.Printf("--- %s: shim\n%s--- %s: guest console\n%s\n", id, host, id, console)
	}

	var res []traced
	prev := start
	for _, m := range hostMarks {
		at, ok := hostMark(host, m.what)
		if !ok {
			return nil, fmt.Errorf("no %q in the shim's log", m.what)
		}
		res = append(res, traced{m.name + " (s)", at.Sub(prev).Seconds()})
		prev = at
	}
	res = append(res,
		traced{"→ output (s)", outAt.Sub(prev).Seconds()},
		traced{"output → ctr exits (s)", end.Sub(outAt).Seconds()},
		traced{"total: ctr run to output (s)", outAt.Sub(start).Seconds()},
		traced{"total: ctr run to exit (s)", end.Sub(start).Seconds()})
	steps := guestSteps(console)
	for _, s := range guestSpans {
		from, ok1 := steps[s.from]
		to, ok2 := steps[s.to]
		if ok1 && ok2 {
			res = append(res, traced{s.name + " (s)", (to - from).Seconds()})
		}
	}
	for _, what := range guestTook {
		if v, ok := guestTookOf(console, what); ok {
			res = append(res, traced{"guest: " + what + " (s)", v.Seconds()})
		}
	}
	res = append(res,
		traced{"QEMU CPU time to output (s)", qemuCPUAtOutput},
		traced{"QEMU CPU time in all (s)", qemuCPU})
	return res, nil
}

var logTime = regexp.MustCompile(`time="([^"]+)"`)

// hostMark finds the time of the first log line holding what.
func hostMark(log, what string) (time.Time, bool) {
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, what) {
			continue
		}
		if m := logTime.FindStringSubmatch(line); m != nil {
			if t, err := time.Parse(time.RFC3339Nano, m[1]); err == nil {
				return t, true
			}
		}
	}
	return time.Time{}, false
}

var (
	stepLine = regexp.MustCompile(`msg="boot step ([^"]+)" at=([0-9.]+[a-zµ]+)`)
	taskdUp  = regexp.MustCompile(`msg="task service listening" uptime=([0-9.]+[a-zµ]+)`)
)

// guestSteps reads the boot steps (guest uptime) from the console.
func guestSteps(console []byte) map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, m := range stepLine.FindAllSubmatch(console, -1) {
		if d, err := time.ParseDuration(string(m[2])); err == nil {
			out[string(m[1])] = d
		}
	}
	if m := taskdUp.FindSubmatch(console); m != nil {
		if d, err := time.ParseDuration(string(m[1])); err == nil {
			out["task service listening"] = d
		}
	}
	return out
}

// guestTookOf reads the first took= of a task service's debug line.
func guestTookOf(console []byte, msg string) (time.Duration, bool) {
	re := regexp.MustCompile(`msg="` + regexp.QuoteMeta(msg) + `" took=([0-9.]+[a-zµ]+)`)
	if m := re.FindSubmatch(console); m != nil {
		d, err := time.ParseDuration(string(m[1]))
		return d, err == nil
	}
	return 0, false
}

// vmWatch follows a VM's state directory while it exists: it copies the
// console log (removed with the VM) and samples QEMU's CPU time.
type vmWatch struct {
	done    chan struct{}
	stopped chan struct{}
	console bytes.Buffer
	cpuNow  chan float64
	lastCPU float64
}

func watchVM(dir string) *vmWatch {
	w := &vmWatch{done: make(chan struct{}), stopped: make(chan struct{}), cpuNow: make(chan float64)}
	go w.run(dir)
	return w
}

func (w *vmWatch) run(dir string) {
	defer close(w.stopped)
	var (
		f   *os.File
		pid int
	)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if f == nil {
			f, _ = os.Open(filepath.Join(dir, vm.ConsoleLogName))
		}
		if f != nil {
			w.console.ReadFrom(f)
		}
		if pid == 0 {
			if b, err := os.ReadFile(filepath.Join(dir, vm.PidFileName)); err == nil {
				pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
			}
		}
		if pid != 0 {
			if c, ok := cpuSeconds(pid); ok {
				w.lastCPU = c
			}
		}
		select {
		case <-w.done:
			if f != nil {
				f.Close()
			}
			return
		case w.cpuNow <- w.lastCPU:
		case <-tick.C:
		}
	}
}

func (w *vmWatch) cpu() float64 { return <-w.cpuNow }

func (w *vmWatch) stop() ([]byte, float64) {
	close(w.done)
	<-w.stopped
	return w.console.Bytes(), w.lastCPU
}

// cpuSeconds is a process's user and system time, from /proc/PID/stat.
func cpuSeconds(pid int) (float64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// Fields after the command (which may hold spaces) in parentheses.
	rest := b[bytes.LastIndexByte(b, ')')+2:]
	f := strings.Fields(string(rest))
	if len(f) < 13 {
		return 0, false
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100, true // USER_HZ
}
