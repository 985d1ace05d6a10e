package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/qemu-shim/qemu-shim/internal/busybox"
)

// TestBindMounts: host directories and files given as bind mounts reach
// the container in its VM with runc's semantics: read and write rw, no
// write through ro, a single file onto a path, host changes seen by a
// later exec, twenty binds at once; and nothing is left afterwards. The
// runc shim runs the same checks.
func TestBindMounts(t *testing.T) {
	ctx := requireEnv(t)
	for _, runtime := range []string{runtimeName, "io.containerd.runc.v2"} {
		t.Run(runtime, func(t *testing.T) {
			host := t.TempDir()
			data := filepath.Join(host, "data")
			os.Mkdir(data, 0o755)
			os.WriteFile(filepath.Join(data, "hello"), []byte("from the host\n"), 0o644)
			conf := filepath.Join(host, "conf")
			os.Mkdir(conf, 0o755)
			os.WriteFile(filepath.Join(conf, "app.conf"), []byte("key=value\n"), 0o644)
			os.WriteFile(filepath.Join(conf, "secret"), []byte("not given\n"), 0o600)
			mounts := []specs.Mount{
				{Destination: "/data", Type: "bind", Source: data, Options: []string{"rbind", "rw"}},
				{Destination: "/data-ro", Type: "bind", Source: data, Options: []string{"rbind", "ro"}},
				{Destination: "/etc/app.conf", Type: "bind", Source: filepath.Join(conf, "app.conf"), Options: []string{"rbind", "ro"}},
			}
			for i := 0; i < 20; i++ {
				d := filepath.Join(host, fmt.Sprintf("many%02d", i))
				os.Mkdir(d, 0o755)
				os.WriteFile(filepath.Join(d, "n"), []byte(fmt.Sprint(i)), 0o644)
				mounts = append(mounts, specs.Mount{Destination: fmt.Sprintf("/many/%02d", i), Type: "bind", Source: d, Options: []string{"rbind", "ro"}})
			}
			id := "binds-" + short(runtime)
			c, err := newContainerOn(ctx, t, runtime, id, nil, false, oci.WithMounts(mounts), oci.WithProcessArgs("sleep", "1000"))
			if err != nil {
				t.Fatal(err)
			}
			if err := c.task.Start(ctx); err != nil {
				t.Fatal(err)
			}
			check := func(what, want string, args ...string) {
				t.Helper()
				if _, out := c.exec(ctx, fmt.Sprintf("x%d", len(what)), args...); out != want {
					t.Errorf("%s: %q, want %q", what, out, want)
				}
			}
			check("read a host file", "from the host\n", "cat", "/data/hello")
			check("write one the host sees", "ok\n", "sh", "-c", "echo from the container > /data/written && echo ok")
			if b, _ := os.ReadFile(filepath.Join(data, "written")); string(b) != "from the container\n" {
				t.Errorf("host sees %q", b)
			}
			check("no write through ro", "refused\n", "sh", "-c", "(echo x > /data-ro/nope) 2>/dev/null && echo written || echo refused")
			if _, err := os.Stat(filepath.Join(data, "nope")); err == nil {
				t.Error("a write through the read-only bind reached the host")
			}
			check("single file", "key=value\n", "cat", "/etc/app.conf")
			check("no sibling of a single file", "absent\n", "sh", "-c", "ls /etc/secret >/dev/null 2>&1 && echo present || echo absent")
			check("twenty binds", "0 19\n", "sh", "-c", "echo $(cat /many/00/n) $(cat /many/19/n)")

			// The host replaces a file by a rename and adds one: a later
			// exec sees both.
			tmp := filepath.Join(data, ".hello.tmp")
			os.WriteFile(tmp, []byte("replaced\n"), 0o644)
			if err := os.Rename(tmp, filepath.Join(data, "hello")); err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(data, "new"), []byte("new file\n"), 0o644)
			check("host changes", "replaced\nnew file\n", "cat", "/data/hello", "/data/new")

			c.task.Kill(ctx, syscall.SIGKILL)
			c.finish(ctx)
		})
	}
	// Through ctr: a read-only bind.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("via ctr\n"), 0o644)
	out, err := ctrCommand(ctx, "run", "--rm", "--runtime", runtimeName, "--mount", "type=bind,src="+dir+",dst=/mnt,options=rbind:ro",
		busybox.DefaultRef, "binds-ctr", "cat", "/mnt/f").Output()
	if err != nil || string(out) != "via ctr\n" {
		t.Errorf("ctr run --mount: %q %v", out, err)
	}
	if b, err := exec.Command("pgrep", "-af", "virtiofsd.*"+env.run).Output(); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		t.Errorf("virtiofsd left: %s", b)
	}
	if left := leftovers(); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}
