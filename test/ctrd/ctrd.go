// Package ctrd starts a private containerd (own root, state and socket)
// that runs containers with the qemu-shim built in this checkout, for the
// end-to-end tests and the benchmarks.
package ctrd

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/qemu-shim/qemu-shim/internal/busybox"
	"github.com/qemu-shim/qemu-shim/internal/mountutil"
	"github.com/qemu-shim/qemu-shim/test/guestimage"
)

// Runtime is qemu-shim's runtime name.
const Runtime = "io.containerd.qemu.v1"

// Namespace is the containerd namespace the helpers use.
const Namespace = "qemu-shim-test"

// Daemon is a running private containerd.
type Daemon struct {
	Repo, Work, Run, Socket string
	Client                  *containerd.Client
	Image                   containerd.Image
	cmd                     *exec.Cmd
	log                     string
	cri                     bool
	binDir                  string
	// Bridge and Subnet are the CRI network's (with Options.CRI).
	Bridge, Subnet string
}

// RepoDir is the checkout's top directory.
func RepoDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Options choose what the private containerd serves.
type Options struct {
	// CRI enables containerd's CRI plugin with runtime handlers "runc" and
	// "qemu" (this shim), a bridge CNI network of the daemon's own, and a
	// pause image built from test/pause; images go to CRINamespace too.
	// With ConfigVersion 2 it is containerd 1.x's CRI configuration
	// (containerd 1.6), on bridge CRI16Bridge, so that it can run beside
	// a containerd 2.x's on CRIBridge.
	CRI bool
	// BinDir, relative to the checkout, holds the containerd and ctr to
	// run: by default build/containerd-bin (containerd 2.4, 'make
	// containerd'); Containerd16Dir for Debian 12's containerd 1.6.
	BinDir string
	// ConfigVersion is the version of containerd's configuration file: 3
	// (containerd 2.x) by default, 2 for containerd 1.x.
	ConfigVersion int
	// ErofsDefaultSize, for containerd 2.x, sets the erofs snapshotter's
	// default_size ("64M"): its block mode, where a container's writable
	// layer is an ext4 image (mkfs/ext4) instead of a directory. The
	// snapshotter (io.containerd.snapshotter.v1.erofs, built into
	// containerd 2.4: it needs erofs in the kernel and mkfs.erofs) is
	// loaded either way; overlayfs stays the default snapshotter.
	ErofsDefaultSize string
	// ColdBoot turns VM templates off: every VM boots its kernel. By
	// default the shim restores VMs from templates kept in TemplateDir
	// (built by the daemon's first VM).
	ColdBoot bool
	// Debug logs containerd's and the shim's debug lines (and the guest's,
	// through the shim's vm.debug) into the daemon's log (see LogTail).
	Debug bool
	// OCIRuntime is the shim's vm.oci_runtime: by default
	// $QEMU_SHIM_TEST_OCI_RUNTIME, else the shim's default. Running a
	// suite with each runtime checks that both pass it.
	OCIRuntime string
	// ExtraVMConfig is added to the shim's [vm] configuration table
	// ("key = value" lines), e.g. to compare VM settings.
	ExtraVMConfig string
}

// EnvOCIRuntime names the environment variable that chooses the guest's
// OCI runtime for the tests (see Options.OCIRuntime).
const EnvOCIRuntime = "QEMU_SHIM_TEST_OCI_RUNTIME"

// Containerd16Dir holds Debian 12's containerd 1.6 and its ctr, unpacked
// by 'make containerd16'.
const Containerd16Dir = "build/containerd-1.6/usr/bin"

// CRI's namespace, its sandbox image, the busybox name critest's specs
// use, and the daemon's CNI bridge network.
const (
	CRINamespace   = "k8s.io"
	PauseRef       = "qemu-shim.dev/pause:latest"
	CritestBusybox = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
	CRIBridge      = "qs-cri0"
	CRISubnet      = "10.213.11.0/24"
	CRI16Bridge    = "qs-cri16"
	CRI16Subnet    = "10.213.16.0/24"
)

// Start starts containerd with the checkout's shim, guest image and a fresh
// busybox image imported. Close stops it and removes its directories.
func Start(ctx context.Context) (*Daemon, error) { return StartWith(ctx, Options{}) }

