package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	gocni "github.com/containerd/go-cni"

	"github.com/qemu-shim/qemu-shim/internal/busybox"
	"github.com/qemu-shim/qemu-shim/shim/bundle"
	"github.com/qemu-shim/qemu-shim/test/ctrd"
	"github.com/qemu-shim/qemu-shim/test/guestimage"
	"github.com/qemu-shim/qemu-shim/vm"
)

// runtimes are ours and the baseline, in the order each round runs them.
var runtimes = []string{ctrd.Runtime, "io.containerd.runc.v2"}

func short(runtime string) string {
	if runtime == ctrd.Runtime {
		return "qemu-shim"
	}
	return "runc shim"
}

// shareSection measures what a share of host files costs a VM: boot time
// and QEMU's RSS with the guest's memory shared and virtiofsd beside it.
func shareSection(work string, img guestimage.Image, runs int) error {
	var plain, shared, plainRSS, sharedRSS, vfsRSS []float64
	for i := 0; i < runs; i++ {
		for _, withShare := range []bool{false, true} {
			cfg := vm.Config{ID: fmt.Sprintf("share%d-%v", i, withShare), StateRoot: work, Kernel: img.Kernel, Initrd: img.Initrd, Tools: img.Tools}
			if withShare {
				cfg.Share = &vm.Share{}
			}
			inst, err := vm.New(cfg)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			start := time.Now()
			if err := inst.Start(ctx); err != nil {
				cancel()
				return err
			}
			took := time.Since(start).Seconds()
			// What the guest has touched once its services are up.
			inst.Info(ctx)
			rss := float64(rssKiB(inst.Pid())) / 1024
			if withShare {
				shared, sharedRSS = append(shared, took), append(sharedRSS, rss)
				vfsRSS = append(vfsRSS, float64(rssKiB(inst.ShareNamespacePid()))/1024)
			} else {
				plain, plainRSS = append(plain, took), append(plainRSS, rss)
			}
			inst.Shutdown(ctx)
			cancel()
		}
	}
	row("boot to agent, private memory (s)", plain)
	row("boot to agent, shared memory + virtiofsd (s)", shared)
	row("QEMU RSS, private memory (MiB)", plainRSS)
	row("QEMU RSS, shared memory (MiB)", sharedRSS)
	row("virtiofsd RSS (MiB)", vfsRSS)
	fmt.Printf("ratio shared / private: boot %.2f, QEMU RSS %.2f\n\n", median(shared)/median(plain), median(sharedRSS)/median(plainRSS))
	return nil
}

