package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/qemu-shim/qemu-shim/internal/syncutil"
	"github.com/qemu-shim/qemu-shim/test/ctrd"
	"github.com/qemu-shim/qemu-shim/test/guestimage"
)

// roundTripSize is what the stdio round trip sends through cat.
const roundTripSize = 4 << 20

// stdioSection measures, through a private containerd's client, in a
// container of each runtime that is already running: an exec round trip
// (what `ctr tasks exec` of echo does: exec, start, wait for the exit and
// the output, delete) and the throughput of 4 MiB written to an exec'd
// cat's stdin and read back from its stdout through containerd's fifos,
// and of each direction alone (4 MiB into `cat > /dev/null`, 4 MiB out of
// dd); beside them, the agent port's own rates without a multiplexer.
func stdioSection(work string, img guestimage.Image, runs int) error {
	in, out, echo, err := rawPortRates(work, img, runs)
	if err != nil {
		return fmt.Errorf("raw port: %w", err)
	}
	row("virtio-serial raw, host → guest (MiB/s)", in)
	row("virtio-serial raw, guest → host (MiB/s)", out)
	row("virtio-serial raw, echo both ways (MiB/s)", echo)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	d, err := ctrd.Start(ctx)
	if err != nil {
		return err
	}
	defer d.Close()
	ctx = namespaces.WithNamespace(ctx, ctrd.Namespace)
	tasks := map[string]containerd.Task{}
	for _, rt := range runtimes {
		id := "stdio-" + short(rt)[:4]
		c, err := d.Client.NewContainer(ctx, id, containerd.WithImage(d.Image), containerd.WithNewSnapshot(id+"-snap", d.Image),
			containerd.WithRuntime(rt, nil), containerd.WithNewSpec(oci.WithImageConfig(d.Image), oci.WithProcessArgs("sleep", "100000")))
		if err != nil {
			return err
		}
		defer func() {
			ctx := context.WithoutCancel(ctx)
			if t, err := c.Task(ctx, nil); err == nil {
				t.Kill(ctx, syscall.SIGKILL)
				t.Delete(ctx, containerd.WithProcessKill)
			}
			c.Delete(ctx, containerd.WithSnapshotCleanup)
		}()
		t, err := c.NewTask(ctx, cio.NullIO)
		if err != nil {
			return fmt.Errorf("%s: %w", rt, err)
		}
		if err := t.Start(ctx); err != nil {
			return fmt.Errorf("%s: %w", rt, err)
		}
		tasks[rt] = t
	}
	data := make([]byte, roundTripSize)
	for i := range data {
		data[i] = byte(i*7 + i>>11)
	}
	execs, rates := map[string][]float64{}, map[string][]float64{}
	ins, outs := map[string][]float64{}, map[string][]float64{}
	for i := 0; i <= runs; i++ {
		for _, rt := range runtimes {
			e, err := execEcho(ctx, tasks[rt], fmt.Sprintf("echo%d", i))
			if err != nil {
				return fmt.Errorf("exec (%s): %w", rt, err)
			}
			r, err := catRoundTrip(ctx, tasks[rt], fmt.Sprintf("cat%d", i), data)
			if err != nil {
				return fmt.Errorf("stdio round trip (%s): %w", rt, err)
			}
			in, err := stdinOnly(ctx, tasks[rt], fmt.Sprintf("in%d", i), data)
			if err != nil {
				return fmt.Errorf("stdin one way (%s): %w", rt, err)
			}
			out, err := stdoutOnly(ctx, tasks[rt], fmt.Sprintf("out%d", i), len(data))
			if err != nil {
				return fmt.Errorf("stdout one way (%s): %w", rt, err)
			}
			if i > 0 { // the first of each warms caches
				execs[rt] = append(execs[rt], e)
				rates[rt] = append(rates[rt], r)
				ins[rt] = append(ins[rt], in)
				outs[rt] = append(outs[rt], out)
			}
		}
	}
	q, b := ctrd.Runtime, "io.containerd.runc.v2"
	row("exec echo round trip, qemu-shim (s)", execs[q])
	row("exec echo round trip, runc shim (s)", execs[b])
	row("stdio 4 MiB via cat, qemu-shim (MiB/s)", rates[q])
	row("stdio 4 MiB via cat, runc shim (MiB/s)", rates[b])
	row("stdin 4 MiB only, qemu-shim (MiB/s)", ins[q])
	row("stdin 4 MiB only, runc shim (MiB/s)", ins[b])
	row("stdout 4 MiB only, qemu-shim (MiB/s)", outs[q])
	row("stdout 4 MiB only, runc shim (MiB/s)", outs[b])
	fmt.Printf("ratio qemu-shim / runc shim: exec %.2f (target ≤ 3), stdio throughput %.3f (target ≥ 0.5)\n\n",
		median(execs[q])/median(execs[b]), median(rates[q])/median(rates[b]))
	return nil
}

