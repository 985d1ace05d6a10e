// Command qemu-shim-agent is PID 1 of every qemu-shim guest: it prepares the
// machine and serves the host over the transport the kernel command line
// names.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	"github.com/qemu-shim/qemu-shim/guest/agent"
	"github.com/qemu-shim/qemu-shim/guest/boot"
	"github.com/qemu-shim/qemu-shim/guest/hotplug"
	"github.com/qemu-shim/qemu-shim/guest/kmod"
	"github.com/qemu-shim/qemu-shim/guest/task"
	"github.com/qemu-shim/qemu-shim/internal/transport"
	"github.com/qemu-shim/qemu-shim/internal/transport/serial"
	"github.com/qemu-shim/qemu-shim/internal/transport/vsock"
	agentapi "github.com/qemu-shim/qemu-shim/task/agent/v1"
	"github.com/qemu-shim/qemu-shim/task/conn"
	eventsapi "github.com/qemu-shim/qemu-shim/task/events/v1"
)

const (
	modulesRoot    = "/lib/modules"
	mountRoot      = "/run/qemu-shim/mounts"
	containersRoot = "/run/qemu-shim/containers"
	portWait       = 10 * time.Second
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
	if console, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		log.L.Logger.SetOutput(console)
	}

	// Reap every orphan; runc's exits go to reaper.Default's subscribers.
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, unix.SIGCHLD)
	go func() {
		for range sigs {
			reaper.Reap()
		}
	}()

	kind := transport.Kind(params["transport"])
	if kind != transport.VSock {
		kind = transport.Serial
	}

	// Load the transport's drivers first and serve; the rest load meanwhile.
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
	// The other modules and the tools disk wait for the host's first
	// connection: with one vCPU they would otherwise slow down the boot
	// that the host is waiting for.
	firstConn := make(chan struct{})
	modulesReady := make(chan struct{})
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
	l = &firstAcceptListener{Listener: l, first: firstConn}
	demux := conn.NewDemux(l)
	server, err := ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(grpcErrors))
	if err != nil {
		return err
	}
	events := task.NewEventLog(task.DefaultEventRetention)
	taskAPI.RegisterTTRPCTaskService(server, task.New(ctx, task.Config{
		Runc:      filepath.Join(agentapi.ToolsMountPoint, "runc"),
		Root:      containersRoot,
		SysfsRoot: "/sys",
		Streams:   demux,
		Events:    events,
		Ready:     modulesReady,
	}))
	eventsapi.RegisterEventsService(server, events)
	svc := &agent.Service{
		SysfsRoot:    "/sys",
		MountRoot:    mountRoot,
		Transport:    string(kind),
		ModulesReady: modulesReady,
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
	go func() {
		defer close(modulesReady)
		select {
		case <-firstConn:
		case <-time.After(5 * time.Second):
		}
		if err := load(); err != nil {
			log.G(ctx).WithError(err).Error("load kernel modules")
		}
		step("all-modules")
		if err := svc.MountTools(ctx, 5*time.Second); err != nil {
			log.G(ctx).WithError(err).Warn("no guest tools: containers cannot run")
		} else {
			step("tools")
		}
	}()
	log.G(ctx).WithField("transport", kind).Debug("agent serving")
	return server.Serve(ctx, demux.Listener())
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

// firstAcceptListener closes first when the first connection arrives.
type firstAcceptListener struct {
	net.Listener
	first chan struct{}
	once  sync.Once
}

func (l *firstAcceptListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.once.Do(func() { close(l.first) })
	}
	return c, err
}

// grpcErrors turns errdefs errors into status codes, as containerd's shims
// do, so that the host gets them back as the same errdefs errors.
func grpcErrors(ctx context.Context, unmarshal ttrpc.Unmarshaler, _ *ttrpc.UnaryServerInfo, method ttrpc.Method) (interface{}, error) {
	resp, err := method(ctx, unmarshal)
	return resp, errgrpc.ToGRPC(err)
}