// bindSection measures a bind mount from inside a container: sequential
// write and (page-cached) read of 256 MiB and a stat of 1,000 files (ten
// passes, for the 10 ms clock), ours beside runc's.
func bindSection(runs int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	d, err := ctrd.Start(ctx)
	if err != nil {
		return err
	}
	defer d.Close()
	dir, err := os.MkdirTemp("", "qemu-shim-bench-bind-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	files := filepath.Join(dir, "files")
	os.Mkdir(files, 0o755)
	for i := 0; i < 1000; i++ {
		os.WriteFile(filepath.Join(files, strconv.Itoa(i)), []byte("x"), 0o644)
	}
	// Each step prints its own duration in ms (busybox's date has no
	// nanoseconds: the container's /proc/uptime is the clock).
	script := `t() { read up _ < /proc/uptime; echo ${up}; }
a=$(t); dd if=/dev/zero of=/b/big bs=1M count=256 2>/dev/null; sync; b=$(t)
dd if=/b/big of=/dev/null bs=1M 2>/dev/null; c=$(t)
for i in 1 2 3 4 5 6 7 8 9 10; do ls -l /b/files > /dev/null; done; e=$(t)
echo $a $b $c $e; rm /b/big`
	results := map[string][3][]float64{}
	for i := 0; i <= runs; i++ {
		for _, rt := range runtimes {
			id := fmt.Sprintf("bind-%s-%d", short(rt)[:4], i)
			out, err := d.Ctr(ctx, "run", "--rm", "--runtime", rt, "--mount", "type=bind,src="+dir+",dst=/b,options=rbind:rw",
				busybox.DefaultRef, id, "sh", "-c", script).Output()
			if err != nil {
				return fmt.Errorf("bind bench (%s): %w", rt, err)
			}
			f := strings.Fields(strings.TrimSpace(string(out)))
			if len(f) != 4 {
				return fmt.Errorf("bind bench (%s) printed %q", rt, out)
			}
			var v [4]float64
			for k := range v {
				v[k], _ = strconv.ParseFloat(f[k], 64)
			}
			if i == 0 {
				continue // warm-up
			}
			r := results[rt]
			r[0] = append(r[0], 256/max(v[1]-v[0], 0.01))
			r[1] = append(r[1], 256/max(v[2]-v[1], 0.01))
			r[2] = append(r[2], (v[3]-v[2])/10)
			results[rt] = r
		}
	}
	q, b := results[ctrd.Runtime], results["io.containerd.runc.v2"]
	row("bind write 256 MiB, qemu-shim (MiB/s)", q[0])
	row("bind write 256 MiB, runc shim (MiB/s)", b[0])
	row("bind read 256 MiB, qemu-shim (MiB/s)", q[1])
	row("bind read 256 MiB, runc shim (MiB/s)", b[1])
	row("bind stat 1,000 files, qemu-shim (s)", q[2])
	row("bind stat 1,000 files, runc shim (s)", b[2])
	fmt.Printf("ratio qemu-shim / runc shim: write %.2f, read %.2f, stat %.1f\n\n", median(q[0])/median(b[0]), median(q[1])/median(b[1]), median(q[2])/median(b[2]))
	return nil
}

// netSection measures TCP through a CNI bridge network (the test's own
// bridge and subnet, no traffic leaves them): 64 MiB container → host and
// host → container, and what joining a network namespace adds to a start.
func netSection(runs int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		fmt.Printf("network: skipped (no CNI plugins in /usr/lib/cni)\n\n")
		return nil
	}
	d, err := ctrd.Start(ctx)
	if err != nil {
		return err
	}
	defer d.Close()
	const bridge, subnet, gateway = "qs-bench0", "10.213.13.0/24", "10.213.13.1"
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "qs-bench", "plugins": [{"type": "bridge", "bridge": %q, "isGateway": true,
	  "ipam": {"type": "host-local", "ranges": [[{"subnet": %q, "gateway": %q}]], "dataDir": %q}}]}`, bridge, subnet, gateway, filepath.Join(d.Work, "ipam"))
	cni, err := gocni.New(gocni.WithPluginDir([]string{"/usr/lib/cni"}), gocni.WithConfListBytes([]byte(conf)), gocni.WithLoNetwork)
	if err != nil {
		return err
	}
	defer exec.Command("ip", "link", "del", bridge).Run()
	netns := func(name string) (string, func(), error) {
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			return "", nil, fmt.Errorf("ip netns add: %v: %s", err, out)
		}
		path := "/var/run/netns/" + name
		if _, err := cni.Setup(ctx, name, path); err != nil {
			exec.Command("ip", "netns", "del", name).Run()
			return "", nil, err
		}
		return path, func() {
			cni.Remove(context.WithoutCancel(ctx), name, path)
			exec.Command("ip", "netns", "del", name).Run()
		}, nil
	}
	const mib = 64
	up, down, withNet, without := map[string][]float64{}, map[string][]float64{}, map[string][]float64{}, map[string][]float64{}
	for i := 0; i <= runs; i++ {
		for _, rt := range runtimes {
			tag := fmt.Sprintf("%s-%d", short(rt)[:4], i)
			path, drop, err := netns("qs-bench-" + tag)
			if err != nil {
				return err
			}
			// Container → host: the host counts what arrives.
			l, err := net.Listen("tcp", gateway+":0")
			if err != nil {
				drop()
				return err
			}
			got := make(chan float64, 1)
			go func() {
				c, err := l.Accept()
				if err != nil {
					got <- 0
					return
				}
				start := time.Now()
				n, _ := io.Copy(io.Discard, c)
				c.Close()
				got <- float64(n) / (1 << 20) / time.Since(start).Seconds()
			}()
			hostPort := strings.Replace(l.Addr().String(), ":", " ", 1)
			script := fmt.Sprintf("dd if=/dev/zero bs=1M count=%d 2>/dev/null | nc -w 5 %s; nc -l -p 5001 > /dev/null", mib, hostPort)
			cmd := d.Ctr(ctx, "run", "--rm", "--runtime", rt, "--with-ns", "network:"+path, busybox.DefaultRef, "net-"+tag, "sh", "-c", script)
			if err := cmd.Start(); err != nil {
				drop()
				return err
			}
			rate := <-got
			l.Close()
			// Host → container: the container's nc listens on 5001.
			ip, err := containerIP(path)
			if err != nil {
				cmd.Process.Kill()
				cmd.Wait()
				drop()
				return err
			}
			var c net.Conn
			for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				if c, err = net.Dial("tcp", ip+":5001"); err == nil {
					break
				}
			}
			if err != nil {
				cmd.Process.Kill()
				cmd.Wait()
				drop()
				return fmt.Errorf("dial the container: %w", err)
			}
			t0 := time.Now()
			io.Copy(c, io.LimitReader(zeros{}, mib<<20))
			c.Close()
			cmd.Wait()
			downRate := float64(mib) / time.Since(t0).Seconds()
			drop()
			if i == 0 {
				continue
			}
			up[rt], down[rt] = append(up[rt], rate), append(down[rt], downRate)
			// Start with and without a network namespace to join.
			for _, joined := range []bool{true, false} {
				args := []string{"run", "--rm", "--runtime", rt}
				var dropNS func()
				if joined {
					p, dn, err := netns("qs-bench-s-" + tag)
					if err != nil {
						return err
					}
					args, dropNS = append(args, "--with-ns", "network:"+p), dn
				}
				t1 := time.Now()
				out, err := d.Ctr(ctx, append(args, busybox.DefaultRef, "start-"+tag, "echo", "up")...).Output()
				took := time.Since(t1).Seconds()
				if dropNS != nil {
					dropNS()
				}
				if err != nil || !bytes.Contains(out, []byte("up")) {
					return fmt.Errorf("start (%s): %v: %s", rt, err, out)
				}
				if joined {
					withNet[rt] = append(withNet[rt], took)
				} else {
					without[rt] = append(without[rt], took)
				}
			}
		}
	}
	q, r := ctrd.Runtime, "io.containerd.runc.v2"
	row("TCP container → host, qemu-shim (MiB/s)", up[q])
	row("TCP container → host, runc shim (MiB/s)", up[r])
	row("TCP host → container, qemu-shim (MiB/s)", down[q])
	row("TCP host → container, runc shim (MiB/s)", down[r])
	row("ctr run echo with a netns, qemu-shim (s)", withNet[q])
	row("ctr run echo without, qemu-shim (s)", without[q])
	row("ctr run echo with a netns, runc shim (s)", withNet[r])
	row("ctr run echo without, runc shim (s)", without[r])
	fmt.Printf("ratio qemu-shim / runc shim: up %.2f, down %.2f; the network adds %.3f s to our start (runc: %.3f s)\n\n",
		median(up[q])/median(up[r]), median(down[q])/median(down[r]), median(withNet[q])-median(without[q]), median(withNet[r])-median(without[r]))
	return nil
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// containerIP is eth0's IPv4 address in the namespace at path.
func containerIP(path string) (string, error) {
	out, err := exec.Command("nsenter", "--net="+path, "ip", "-4", "-o", "addr", "show", "eth0").Output()
	if err != nil {
		return "", err
	}
	f := strings.Fields(string(out))
	for i, w := range f {
		if w == "inet" && i+1 < len(f) {
			ip, _, _ := strings.Cut(f[i+1], "/")
			return ip, nil
		}
	}
	return "", fmt.Errorf("no address on eth0 in %s", path)
}

// criSection measures a pod's start through containerd's CRI plugin
// (RunPodSandbox, CreateContainer, StartContainer, through `crictl run`)
// to the container's first output, qemu handler beside runc, and what a
// pod's VM costs on the host beyond its containers (QEMU, virtiofsd and
// the shim: the RuntimeClass overhead).
func criSection(runs int) error {
	crictl := filepath.Join(ctrd.RepoDir(), "build", "clients", "crictl")
	if _, err := os.Stat(crictl); err != nil {
		fmt.Printf("pods: skipped (no %s: make clients)\n\n", crictl)
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	d, err := ctrd.StartWith(ctx, ctrd.Options{CRI: true})
	if err != nil {
		return err
	}
	defer d.Close()
	ep := "unix://" + d.Socket
	cri := func(args ...string) (string, error) {
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, crictl, append([]string{"--runtime-endpoint", ep, "--image-endpoint", ep, "--timeout", "3m"}, args...)...)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return string(out) + stderr.String(), err
		}
		return string(out), nil
	}
	// No pod outlives the section (shims outlive containerd).
	defer cri("rmp", "--all", "--force")
	dir, err := os.MkdirTemp("", "qemu-shim-bench-cri-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	write := func(name string, v any) string {
		b, _ := json.Marshal(v)
		p := filepath.Join(dir, name)
		os.WriteFile(p, b, 0o644)
		return p
	}
	starts := map[string][]float64{}
	var overhead []float64
	for i := 0; i <= runs; i++ {
		for _, handler := range []string{"qemu", "runc"} {
			name := fmt.Sprintf("bench-%s-%d", handler, i)
			pod := write(name+"-pod.json", map[string]any{"metadata": map[string]any{"name": name, "namespace": "default", "uid": name, "attempt": 1}, "log_directory": dir, "linux": map[string]any{}})
			ctr := write(name+"-ctr.json", map[string]any{"metadata": map[string]any{"name": "c"}, "image": map[string]any{"image": busybox.DefaultRef},
				"command": []string{"sh", "-c", "echo first-output; exec sleep 1000"}, "log_path": name + ".log", "linux": map[string]any{}})
			logPath := filepath.Join(dir, name+".log")
			t0 := time.Now()
			out, err := cri("run", "--no-pull", "--runtime", handler, ctr, pod)
			if err != nil {
				return fmt.Errorf("crictl run (%s): %v: %s", handler, err, out)
			}
			for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
				if b, _ := os.ReadFile(logPath); bytes.Contains(b, []byte("first-output")) {
					break
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("no first output from the %s pod", handler)
				}
			}
			took := time.Since(t0).Seconds()
			podID := ""
			if pods, err := cri("pods", "-q", "--name", name); err == nil {
				podID = strings.TrimSpace(pods)
			}
			if handler == "qemu" && i > 0 && podID != "" {
				overhead = append(overhead, podOverheadMiB(filepath.Join(d.VMStateRoot(), bundle.VMName(ctrd.CRINamespace, podID)), podID))
			}
			if podID != "" {
				cri("stopp", podID)
				cri("rmp", podID)
			}
			if i > 0 {
				starts[handler] = append(starts[handler], took)
			}
		}
	}
	row("pod start to first output, qemu handler (s)", starts["qemu"])
	row("pod start to first output, runc handler (s)", starts["runc"])
	row("pod overhead: QEMU + virtiofsd + shim PSS (MiB)", overhead)
	fmt.Printf("ratio pod start qemu / runc: %.1f; recommended RuntimeClass overhead.podFixed memory: %.0fMi\n\n",
		median(starts["qemu"])/median(starts["runc"]), 32*float64(int(median(overhead)/32)+1))
	return nil
}

// podOverheadMiB adds up the PSS of what one pod's VM runs on the host:
// its QEMU and virtiofsd (by its state directory) and its shim.
func podOverheadMiB(stateDir, podID string) float64 {
	total := 0
	for _, pattern := range []string{"qemu-system.*" + stateDir + "/", "virtiofsd.*" + stateDir + "/", "containerd-shim-qemu-v1.*-id " + podID} {
		out, _ := exec.Command("pgrep", "-f", pattern).Output()
		for _, f := range strings.Fields(string(out)) {
			pid, _ := strconv.Atoi(f)
			total += pssKiB(pid)
		}
	}
	return float64(total) / 1024
}

func pssKiB(pid int) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Pss:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return n
		}
	}
	return 0
}
