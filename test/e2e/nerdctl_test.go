package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qemu-shim/qemu-shim/internal/busybox"
	"github.com/qemu-shim/qemu-shim/test/ctrd"
)

// nerdctl runs nerdctl (built by ../shared/tools/build-clients.sh into
// build/clients) against the private containerd, with its own data root
// and CNI configuration, and the default bridge network on a subnet of
// the test's own.
type nerdctl struct {
	bin, dataRoot, netconf string
}

const (
	nerdctlBridgeIP = "10.213.9.1"
	nerdctlBridge   = "nerdctl0"
)

func newNerdctl(t *testing.T) *nerdctl {
	t.Helper()
	bin := filepath.Join(ctrd.RepoDir(), "build", "clients", "nerdctl")
	if _, err := os.Stat(bin); err != nil {
		if _, serr := os.Stat(filepath.Join(ctrd.RepoDir(), "..", "shared", "tools", "build-clients.sh")); serr != nil {
			t.Skipf("skipping: no nerdctl (%v), and no ../shared/tools/build-clients.sh to build it", err)
		}
		t.Fatalf("nerdctl is missing (%v): run 'make clients'", err)
	}
	if _, err := os.Stat(filepath.Join(cniPluginDir, "bridge")); err != nil {
		t.Skipf("skipping: no CNI plugins in %s", cniPluginDir)
	}
	// nerdctl's default bridge outlives its data root (this run's): one a
	// former run left with the test's address would overlap.
	dropBridge := func() {
		if out, err := exec.Command("ip", "-4", "-o", "addr", "show", "dev", nerdctlBridge).Output(); err == nil && strings.Contains(string(out), nerdctlBridgeIP+"/") {
			exec.Command("ip", "link", "del", nerdctlBridge).Run()
		}
	}
	dropBridge()
	t.Cleanup(dropBridge)
	return &nerdctl{bin: bin, dataRoot: filepath.Join(env.work, "nerdctl"), netconf: filepath.Join(env.work, "cni-net.d")}
}

func (n *nerdctl) cmd(ctx context.Context, args ...string) *exec.Cmd {
	all := append([]string{"--address", env.Socket, "--namespace", ctrd.Namespace, "--data-root", n.dataRoot,
		"--cni-path", cniPluginDir, "--cni-netconfpath", n.netconf, "--bridge-ip", nerdctlBridgeIP + "/24"}, args...)
	return exec.CommandContext(ctx, n.bin, all...)
}