// StartWith starts containerd as Start does, with the given options.
func StartWith(ctx context.Context, o Options) (_ *Daemon, retErr error) {
	if o.BinDir == "" {
		o.BinDir = "build/containerd-bin"
	}
	if o.ConfigVersion == 0 {
		o.ConfigVersion = 3
	}
	if o.OCIRuntime == "" {
		o.OCIRuntime = os.Getenv(EnvOCIRuntime)
	}
	if o.CRI && o.ConfigVersion != 3 && o.ConfigVersion != 2 {
		return nil, fmt.Errorf("CRI is configured for configuration versions 2 (containerd 1.6) and 3 (containerd 2.x) only")
	}
	d := &Daemon{Repo: RepoDir(), cri: o.CRI, binDir: o.BinDir}
	if o.CRI {
		d.Bridge, d.Subnet = CRIBridge, CRISubnet
		if o.ConfigVersion == 2 {
			d.Bridge, d.Subnet = CRI16Bridge, CRI16Subnet
		}
	}
	for what, p := range map[string]string{
		"containerd": d.bin(o.BinDir + "/containerd"),
		"the shim":   d.bin("bin/containerd-shim-qemu-v1"),
		"the guest":  filepath.Join(guestimage.Dir(), "vmlinux"),
	} {
		if _, err := os.Stat(p); err != nil {
			target := "containerd"
			if o.BinDir == Containerd16Dir {
				target = "containerd16"
			}
			return nil, fmt.Errorf("%s is missing (%v): run 'make binaries guest %s'", what, err, target)
		}
	}
	var err error
	if d.Work, err = os.MkdirTemp("", "qemu-shim-ctrd-"); err != nil {
		return nil, err
	}
	d.Run = filepath.Join("/run", filepath.Base(d.Work))
	defer func() {
		if retErr != nil {
			d.Close()
		}
	}()
	if err := os.MkdirAll(d.Run, 0o700); err != nil {
		return nil, err
	}
	d.Socket = filepath.Join(d.Run, "containerd.sock")
	guest := guestimage.Dir() // build/guest unless $QEMU_SHIM_GUEST_DIR says otherwise
	shimConfig := d.ShimConfig()
	vmExtra := ""
	if o.OCIRuntime != "" {
		vmExtra = fmt.Sprintf("oci_runtime = %q\n", o.OCIRuntime)
	}
	if err := os.WriteFile(shimConfig, []byte(fmt.Sprintf(`[vm]
%skernel = %q
initrd = %q
tools = %q
state_root = %q
debug = %v
%s
[rootfs]
layer_cache = %q
upper_size_mib = 256
[operator]
disk_roots = [%q]
[template]
enabled = %t
dir = %q
`, vmExtra, guest+"/vmlinux", guest+"/initramfs.cpio", guest+"/tools.erofs", d.VMStateRoot(), o.Debug, o.ExtraVMConfig, d.LayerCache(), d.DiskRoot(), !o.ColdBoot, d.TemplateDir())), 0o644); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(d.DiskRoot(), 0o700); err != nil {
		return nil, err
	}
	config := filepath.Join(d.Work, "containerd.toml")
	toml := fmt.Sprintf(`version = %d
root = %q
state = %q
[grpc]
  address = %q
[ttrpc]
  address = %q
`, o.ConfigVersion, filepath.Join(d.Work, "root"), filepath.Join(d.Run, "state"), d.Socket, d.Socket+".ttrpc")
	if o.ConfigVersion < 3 {
		// containerd 1.x: its managed /opt in the work directory, not
		// the host's, and CRI only if asked for.
		toml += fmt.Sprintf(`[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(d.Work, "opt"))
		if o.CRI {
			cri, err := d.cri16Config(shimConfig)
			if err != nil {
				return nil, err
			}
			toml += cri
		} else {
			toml = `disabled_plugins = ["io.containerd.grpc.v1.cri"]
` + toml
		}
	} else if o.CRI {
		cri, err := d.criConfig(shimConfig)
		if err != nil {
			return nil, err
		}
		toml += cri
	} else {
		toml = `disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.nri.v1.nri"]
` + toml
	}
	if o.ErofsDefaultSize != "" {
		if o.ConfigVersion < 3 {
			return nil, fmt.Errorf("the erofs snapshotter is configured for containerd 2.x only")
		}
		toml += fmt.Sprintf(`[plugins.'io.containerd.snapshotter.v1.erofs']
  default_size = %q
`, o.ErofsDefaultSize)
	}
	if o.Debug {
		toml += "[debug]\n  level = \"debug\"\n"
	}
	if err := os.WriteFile(config, []byte(toml), 0o644); err != nil {
		return nil, err
	}
	d.log = filepath.Join(d.Work, "containerd.log")
	logFile, err := os.Create(d.log)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	d.cmd = exec.Command(d.bin(o.BinDir+"/containerd"), "--config", config)
	// runc (the baseline runtime) and the shims come from the checkout.
	d.cmd.Env = append(os.Environ(),
		"PATH="+d.bin("bin")+":"+d.bin(o.BinDir)+":"+d.bin("build")+":"+os.Getenv("PATH"),
		"QEMU_SHIM_CONFIG="+shimConfig)
	d.cmd.Stdout, d.cmd.Stderr = logFile, logFile
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	for {
		if d.Client, err = containerd.New(d.Socket, containerd.WithTimeout(time.Second)); err == nil {
			if ok, _ := d.Client.IsServing(ctx); ok {
				break
			}
			d.Client.Close()
			d.Client = nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("containerd did not come up: %s", d.LogTail(4000))
		case <-time.After(50 * time.Millisecond):
		}
	}
	if d.Image, err = d.ImportBusybox(ctx, busybox.DefaultRef, 0); err != nil {
		return nil, err
	}
	if o.CRI {
		if err := d.importCRIImages(ctx); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// writeCNI writes the daemon's bridge CNI network and returns its
// configuration directory.
func (d *Daemon) writeCNI() (string, error) {
	netDir := filepath.Join(d.Work, "cni-net.d")
	if err := os.MkdirAll(netDir, 0o755); err != nil {
		return "", err
	}
	conflist := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "qemu-shim-cri", "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": %q}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}`, d.Bridge, d.Subnet, filepath.Join(d.Work, "cni-ipam"))
	if err := os.WriteFile(filepath.Join(netDir, "10-qemu-shim.conflist"), []byte(conflist), 0o644); err != nil {
		return "", err
	}
	return netDir, nil
}

// criConfig writes the CNI network and returns the CRI plugins' part of
// containerd 2.x's configuration.
func (d *Daemon) criConfig(shimConfig string) (string, error) {
	netDir, err := d.writeCNI()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf(`[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
[plugins.'io.containerd.cri.v1.images']
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %q
[plugins.'io.containerd.cri.v1.runtime']
  # Root here lacks CAP_SYS_RESOURCE.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['/usr/lib/cni']
    conf_dir = %q
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.qemu]
      runtime_type = %q
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.qemu.options]
        ConfigPath = %q
`, PauseRef, netDir, Runtime, shimConfig), nil
}

// cri16Config writes the CNI network and returns the CRI plugin's part of
// containerd 1.6's configuration (version 2: one plugin,
// io.containerd.grpc.v1.cri). runc, as for 2.x, is the checkout's
// build/runc, found on PATH by 1.6's containerd-shim-runc-v2. 1.6 has no
// netns_mounts_under_state_dir: pods' network namespaces are mounted under
// /var/run/netns, as on any 1.6 node.
func (d *Daemon) cri16Config(shimConfig string) (string, error) {
	netDir, err := d.writeCNI()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf(`[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Root here lacks CAP_SYS_RESOURCE.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %q
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.qemu]
      runtime_type = %q
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.qemu.options]
        ConfigPath = %q
`, PauseRef, netDir, Runtime, shimConfig), nil
}

// importCRIImages puts the pause image and busybox (under its own name and
// critest's) into CRI's namespace.
func (d *Daemon) importCRIImages(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "qemu-shim-pause-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", filepath.Join(dir, "pause"), "./test/pause")
	build.Dir = d.Repo
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build the pause binary: %v: %s", err, out)
	}
	var pause bytes.Buffer
	if err := busybox.WriteDirArchive(&pause, PauseRef, dir, busybox.ImageConfig{Entrypoint: []string{"/pause"}}); err != nil {
		return err
	}
	nctx := namespaces.WithNamespace(ctx, CRINamespace)
	archives := []struct {
		ref string
		tar *bytes.Buffer
	}{{PauseRef, &pause}}
	for _, ref := range []string{busybox.DefaultRef, CritestBusybox} {
		var b bytes.Buffer
		if err := busybox.WriteDockerArchive(&b, ref); err != nil {
			return err
		}
		archives = append(archives, struct {
			ref string
			tar *bytes.Buffer
		}{ref, &b})
	}
	for _, a := range archives {
		imgs, err := d.Client.Import(nctx, a.tar)
		if err != nil {
			return fmt.Errorf("import %s: %w", a.ref, err)
		}
		if err := containerd.NewImage(d.Client, imgs[0]).Unpack(nctx, ""); err != nil {
			return fmt.Errorf("unpack %s: %w", a.ref, err)
		}
	}
	return nil
}

