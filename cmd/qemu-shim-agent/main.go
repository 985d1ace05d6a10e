// Command qemu-shim-agent is PID 1 of every qemu-shim guest. It stays small
// (the kernel unpacks every initramfs byte before running it): it prepares
// the machine, serves the host's VM-level requests over the transport the
// kernel command line names, onlines hot-plugged CPUs and memory, and hands
// task connections and stdio streams on to qemu-shim-taskd, which it starts
// from the tools disk once the host is connected.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
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
	"github.com/qemu-shim/qemu-shim/guest/reap"
	"github.com/qemu-shim/qemu-shim/guest/relay"
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

func run(ctx context.Context) error {
	var timeline agent.Timeline
	step := timeline.Step
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

	taskd := relay.New(taskdSocket)
	demux := conn.NewDemux(l, conn.KindTTRPC, taskd.Forward)
	server, err := ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(grpcErrors))
	if err != nil {
		return err
	}
	modulesReady := make(chan struct{})
	taskdStarted := make(chan struct{})
	taskdBin := filepath.Join(agentapi.ToolsMountPoint, "qemu-shim-taskd")
	runcBin := filepath.Join(agentapi.ToolsMountPoint, "runc")
	svc := &agent.Service{
		SysfsRoot:    "/sys",
		MountRoot:    mountRoot,
		Transport:    string(kind),
		ModulesReady: modulesReady,
		TaskdStarted: taskdStarted,
		Namespaces:   []string{agentapi.ContainerNetnsPath},
		// Not the OCI runtime: reading it whole costs each restore more
		// than the pages a container start reads from the tools disk.
		ModulesDir: modulesRoot,
		Answered:   answered,
		Step:       step,
		Modules: func() []string {
			modMu.Lock()
			defer modMu.Unlock()
			return append([]string(nil), modList...)
		},
		Timeline: timeline.Steps,
		// The host's task connection of a VM restored from the template
		// finds taskd's side of it made.
		Preconnect: func() error { return taskd.Preconnect(conn.KindTask, 10*time.Second) },
		// taskd warms the container path up (task.Service.Warm). Its
		// SIGUSR1 handler is there: only a restored guest is asked, and
		// taskd listened before its template was saved (Prepare waits for
		// the namespace taskd makes after that).
		WarmUp: func() {
			if err := taskd.Signal(unix.SIGUSR1); err != nil {
				log.G(ctx).WithError(err).Warn("ask the task service to warm up")
			}
		},
		PowerOff: func() {
			unix.Sync()
			unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		},
	}
	agentapi.RegisterAgentService(server, svc)

	go reap.Reap(ctx, func(pid int, ws unix.WaitStatus) {
		if taskd.IsTaskd(pid) {
			// The containers' state went with it: the VM is of no more use,
			// and ending it is how the host learns (every process is
			// reported killed), rather than by calls that hang.
			log.G(ctx).WithField("status", ws).Error("the task service exited: powering off")
			svc.PowerOff()
		}
	})
	go func() {
		defer close(modulesReady)
		select {
		case <-answered:
		case <-time.After(5 * time.Second):
		}
		if err := load(); err != nil {
			log.G(ctx).WithError(err).Error("load kernel modules")
		} else if err := os.RemoveAll(modulesRoot); err != nil {
			// Every module is loaded: their files, in the initramfs, only
			// hold guest memory (3.4 MiB).
			log.G(ctx).WithError(err).Warn("remove the loaded modules' files")
		}
		step("all-modules")
		if err := svc.MountTools(ctx, 10*time.Second); err != nil {
			log.G(ctx).WithError(err).Error("no tools disk: containers cannot run")
			return
		}
		step("tools")
		if err := taskd.Start(taskdBin, runcBin, console); err != nil {
			log.G(ctx).WithError(err).Error("start the task service")
			return
		}
		close(taskdStarted)
		step("taskd-started")
	}()
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