// run runs nerdctl and returns its standard output; it fails the test with
// both outputs when nerdctl fails.
func (n *nerdctl) run(ctx context.Context, t *testing.T, args ...string) string {
	t.Helper()
	var stderr bytes.Buffer
	c := n.cmd(ctx, args...)
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		t.Fatalf("nerdctl %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// TestNerdctlDefaultNetwork: nerdctl's default bridge network reaches the
// container in its VM, as with runc: CNI's address on eth0, the gateway,
// a host listener, a published port; exec, logs, stop and rm work; and
// nothing is left afterwards.
func TestNerdctlDefaultNetwork(t *testing.T) {
	ctx := requireEnv(t)
	n := newNerdctl(t)
	for _, runtime := range []string{runtimeName, "io.containerd.runc.v2"} {
		t.Run(runtime, func(t *testing.T) {
			// The bridge exists once a container has joined it; a first
			// run brings it up and shows the address.
			out := n.run(ctx, t, "run", "--rm", "--runtime", runtime, busybox.DefaultRef,
				"sh", "-c", "ip -4 -o addr show eth0 | awk '{print $4}'; ping -c 1 -W 5 "+nerdctlBridgeIP+" >/dev/null && echo ping-ok")
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 2 || !strings.HasPrefix(lines[0], "10.213.9.") || !strings.HasSuffix(lines[0], "/24") || lines[1] != "ping-ok" {
				t.Fatalf("address and ping: %q", out)
			}

			hl, err := net.Listen("tcp", nerdctlBridgeIP+":0")
			if err != nil {
				t.Fatalf("listen on the bridge: %v", err)
			}
			defer hl.Close()
			go http.Serve(hl, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello from the host") }))
			out = n.run(ctx, t, "run", "--rm", "--runtime", runtime, busybox.DefaultRef,
				"sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 "+strings.Replace(hl.Addr().String(), ":", " ", 1)+" | tail -n 1")
			if out != "hello from the host" {
				t.Errorf("host listener from the container: %q", out)
			}

			// A published port: an httpd in the container answers on the
			// host's loopback.
			port := freePort(t)
			name := "web-" + short(runtime)
			n.run(ctx, t, "run", "-d", "--name", name, "--runtime", runtime, "-p", fmt.Sprintf("127.0.0.1:%d:80", port), busybox.DefaultRef,
				"sh", "-c", "mkdir -p /www && echo served-from-the-container > /www/index.html && echo up && exec httpd -f -p 80 -h /www")
			defer n.cmd(context.WithoutCancel(ctx), "rm", "-f", name).Run()
			body, err := httpGet(ctx, fmt.Sprintf("http://127.0.0.1:%d/", port))
			if err != nil || body != "served-from-the-container\n" {
				t.Errorf("published port: %q %v", body, err)
			}
			if out := n.run(ctx, t, "exec", name, "cat", "/www/index.html"); out != "served-from-the-container\n" {
				t.Errorf("exec: %q", out)
			}
			if out := n.run(ctx, t, "logs", name); out != "up\n" {
				t.Errorf("logs: %q", out)
			}
			n.run(ctx, t, "stop", "-t", "2", name)
			n.run(ctx, t, "rm", name)

			// -v: a host directory, read and written, and a read-only one.
			vol := t.TempDir()
			os.WriteFile(filepath.Join(vol, "in"), []byte("from the host\n"), 0o644)
			out = n.run(ctx, t, "run", "--rm", "--runtime", runtime, "-v", vol+":/vol", "-v", vol+":/vol-ro:ro", busybox.DefaultRef,
				"sh", "-c", "cat /vol/in; echo from the container > /vol/out; (echo x > /vol-ro/nope) 2>/dev/null || echo ro-refused")
			if out != "from the host\nro-refused\n" {
				t.Errorf("-v: %q", out)
			}
			if b, _ := os.ReadFile(filepath.Join(vol, "out")); string(b) != "from the container\n" {
				t.Errorf("-v: the host sees %q", b)
			}
		})
	}
	// Nothing of either run is left: no container, netns, tap, shim, QEMU.
	if out := n.run(ctx, t, "ps", "-a", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("containers left: %q", out)
	}
	// (The network namespace the shim makes for nerdctl's hooks is a file
	// in the bundle, which containerd removes; a mount of it left behind
	// is one of TestZZNothingLeftBehind's leftovers. /var/run/netns is not
	// looked at: containerd 1.6's CRI, tested at the same time in
	// test/compat, keeps its pods' namespaces there.)
	// CNI DEL ran (nerdctl's poststop hook): no port mapping to this
	// network is left. (Other test packages' pods, on other subnets, may
	// have theirs while this runs.)
	if out, err := exec.Command("iptables", "-t", "nat", "-S").Output(); err == nil {
		ours := "--to-destination " + strings.TrimSuffix(nerdctlBridgeIP, "1")
		for _, rule := range strings.Split(string(out), "\n") {
			if strings.Contains(rule, "CNI-DN-") && strings.Contains(rule, ours) {
				t.Errorf("port mapping rule left: %s", rule)
			}
		}
	}
	if left := leftovers(); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// httpGet fetches url, retrying while the server is not up yet (a
// container's server starts after nerdctl run -d returns).
func httpGet(ctx context.Context, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var lastErr error
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == http.StatusOK {
				return string(b), nil
			}
			err = fmt.Errorf("status %s, body %q, %v", resp.Status, b, rerr)
		}
		lastErr = err
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	return "", lastErr
}