// ImportBusybox imports busybox with extra one-file layers on top (see
// busybox.WriteLayeredArchive) as ref, unpacked for the default
// snapshotter.
func (d *Daemon) ImportBusybox(ctx context.Context, ref string, extraLayers int) (containerd.Image, error) {
	var archive bytes.Buffer
	if err := busybox.WriteLayeredArchive(&archive, ref, extraLayers); err != nil {
		return nil, err
	}
	nctx := namespaces.WithNamespace(ctx, Namespace)
	imgs, err := d.Client.Import(nctx, &archive)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", ref, err)
	}
	img := containerd.NewImage(d.Client, imgs[0])
	if err := img.Unpack(nctx, ""); err != nil {
		return nil, fmt.Errorf("unpack %s: %w", ref, err)
	}
	return img, nil
}

// ShimConfig is the shim's configuration file.
func (d *Daemon) ShimConfig() string { return filepath.Join(d.Work, "qemu-shim.toml") }

// LayerCache is the shim's cache of converted layers.
func (d *Daemon) LayerCache() string { return filepath.Join(d.Work, "layers") }

// TemplateDir is the shim's template.dir: the saved guests its VMs are
// restored from.
func (d *Daemon) TemplateDir() string { return filepath.Join(d.Work, "templates") }

// DiskRoot is the shim's operator.disk_roots: the images 'qemu-shim disk
// attach' may attach.
func (d *Daemon) DiskRoot() string { return filepath.Join(d.Work, "disks") }

