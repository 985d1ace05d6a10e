package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/qemu-shim/qemu-shim/test/guestimage"
	"github.com/qemu-shim/qemu-shim/vm"
)

// rawPortSize is what each raw port measurement moves.
const rawPortSize = 32 << 20

// rawPortRates boots the guest kernel with portraw as /init (the guest
// image's modules beside it) and measures the agent's virtio-serial port
// without any multiplexer: host → guest, guest → host and an echo (both
// ways at once, as a stdio round trip uses the port), in MiB/s.
func rawPortRates(work string, img guestimage.Image, runs int) (in, out, echo []float64, err error) {
	guestInitrd, err := filepath.Abs(img.Initrd)
	if err != nil {
		return nil, nil, nil, err
	}
	initrd, err := buildPortrawInitrd(work, guestInitrd)
	if err != nil {
		return nil, nil, nil, err
	}
	inst, err := vm.New(vm.Config{ID: "portraw", StateRoot: work, Kernel: img.Kernel, Initrd: initrd, Tools: img.Tools})
	if err != nil {
		return nil, nil, nil, err
	}
	args, err := inst.CommandLine()
	if err != nil {
		return nil, nil, nil, err
	}
	socket := ""
	for j, a := range args {
		if strings.HasPrefix(a, "socket,id=console,") { // no console socket here: a file
			args[j] = "file,id=console,path=" + filepath.Join(inst.StateDir(), "console.log")
		}
		if rest, ok := strings.CutPrefix(a, "socket,id=agent,path="); ok {
			socket, _, _ = strings.Cut(rest, ",")
		}
	}
	if socket == "" {
		return nil, nil, nil, errors.New("no agent port on the command line (vsock?)")
	}
	if err := os.MkdirAll(inst.StateDir(), 0o700); err != nil {
		return nil, nil, nil, err
	}
	defer os.RemoveAll(inst.StateDir())
	cmd := exec.Command("qemu-system-x86_64", args...)
	var qemuErr bytes.Buffer
	cmd.Stderr = &qemuErr
	if err := cmd.Start(); err != nil {
		return nil, nil, nil, err
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	var c net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err = net.Dial("unix", socket); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return nil, nil, nil, fmt.Errorf("%w (QEMU: %s)", err, qemuErr.String())
		}
		time.Sleep(time.Millisecond)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Minute))
	if err := scanUntil(c, "RAWREADY"); err != nil {
		return nil, nil, nil, err
	}
	c.Write([]byte{'B'})
	if err := scanUntil(c, "RAWSTART"); err != nil {
		return nil, nil, nil, err
	}
	op := func(o byte, size int) error {
		var cmd [9]byte
		cmd[0] = o
		binary.LittleEndian.PutUint64(cmd[1:], uint64(size))
		_, err := c.Write(cmd[:])
		return err
	}
	data := make([]byte, rawPortSize)
	rate := func(start time.Time) float64 { return rawPortSize / (1 << 20) / time.Since(start).Seconds() }
	for i := 0; i <= runs; i++ {
		start := time.Now()
		if err := op('S', rawPortSize); err != nil {
			return nil, nil, nil, err
		}
		if _, err := c.Write(data); err != nil {
			return nil, nil, nil, err
		}
		var k [1]byte
		if _, err := io.ReadFull(c, k[:]); err != nil {
			return nil, nil, nil, fmt.Errorf("sink: %w", err)
		}
		sink := rate(start)
		start = time.Now()
		if err := op('G', rawPortSize); err != nil {
			return nil, nil, nil, err
		}
		if _, err := io.CopyN(io.Discard, c, rawPortSize); err != nil {
			return nil, nil, nil, fmt.Errorf("generate: %w", err)
		}
		gen := rate(start)
		start = time.Now()
		if err := op('E', rawPortSize); err != nil {
			return nil, nil, nil, err
		}
		werr := make(chan error, 1)
		go func() { _, err := c.Write(data); werr <- err }()
		if _, err := io.CopyN(io.Discard, c, rawPortSize); err != nil {
			return nil, nil, nil, fmt.Errorf("echo: %w", err)
		}
		if err := <-werr; err != nil {
			return nil, nil, nil, err
		}
		if i > 0 {
			in, out, echo = append(in, sink), append(out, gen), append(echo, rate(start))
		}
	}
	op('Q', 0)
	return in, out, echo, nil
}

// scanUntil reads c until tok has gone by.
func scanUntil(c net.Conn, tok string) error {
	var seen []byte
	b := make([]byte, 1)
	for !bytes.HasSuffix(seen, []byte(tok)) {
		if _, err := c.Read(b); err != nil {
			return fmt.Errorf("waiting for %s: %w", tok, err)
		}
		seen = append(seen, b[0])
		if len(seen) > 64 {
			seen = seen[len(seen)-len(tok):]
		}
	}
	return nil
}

// buildPortrawInitrd unpacks the guest's initramfs (for its modules) and
// packs it again with portraw as /init.
func buildPortrawInitrd(work, guestInitrd string) (string, error) {
	root := filepath.Join(work, "portraw-root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", err
	}
	unpack := exec.Command("sh", "-c", "cpio -idm --quiet < "+guestInitrd)
	unpack.Dir = root
	if out, err := unpack.CombinedOutput(); err != nil {
		return "", fmt.Errorf("unpack %s: %v: %s", guestInitrd, err, out)
	}
	os.Remove(filepath.Join(root, "init"))
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", filepath.Join(root, "init"), "./test/bench/portraw")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build portraw: %v: %s", err, out)
	}
	out := filepath.Join(work, "portraw.cpio")
	pack := exec.Command("sh", "-c", "find . -mindepth 1 | LC_ALL=C sort | cpio --create --format=newc --quiet > "+out)
	pack.Dir = root
	if b, err := pack.CombinedOutput(); err != nil {
		return "", fmt.Errorf("pack portraw initrd: %v: %s", err, b)
	}
	return out, nil
}
