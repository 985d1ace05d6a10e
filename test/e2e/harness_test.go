package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/qemu-shim/qemu-shim/internal/busybox"
)

const runtimeName = "io.containerd.qemu.v1"

// env is the private containerd every test shares.
var env struct {
	repo, work, run, socket string
	client                  *containerd.Client
	image                   containerd.Image
	skip                    string
}

func repoDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func TestMain(m *testing.M) {
	code, err := setup(m)
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e setup: %v\n", err)
		if os.Getenv("QEMU_SHIM_INTEGRATION") == "1" {
			os.Exit(1)
		}
		env.skip = err.Error()
		code = m.Run()
	}
	os.Exit(code)
}

func setup(m *testing.M) (int, error) {
	env.repo = repoDir()
	bins := map[string]string{
		"containerd": filepath.Join(env.repo, "build/containerd-bin/containerd"),
		"shim":       filepath.Join(env.repo, "bin/containerd-shim-qemu-v1"),
		"kernel":     filepath.Join(env.repo, "build/guest/vmlinux"),
	}
	for what, p := range bins {
		if _, err := os.Stat(p); err != nil {
			return 0, fmt.Errorf("%s missing (%v): run 'make binaries guest containerd'", what, err)
		}
	}
	work, err := os.MkdirTemp("", "qemu-shim-e2e-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(work)
	env.work = work
	env.run = filepath.Join("/run", filepath.Base(work))
	if err := os.MkdirAll(env.run, 0o700); err != nil {
		return 0, err
	}
	defer os.RemoveAll(env.run)
	env.socket = filepath.Join(env.run, "containerd.sock")
	shimConfig := filepath.Join(work, "qemu-shim.toml")
	guest := filepath.Join(env.repo, "build/guest")
	if err := os.WriteFile(shimConfig, []byte(fmt.Sprintf(`[vm]
kernel = %q
initrd = %q
tools = %q
state_root = %q
[rootfs]
layer_cache = %q
upper_size_mib = 256
`, guest+"/vmlinux", guest+"/initramfs.cpio", guest+"/tools.erofs", filepath.Join(env.run, "vms"), filepath.Join(work, "layers"))), 0o644); err != nil {
		return 0, err
	}
	ctrdConfig := filepath.Join(work, "containerd.toml")
	if err := os.WriteFile(ctrdConfig, []byte(fmt.Sprintf(`version = 3
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.nri.v1.nri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(work, "root"), filepath.Join(env.run, "state"), env.socket, env.socket+".ttrpc")), 0o644); err != nil {
		return 0, err
	}
	cmd := exec.Command(bins["containerd"], "--config", ctrdConfig)
	cmd.Env = append(os.Environ(),
		"PATH="+filepath.Join(env.repo, "bin")+":"+filepath.Join(env.repo, "build/containerd-bin")+":"+os.Getenv("PATH"),
		"QEMU_SHIM_CONFIG="+shimConfig)
	logFile, err := os.Create(filepath.Join(work, "containerd.log"))
	if err != nil {
		return 0, err
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		if env.client, err = containerd.New(env.socket, containerd.WithTimeout(time.Second)); err == nil {
			if ok, _ := env.client.IsServing(ctx); ok {
				break
			}
			env.client.Close()
		}
		select {
		case <-ctx.Done():
			b, _ := os.ReadFile(logFile.Name())
			return 0, fmt.Errorf("containerd did not come up: %s", b)
		case <-time.After(50 * time.Millisecond):
		}
	}
	defer env.client.Close()
	var archive bytes.Buffer
	if err := busybox.WriteDockerArchive(&archive, busybox.DefaultRef); err != nil {
		return 0, err
	}
	ictx := namespaces.WithNamespace(ctx, "e2e")
	imgs, err := env.client.Import(ictx, &archive)
	if err != nil {
		return 0, fmt.Errorf("import busybox: %w", err)
	}
	env.image = containerd.NewImage(env.client, imgs[0])
	if err := env.image.Unpack(ictx, ""); err != nil {
		return 0, fmt.Errorf("unpack busybox: %w", err)
	}
	code := m.Run()
	if code != 0 {
		b, _ := os.ReadFile(logFile.Name())
		if len(b) > 8000 {
			b = b[len(b)-8000:]
		}
		fmt.Fprintf(os.Stderr, "containerd log (end):\n%s\n", b)
	}
	return code, nil
}

func requireEnv(t *testing.T) context.Context {
	t.Helper()
	if env.skip != "" {
		t.Skipf("skipping: %s", env.skip)
	}
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "e2e"), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// ctrCommand runs the ctr binary against the private containerd.
func ctrCommand(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(env.repo, "build/containerd-bin/ctr"), append([]string{"--address", env.socket, "-n", "e2e"}, args...)...)
	return cmd
}

// leftovers lists what a deleted container must not leave: QEMU processes
// of this run, VM state directories, mounts of the run's directories.
func leftovers() []string {
	var out []string
	if b, err := exec.Command("pgrep", "-af", "qemu-system.*"+env.run).Output(); err == nil && len(bytes.TrimSpace(b)) > 0 {
		out = append(out, "processes: "+string(b))
	}
	if entries, err := os.ReadDir(filepath.Join(env.run, "vms")); err == nil {
		for _, e := range entries {
			if e.Name() != "vsock-cids" {
				out = append(out, "state directory: "+e.Name())
			}
		}
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, env.work) || strings.Contains(line, env.run+"/vms") {
				out = append(out, "mount: "+line)
			}
		}
	}
	return out
}