func (d *Daemon) bin(rel string) string { return filepath.Join(d.Repo, rel) }

// VMStateRoot is where the shim keeps its VMs' state directories.
func (d *Daemon) VMStateRoot() string { return filepath.Join(d.Run, "vms") }

// Ctr returns a ctr command against this containerd.
func (d *Daemon) Ctr(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, d.bin(d.binDir+"/ctr"), append([]string{"--address", d.Socket, "-n", Namespace}, args...)...)
}

// LogTail returns the end of containerd's log.
func (d *Daemon) LogTail(n int) string {
	b, _ := os.ReadFile(d.log)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// KeepLog copies containerd's whole log (the shims' lines with it) to
// name in the temporary directory, where it outlives the daemon's
// directories, and returns its path: a failure early in a long run is far
// from the log's end.
func (d *Daemon) KeepLog(name string) (string, error) {
	b, err := os.ReadFile(d.log)
	if err != nil {
		return "", err
	}
	kept := filepath.Join(os.TempDir(), name)
	return kept, os.WriteFile(kept, b, 0o644)
}

// ShimPattern matches the command lines of this containerd's shims (for
// pgrep and pkill).
func (d *Daemon) ShimPattern() string { return "containerd-shim.* -address " + d.Socket + "( |$)" }

// LeftShims waits up to wait for the shims of this containerd to exit and
// returns those still running (pid and command line); none once every
// task and pod is gone.
func (d *Daemon) LeftShims(wait time.Duration) []string {
	deadline := time.Now().Add(wait)
	for {
		out, _ := exec.Command("pgrep", "-af", d.ShimPattern()).Output()
		left := strings.TrimSpace(string(out))
		if left == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return strings.Split(left, "\n")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Close stops containerd and removes its directories.
func (d *Daemon) Close() {
	if d.Client != nil {
		d.Client.Close()
	}
	if d.cmd != nil && d.cmd.Process != nil {
		d.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { d.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			d.cmd.Process.Kill()
			<-done
		}
	}
	if d.cri {
		exec.Command("ip", "link", "del", d.Bridge).Run()
	}
	// (CRI mounts pods' network namespaces and shm below them.)
	if d.Run != "" {
		mountutil.RemoveAll(d.Run)
	}
	if d.Work != "" {
		mountutil.RemoveAll(d.Work)
	}
}

// shimSocketDir is where every containerd on the host has its shims
// listen.
const shimSocketDir = "/run/containerd/s"

// shimSocketGrace is how long a shim socket nobody listens on may stay: a
// shim that is exiting (of this run, or of a test package running beside
// it) stops listening just before it removes its socket.
const shimSocketGrace = 5 * time.Second

// LeakedShimSockets lists the shim sockets made since since that nobody
// listens on and that are still there once shimSocketGrace has passed.
func LeakedShimSockets(since time.Time) []string {
	var left []string
	if entries, err := os.ReadDir(shimSocketDir); err == nil {
		for _, e := range entries {
			if info, err := e.Info(); err == nil && info.ModTime().After(since) {
				left = append(left, filepath.Join(shimSocketDir, e.Name()))
			}
		}
	}
	deadline := time.Now().Add(shimSocketGrace)
	for {
		left = slices.DeleteFunc(left, listenedOrGone)
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(50 * time.Millisecond) // polls the shims' exits, up to the deadline
	}
}

// listenedOrGone says whether a shim listens on path, or path is gone.
func listenedOrGone(path string) bool {
	c, err := net.Dial("unix", path)
	if err == nil {
		c.Close()
		return true
	}
	_, err = os.Stat(path)
	return os.IsNotExist(err)
}
