// Command qemu-shim-agent is PID 1 of every qemu-shim guest. It stays small
// (the kernel unpacks every initramfs byte before running it): it prepares
// the machine, serves the host's VM-level requests over the transport the
// kernel command line names, onlines hot-plugged CPUs and memory, and hands
// task connections and stdio streams on to qemu-shim-taskd, which it starts
// from the tools disk once the host is connected.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	agentapi "github.com/qemu-shim/qemu-shim/api/agent/v1"
	"github.com/qemu-shim/qemu-shim/guest/agent"
	"github.com/qemu-shim/qemu-shim/guest/boot"
	"github.com/qemu-shim/qemu-shim/guest/hotplug"
	"github.com/qemu-shim/qemu-shim/guest/kmod"
	"github.com/qemu-shim/qemu-shim/internal/transport"
	"github.com/qemu-shim/qemu-shim/internal/transport/conn"
	"github.com/qemu-shim/qemu-shim/internal/transport/serial"
	"github.com/qemu-shim/qemu-shim/internal/transport/vsock"
)

const (
	modulesRoot = "/lib/modules"
	mountRoot   = "/run/qemu-shim/mounts"
	taskdSocket = "/run/qemu-shim/taskd.sock"
	portWait    = 10 * time.Second
	// taskdWait bounds how long a task connection waits for taskd to listen.
	taskdWait = 60 * time.Second
)

func main() {
	ctx := context.Background()
	if err := run(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "qemu-shim-agent: %v\n", err)
	}
	if os.Getpid() == 1 {
		// PID 1 must not exit: power off instead, so QEMU exits too.
		unix.Sync()
		unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	}
	os.Exit(1)
}

// timeline records when each boot step finished, in guest uptime.
var (
	timelineMu sync.Mutex
	timeline   []*agentapi.BootStep
)

func step(name string) {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	timelineMu.Lock()
	timeline = append(timeline, &agentapi.BootStep{Name: name, AtNs: uint64(ts.Nano())})
	timelineMu.Unlock()
}

func run(ctx context.Context) error {
	step("init")
	if os.Getpid() == 1 {
		if err := boot.Reroot("/.reroot"); err != nil {
			return err
		}
		if err := boot.MountPseudoFilesystems(); err != nil {
			return err
		}
	}
	step("mounted")
	cmdline, _ := os.ReadFile("/proc/cmdline")
	params := boot.KernelParams(string(cmdline), "qemu_shim.")
	if params["debug"] == "1" {
		log.SetLevel("debug")
	}
	log.L.Logger.SetFormatter(&logrus.TextFormatter{DisableColors: true, FullTimestamp: true})
	console, err := os.OpenFile("/dev/console", os.O_WRONLY, 0)
	if err == nil {
		log.L.Logger.SetOutput(console)
	}

	kind := transport.Kind(params["transport"])
	if kind != transport.VSock {
		kind = transport.Serial
	}

	// Load the transport's drivers first and serve; the rest load later.
	var uts unix.Utsname
	unix.Uname(&uts)
	loader, err := kmod.NewLoader(filepath.Join(modulesRoot, unix.ByteSliceToString(uts.Release[:])))
	if err != nil {
		return err
	}
	var (
		modMu   sync.Mutex
		modList []string
	)
	load := func(names ...string) error {
		modMu.Lock()
		defer modMu.Unlock()
		loaded, err := loader.Load(names...)
		modList = append(modList, loaded...)
		return err
	}
	// The transport's device sits on virtio-pci, which no driver depends on.
	first := []string{"virtio_pci", "virtio_console"}
	if kind == transport.VSock {
		first = []string{"virtio_pci", "vmw_vsock_virtio_transport"}
	}
	for _, m := range first {
		if loader.Has(m) {
			if err := load(m); err != nil {
				return err
			}
		}
	}
	step("transport-modules")

	onliner := &hotplug.Onliner{SysfsRoot: "/sys"}
	go func() {
		if err := onliner.Watch(ctx); err != nil {
			log.G(ctx).WithError(err).Error("watch for hot-plugged CPUs and memory")
		}
	}()

	l, err := listen(kind)
	if err != nil {
		return err
	}
	step("listening")
	// Everything else waits until the host has had its first answer: with
	// one vCPU it would otherwise slow down the boot the host waits for.
	answered := make(chan struct{})

	taskd := &taskdRelay{socket: taskdSocket, ready: make(chan struct{})}
	demux := conn.NewDemux(l, conn.KindTTRPC, taskd.forward)
	server, err := ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(grpcErrors))
	if err != nil {
		return err
	}
	modulesReady := make(chan struct{})
	svc := &agent.Service{
		SysfsRoot:    "/sys",
		MountRoot:    mountRoot,
		Transport:    string(kind),
		ModulesReady: modulesReady,
		Answered:     answered,
		Step:         step,
		Modules: func() []string {
			modMu.Lock()
			defer modMu.Unlock()
			return append([]string(nil), modList...)
		},
		Timeline: func() []*agentapi.BootStep {
			timelineMu.Lock()
			defer timelineMu.Unlock()
			return append([]*agentapi.BootStep(nil), timeline...)
		},
		PowerOff: func() {
			unix.Sync()
			unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		},
	}
	agentapi.RegisterAgentService(server, svc)

	go reap(ctx, taskd)
	go func() {
		defer close(modulesReady)
		select {
		case <-answered:
		case <-time.After(5 * time.Second):
		}
		if err := load(); err != nil {
			log.G(ctx).WithError(err).Error("load kernel modules")
		}
		step("all-modules")
		if err := svc.MountTools(ctx, 10*time.Second); err != nil {
			log.G(ctx).WithError(err).Error("no tools disk: containers cannot run")
			return
		}
		step("tools")
		if err := taskd.start(console); err != nil {
			log.G(ctx).WithError(err).Error("start the task service")
			return
		}
		step("taskd-started")
	}()
	if log.GetLevel() >= log.DebugLevel {
		for _, st := range svc.Timeline() {
			log.G(ctx).WithField("at", time.Duration(st.AtNs)).Debug("boot step " + st.Name)
		}
	}
	log.G(ctx).WithField("transport", kind).Debug("agent serving")
	return server.Serve(ctx, demux.Listener())
}