func processSpec(ctx context.Context, t containerd.Task, args ...string) (*specs.Process, error) {
	spec, err := t.Spec(ctx)
	if err != nil {
		return nil, err
	}
	p := *spec.Process
	p.Args, p.Terminal = args, false
	return &p, nil
}

// execEcho does what `ctr tasks exec` of echo does and times all of it.
func execEcho(ctx context.Context, t containerd.Task, id string) (float64, error) {
	pspec, err := processSpec(ctx, t, "echo", "bench-"+id)
	if err != nil {
		return 0, err
	}
	out := &syncutil.Buffer{}
	start := time.Now()
	p, err := t.Exec(ctx, id, pspec, cio.NewCreator(cio.WithStreams(nil, out, io.Discard)))
	if err != nil {
		return 0, err
	}
	exitC, err := p.Wait(ctx)
	if err != nil {
		return 0, err
	}
	if err := p.Start(ctx); err != nil {
		return 0, err
	}
	st := <-exitC
	if _, err := p.Delete(ctx); err != nil {
		return 0, err
	}
	took := time.Since(start)
	if st.ExitCode() != 0 || out.String() != "bench-"+id+"\n" {
		return 0, fmt.Errorf("exit %d, output %q", st.ExitCode(), out.String())
	}
	return took.Seconds(), nil
}

// startStreamed execs args in t's container with stdin (none if nil) and
// stdout, stderr discarded, and starts it; the caller deletes it.
func startStreamed(ctx context.Context, t containerd.Task, id string, stdin io.Reader, stdout io.Writer, args ...string) (containerd.Process, <-chan containerd.ExitStatus, error) {
	pspec, err := processSpec(ctx, t, args...)
	if err != nil {
		return nil, nil, err
	}
	p, err := t.Exec(ctx, id, pspec, cio.NewCreator(cio.WithStreams(stdin, stdout, io.Discard)))
	if err != nil {
		return nil, nil, err
	}
	exitC, err := p.Wait(ctx)
	if err == nil {
		err = p.Start(ctx)
	}
	if err != nil {
		p.Delete(context.WithoutCancel(ctx), containerd.WithProcessKill)
		return nil, nil, err
	}
	return p, exitC, nil
}

// catRoundTrip starts cat, then times data written to its stdin until all
// of it is back from its stdout, and returns the rate in MiB/s.
func catRoundTrip(ctx context.Context, t containerd.Task, id string, data []byte) (float64, error) {
	in, feed := io.Pipe()
	defer feed.Close()
	out := &checkWriter{want: data, done: make(chan struct{})}
	p, exitC, err := startStreamed(ctx, t, id, in, out, "cat")
	if err != nil {
		return 0, err
	}
	defer p.Delete(context.WithoutCancel(ctx), containerd.WithProcessKill)
	start := time.Now()
	go func() {
		feed.Write(data)
		feed.Close()
	}()
	timeout := time.NewTimer(2 * time.Minute)
	defer timeout.Stop()
	select {
	case <-out.done:
	case <-timeout.C:
		return 0, fmt.Errorf("%d of %d bytes back after 2 minutes", out.n(), len(data))
	}
	took := time.Since(start)
	if err := out.failed(); err != nil {
		return 0, err
	}
	if err := p.CloseIO(ctx, containerd.WithStdinCloser); err != nil {
		return 0, err
	}
	if st := <-exitC; st.ExitCode() != 0 {
		return 0, fmt.Errorf("cat exited %d", st.ExitCode())
	}
	return float64(len(data)) / (1 << 20) / took.Seconds(), nil
}

