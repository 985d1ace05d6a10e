package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/pkg/oci"
	gocni "github.com/containerd/go-cni"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/qemu-shim/qemu-shim/internal/busybox"
)

// cniPluginDir is where Debian's containernetworking-plugins installs.
const cniPluginDir = "/usr/lib/cni"

// cniNetwork is a bridge network of the test's own: its bridge, subnet
// and namespaces exist only for the test, and no traffic leaves them.
type cniNetwork struct {
	cni     gocni.CNI
	gateway string
}

func newCNINetwork(t *testing.T, bridge, subnet, gateway string) *cniNetwork {
	t.Helper()
	if _, err := os.Stat(filepath.Join(cniPluginDir, "bridge")); err != nil {
		t.Skipf("skipping: no CNI bridge plugin in %s (make deps installs containernetworking-plugins)", cniPluginDir)
	}
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [
	  {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false,
	   "ipam": {"type": "host-local", "ranges": [[{"subnet": %q, "gateway": %q}]], "routes": [{"dst": "0.0.0.0/0"}],
	            "dataDir": %q}}]}`, bridge, bridge, subnet, gateway, filepath.Join(env.work, "cni-ipam"))
	c, err := gocni.New(gocni.WithPluginDir([]string{cniPluginDir}), gocni.WithConfListBytes([]byte(conf)), gocni.WithLoNetwork)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("ip", "link", "del", bridge).Run() })
	return &cniNetwork{cni: c, gateway: gateway}
}

// podNetns makes a network namespace and has CNI configure it, as
// containerd's CRI plugin does for a pod. It returns the path and the
// address CNI gave eth0.
func (n *cniNetwork) podNetns(ctx context.Context, t *testing.T, name string) (string, string) {
	t.Helper()
	name = name + "-" + filepath.Base(env.run)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	path := "/var/run/netns/" + name
	result, err := n.cni.Setup(ctx, name, path)
	if err != nil {
		exec.Command("ip", "netns", "del", name).Run()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.cni.Remove(context.WithoutCancel(ctx), name, path)
		exec.Command("ip", "netns", "del", name).Run()
	})
	cfg := result.Interfaces["eth0"]
	if cfg == nil || len(cfg.IPConfigs) == 0 {
		t.Fatalf("CNI gave eth0 no address: %+v", result)
	}
	return path, cfg.IPConfigs[0].IP.String()
}

// TestContainerJoinsCNINetwork: a container given a network namespace CNI
// configured has CNI's address on eth0, reaches the gateway and a host
// listener, and two containers of one VM reach each other over localhost.
// The runc shim runs the same checks.
func TestContainerJoinsCNINetwork(t *testing.T) {
	ctx := requireEnv(t)
	n := newCNINetwork(t, "qs-e2e0", "10.213.7.0/24", "10.213.7.1")
	for _, runtime := range []string{runtimeName, "io.containerd.runc.v2"} {
		t.Run(runtime, func(t *testing.T) {
			tag := "n" + short(runtime)
			path, ip := n.podNetns(ctx, t, "qs-"+tag)
			// A host listener on the bridge's address (there once CNI has
			// set the bridge up): only the test's namespaces reach it.
			hl, err := net.Listen("tcp", n.gateway+":0")
			if err != nil {
				t.Fatalf("listen on the bridge: %v", err)
			}
			defer hl.Close()
			go http.Serve(hl, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello from the host") }))
			script := strings.Join([]string{
				"ip -4 -o addr show eth0 | awk '{print $4}'",
				"ping -c 1 -W 5 " + n.gateway + " >/dev/null && echo ping-ok",
				// (busybox's wget crashes in a static build: nc speaks HTTP here.)
				"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 " + strings.Replace(hl.Addr().String(), ":", " ", 1) + " | tail -n 1; echo",
			}, "; ")
			withNS := oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: path})
			c, err := newContainerOn(ctx, t, runtime, tag+"-check", nil, false, withNS, oci.WithProcessArgs("sh", "-c", script))
			if err != nil {
				t.Fatal(err)
			}
			if err := c.task.Start(ctx); err != nil {
				t.Fatal(err)
			}
			status, out := c.finish(ctx)
			want := ip + "/24\nping-ok\nhello from the host\n"
			if status != 0 || out != want {
				t.Errorf("exit %d, output %q, want %q", status, out, want)
			}
			// The same through ctr's --with-ns.
			ctrOut, err := ctrCommand(ctx, "run", "--rm", "--runtime", runtime, "--with-ns", "network:"+path, busybox.DefaultRef, tag+"-ctr", "sh", "-c", script).Output()
			if err != nil || string(ctrOut) != want {
				t.Errorf("ctr run --with-ns: %v: %q, want %q", err, ctrOut, want)
			}

			// Two containers of one pod in the same namespace (for ours,
			// in one VM): localhost reaches the other. (The runc shim
			// leaves a grouped shim's socket behind: it gets no group.)
			group := oci.WithAnnotations(nil)
			if runtime == runtimeName {
				group = oci.WithAnnotations(map[string]string{"io.kubernetes.cri.sandbox-id": tag + "-pod"})
			}
			server, err := newContainerOn(ctx, t, runtime, tag+"-server", nil, false, withNS, group,
				oci.WithProcessArgs("sh", "-c", "echo pod-local | nc -l -p 8080"))
			if err != nil {
				t.Fatal(err)
			}
			if err := server.task.Start(ctx); err != nil {
				t.Fatal(err)
			}
			client, err := newContainerOn(ctx, t, runtime, tag+"-client", nil, false, withNS, group,
				oci.WithProcessArgs("sh", "-c", "for i in $(seq 100); do nc 127.0.0.1 8080 </dev/null && exit 0; usleep 100000; done; exit 1"))
			if err != nil {
				t.Fatal(err)
			}
			if err := client.task.Start(ctx); err != nil {
				t.Fatal(err)
			}
			if status, out := client.finish(ctx); status != 0 || out != "pod-local\n" {
				t.Errorf("client over localhost: exit %d, output %q", status, out)
			}
			server.finish(ctx)
		})
	}
	if left := leftovers(); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}