// grpcErrors turns errdefs errors into status codes, as containerd's shims
// do, so that the host gets them back as the same errdefs errors.
func grpcErrors(ctx context.Context, unmarshal ttrpc.Unmarshaler, _ *ttrpc.UnaryServerInfo, method ttrpc.Method) (interface{}, error) {
	resp, err := method(ctx, unmarshal)
	return resp, errgrpc.ToGRPC(err)
}

func listen(kind transport.Kind) (net.Listener, error) {
	if kind == transport.VSock {
		return vsock.Listen(vsock.AgentPort)
	}
	// virtio_console adds ports as the host announces them, after probe.
	var (
		path string
		err  error
	)
	for deadline := time.Now().Add(portWait); ; {
		if path, err = serial.FindPort("/sys", serial.PortName); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(2 * time.Millisecond)
	}
	port, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open agent port: %w", err)
	}
	return serial.Listen(port), nil
}

// taskdRelay starts qemu-shim-taskd and passes it the task connections
// and stdio streams, byte for byte.
type taskdRelay struct {
	socket string
	ready  chan struct{}
	mu     sync.Mutex
	pid    int
}

func (t *taskdRelay) start(console *os.File) error {
	bin := filepath.Join(agentapi.ToolsMountPoint, "qemu-shim-taskd")
	attr := &os.ProcAttr{Files: []*os.File{nil, console, console}, Env: []string{"PATH=/usr/bin:/bin:/usr/sbin:/sbin"}}
	p, err := os.StartProcess(bin, []string{bin, "-socket", t.socket, "-runc", filepath.Join(agentapi.ToolsMountPoint, "runc")}, attr)
	if err != nil {
		return err
	}
	t.mu.Lock()
	t.pid = p.Pid
	t.mu.Unlock()
	p.Release() // reap() collects it
	close(t.ready)
	return nil
}

func (t *taskdRelay) isTaskd(pid int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return pid == t.pid
}

func (t *taskdRelay) forward(kind byte, name string, c net.Conn) {
	go func() {
		deadline := time.Now().Add(taskdWait)
		select {
		case <-t.ready:
		case <-time.After(taskdWait):
			log.L.Error("task service did not start: dropping a connection")
			c.Close()
			return
		}
		var (
			d   net.Conn
			err error
		)
		for {
			if d, err = net.Dial("unix", t.socket); err == nil {
				break
			}
			if time.Now().After(deadline) {
				log.L.WithError(err).Error("task service not listening: dropping a connection")
				c.Close()
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err := conn.WriteHeader(d, kind, name); err != nil {
			c.Close()
			d.Close()
			return
		}
		conn.Splice(c, d)
	}()
}

// reap collects every orphan (PID 1's duty), noting taskd's end.
func reap(ctx context.Context, t *taskdRelay) {
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, unix.SIGCHLD)
	for range sigs {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if pid <= 0 || errors.Is(err, unix.ECHILD) {
				break
			}
			if t.isTaskd(pid) {
				log.G(ctx).WithField("status", ws).Error("the task service exited")
			}
		}
	}
}
