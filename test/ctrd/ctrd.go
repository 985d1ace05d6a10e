// Package ctrd starts a private containerd (own root, state and socket)
// that runs containers with the qemu-shim built in this checkout, for the
// end-to-end tests and the benchmarks.
package ctrd

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/qemu-shim/qemu-shim/internal/busybox"
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
}

// RepoDir is the checkout's top directory.
func RepoDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Start starts containerd with the checkout's shim, guest image and a fresh
// busybox image imported. Close stops it and removes its directories.
func Start(ctx context.Context) (_ *Daemon, retErr error) {
	d := &Daemon{Repo: RepoDir()}
	for what, p := range map[string]string{
		"containerd": d.bin("build/containerd-bin/containerd"),
		"the shim":   d.bin("bin/containerd-shim-qemu-v1"),
		"the guest":  d.bin("build/guest/vmlinux"),
	} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("%s is missing (%v): run 'make binaries guest containerd'", what, err)
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
	guest := d.bin("build/guest")
	shimConfig := filepath.Join(d.Work, "qemu-shim.toml")
	if err := os.WriteFile(shimConfig, []byte(fmt.Sprintf(`[vm]
kernel = %q
initrd = %q
tools = %q
state_root = %q
[rootfs]
layer_cache = %q
upper_size_mib = 256
`, guest+"/vmlinux", guest+"/initramfs.cpio", guest+"/tools.erofs", d.VMStateRoot(), d.LayerCache())), 0o644); err != nil {
		return nil, err
	}
	config := filepath.Join(d.Work, "containerd.toml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`version = 3
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.nri.v1.nri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(d.Work, "root"), filepath.Join(d.Run, "state"), d.Socket, d.Socket+".ttrpc")), 0o644); err != nil {
		return nil, err
	}
	d.log = filepath.Join(d.Work, "containerd.log")
	logFile, err := os.Create(d.log)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	d.cmd = exec.Command(d.bin("build/containerd-bin/containerd"), "--config", config)
	// runc (the baseline runtime) and the shims come from the checkout.
	d.cmd.Env = append(os.Environ(),
		"PATH="+d.bin("bin")+":"+d.bin("build/containerd-bin")+":"+d.bin("build")+":"+os.Getenv("PATH"),
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
	return d, nil
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

// LayerCache is the shim's cache of converted layers.
func (d *Daemon) LayerCache() string { return filepath.Join(d.Work, "layers") }

func (d *Daemon) bin(rel string) string { return filepath.Join(d.Repo, rel) }

// VMStateRoot is where the shim keeps its VMs' state directories.
func (d *Daemon) VMStateRoot() string { return filepath.Join(d.Run, "vms") }

// Ctr returns a ctr command against this containerd.
func (d *Daemon) Ctr(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, d.bin("build/containerd-bin/ctr"), append([]string{"--address", d.Socket, "-n", Namespace}, args...)...)
}

// LogTail returns the end of containerd's log.
func (d *Daemon) LogTail(n int) string {
	b, _ := os.ReadFile(d.log)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
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
	if d.Run != "" {
		os.RemoveAll(d.Run)
	}
	if d.Work != "" {
		os.RemoveAll(d.Work)
	}
}