// stdinOnly times data written to the stdin of `cat > /dev/null` until
// the process has exited (stdin closed once all is written), and returns
// the rate in MiB/s.
func stdinOnly(ctx context.Context, t containerd.Task, id string, data []byte) (float64, error) {
	in, feed := io.Pipe()
	defer feed.Close()
	p, exitC, err := startStreamed(ctx, t, id, in, io.Discard, "sh", "-c", "cat > /dev/null")
	if err != nil {
		return 0, err
	}
	defer p.Delete(context.WithoutCancel(ctx), containerd.WithProcessKill)
	start := time.Now()
	if _, err := feed.Write(data); err != nil {
		return 0, err
	}
	feed.Close()
	if err := p.CloseIO(ctx, containerd.WithStdinCloser); err != nil {
		return 0, err
	}
	timeout := time.NewTimer(2 * time.Minute)
	defer timeout.Stop()
	select {
	case st := <-exitC:
		if st.ExitCode() != 0 {
			return 0, fmt.Errorf("cat exited %d", st.ExitCode())
		}
	case <-timeout.C:
		return 0, fmt.Errorf("cat did not exit 2 minutes after its stdin closed")
	}
	return float64(len(data)) / (1 << 20) / time.Since(start).Seconds(), nil
}

// stdoutOnly times size zero bytes that dd writes to its stdout in 64 KiB
// writes, from the first of them read from the fifo to the last (the
// process's start is not the stream's), and returns the rate in MiB/s.
func stdoutOnly(ctx context.Context, t containerd.Task, id string, size int) (float64, error) {
	out := &checkWriter{want: make([]byte, size/65536*65536), done: make(chan struct{})}
	p, exitC, err := startStreamed(ctx, t, id, nil, out, "dd", "if=/dev/zero", "bs=65536", fmt.Sprintf("count=%d", size/65536))
	if err != nil {
		return 0, err
	}
	defer p.Delete(context.WithoutCancel(ctx), containerd.WithProcessKill)
	timeout := time.NewTimer(2 * time.Minute)
	defer timeout.Stop()
	select {
	case <-out.done:
	case <-timeout.C:
		return 0, fmt.Errorf("%d of %d bytes out after 2 minutes", out.n(), len(out.want))
	}
	took := time.Since(out.firstWrite())
	if err := out.failed(); err != nil {
		return 0, err
	}
	if st := <-exitC; st.ExitCode() != 0 {
		return 0, fmt.Errorf("dd exited %d", st.ExitCode())
	}
	return float64(len(out.want)) / (1 << 20) / took.Seconds(), nil
}

// checkWriter compares what it is given with want and closes done once
// all of want has arrived, or at the first difference.
type checkWriter struct {
	want []byte
	done chan struct{}
	err  error

	mu    sync.Mutex
	off   int
	first time.Time
}

func (c *checkWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.first.IsZero() {
		c.first = time.Now()
	}
	if c.off >= len(c.want) {
		return len(p), nil
	}
	end := min(c.off+len(p), len(c.want))
	if len(p) > len(c.want)-c.off || !bytes.Equal(p, c.want[c.off:end]) {
		c.err = fmt.Errorf("output differs from the input at or after byte %d", c.off)
		c.off = len(c.want)
	} else {
		c.off = end
	}
	if c.off == len(c.want) {
		close(c.done)
	}
	return len(p), nil
}

func (c *checkWriter) n() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.off
}

// firstWrite is when the first bytes arrived.
func (c *checkWriter) firstWrite() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.first
}

func (c *checkWriter) failed() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
