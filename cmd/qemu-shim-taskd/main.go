// Command qemu-shim-taskd is the guest's task service: containerd's task
// API under an OCI runtime (crun or runc), and the event log the host
// replays. The agent starts it from the tools disk and relays to it the
// host's task connections and stdio streams over a Unix socket.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	eventsapi "github.com/qemu-shim/qemu-shim/api/events/v1"
	networkapi "github.com/qemu-shim/qemu-shim/api/network/v1"
	volumeapi "github.com/qemu-shim/qemu-shim/api/volume/v1"
	"github.com/qemu-shim/qemu-shim/api/wire"
	"github.com/qemu-shim/qemu-shim/guest/boot"
	"github.com/qemu-shim/qemu-shim/guest/codecs"
	"github.com/qemu-shim/qemu-shim/guest/network"
	"github.com/qemu-shim/qemu-shim/guest/stuck"
	"github.com/qemu-shim/qemu-shim/guest/task"
	"github.com/qemu-shim/qemu-shim/internal/transport/conn"
)

func main() {
	socket := flag.String("socket", "/run/qemu-shim/taskd.sock", "Unix socket to serve on")
	runc := flag.String("runc", "/run/qemu-shim/tools/runc", "runc binary; crun, if the tools have it, is beside it")
	runtime := flag.String("runtime", "", "the OCI runtime of containers whose spec names none (runc or crun; default: crun if the tools have it)")
	root := flag.String("root", "/run/qemu-shim/containers", "containers' bundles")
	flag.Parse()
	log.L.Logger.SetFormatter(&logrus.TextFormatter{DisableColors: true, FullTimestamp: true, TimestampFormat: log.RFC3339NanoFixed})
	// The agent's debug switch (the shim's vm.debug) is the kernel's.
	if cmdline, err := os.ReadFile("/proc/cmdline"); err == nil && boot.KernelParams(string(cmdline), "qemu_shim.")["debug"] == "1" {
		log.SetLevel("debug")
	}
	runtimes := map[string]string{wire.RuntimeRunc: *runc}
	if crun := filepath.Join(filepath.Dir(*runc), wire.RuntimeCrun); fileExists(crun) {
		runtimes[wire.RuntimeCrun] = crun
	}
	if *runtime == "" {
		*runtime = wire.RuntimeRunc
		if _, ok := runtimes[wire.RuntimeCrun]; ok {
			*runtime = wire.RuntimeCrun
		}
	}
	if err := run(context.Background(), *socket, *root, runtimes, *runtime); err != nil {
		fmt.Fprintf(os.Stderr, "qemu-shim-taskd: %v\n", err)
		os.Exit(1)
	}
}

// stuckCall is how long a call runs at most before taskd logs what it
// waits on: far longer than any call takes.
const stuckCall = 30 * time.Second

// stuckAfter is when a call's report is due: stuckCall, or half of what is
// left of the host's deadline, so that the report is on the console before
// the host gives up and logs the console's end.
func stuckAfter(ctx context.Context) time.Duration {
	after := stuckCall
	if dl, ok := ctx.Deadline(); ok {
		after = min(after, time.Until(dl)/2)
	}
	return max(after, time.Second)
}

// serviceStack chooses the goroutines a stuck call's report shows: those
// in the guest's own packages or running the OCI runtime.
func serviceStack(stack string) bool {
	return strings.Contains(stack, "qemu-shim/guest/") || strings.Contains(stack, "go-runc")
}

// protobufPackages are the packages of the messages taskd decodes and
// encodes (see codecs).
var protobufPackages = []string{"containerd.", "ttrpc.", "google.protobuf.", "qemushim."}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func run(ctx context.Context, socket, root string, runtimes map[string]string, defaultRuntime string) error {
	// Orphans of containers come here, not to the agent: runc's and the
	// containers' exits go to reaper.Default's subscribers.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("become subreaper: %w", err)
	}
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, unix.SIGCHLD)
	go func() {
		for range sigs {
			reaper.Reap()
		}
	}()
	// A VM restored from a template sends SIGUSR1 (see task.Service.Warm).
	warm := make(chan os.Signal, 1)
	signal.Notify(warm, unix.SIGUSR1)
	// The runtime's first start pages it in from the tools disk (runc's
	// 10 MB, crun's 1.7 MB): do that now, while the host is still
	// attaching the container's disks.
	if bin, ok := runtimes[defaultRuntime]; ok {
		go exec.Command(bin, "--version").Run()
	}
	// Before the service answers, so before a template is saved.
	if err := task.PrepareCgroupParent("/sys/fs/cgroup"); err != nil {
		log.G(ctx).WithError(err).Warn("prepare the containers' cgroup")
	}
	os.Remove(socket)
	l, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	defer os.Remove(socket)
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	log.G(ctx).WithField("uptime", time.Duration(ts.Nano())).Debug("task service listening")
	demux := conn.NewDemux(l, conn.KindTask, nil)
	server, err := ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(func(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (interface{}, error) {
		// Wait answers when the process exits, however long that is.
		if !strings.HasSuffix(info.FullMethod, "/Wait") {
			defer stuck.Watch(ctx, info.FullMethod, stuckAfter(ctx), "/proc", serviceStack)()
		}
		resp, err := method(ctx, unmarshal)
		return resp, errgrpc.ToGRPC(err)
	}))
	if err != nil {
		return err
	}
	events := task.NewEventLog(task.DefaultEventRetention)
	netSvc := &network.Service{Path: network.NamespacePath}
	// Made now rather than by the first call or container that needs
	// them: at boot beside the host's work, and in a template before it is
	// saved (the agent's Prepare waits for the namespace, which comes
	// after the codecs).
	go func() {
		n := codecs.Protobuf(protobufPackages...)
		if err := codecs.JSON(&specs.Spec{}); err != nil {
			log.G(ctx).WithError(err).Warn("make the spec's codecs")
		}
		log.G(ctx).WithField("messages", n).Debug("codecs made")
		if _, err := netSvc.Namespace(); err != nil {
			log.G(ctx).WithError(err).Warn("make the containers' network namespace")
		}
	}()
	tasks := task.New(ctx, task.Config{
		Runtimes: runtimes, DefaultRuntime: defaultRuntime,
		Root: root, SysfsRoot: "/sys", Streams: demux, Events: events,
		NetworkNamespace: netSvc.Namespace,
		Share:            task.MountShare(task.ShareMountPoint),
	})
	go func() {
		for range warm {
			if err := tasks.Warm(ctx); err != nil {
				log.G(ctx).WithError(err).Warn("warm-up")
			}
		}
	}()
	taskAPI.RegisterTTRPCTaskService(server, tasks)
	volumeapi.RegisterVolumesService(server, tasks)
	networkapi.RegisterNetworkService(server, netSvc)
	eventsapi.RegisterEventsService(server, events)
	return server.Serve(ctx, demux.Listener())
}
