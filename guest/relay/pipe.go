package relay

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A stdio stream does not go through taskd byte for byte: taskd asks for
// one end of a pipe (the process's stdin, or its stdout or stderr) and the
// agent copies between the host's stream and the other end, so that the
// bytes skip a socket and a process on their way. The connection taskd
// accepted stays open as the stream's control:
//   - taskd sends one byte, PipeRead or PipeWrite, and receives the pipe's
//     end for that direction with SCM_RIGHTS beside a one-byte answer;
//   - for an output, the agent closes the control once everything the
//     process wrote has been handed to the host's stream (drained);
//   - taskd closing the control ends the stream at once: stdin is closed,
//     an output is dropped.
const (
	// PipeRead asks for a read end: the host's bytes (stdin).
	PipeRead byte = 'r'
	// PipeWrite asks for a write end: bytes for the host (stdout, stderr).
	PipeWrite byte = 'w'
)

// pipeSize is the capacity the agent gives a stream's pipe, so that the
// process and the agent trade large chunks (each system call costs much
// in an emulated guest).
const pipeSize = 256 << 10

// copyBufferSize is the agent's chunk between a pipe and a stream.
const copyBufferSize = 256 << 10

// pipeWait bounds how long taskd waits for the agent's answer.
const pipeWait = 10 * time.Second

// OpenPipe asks the agent at the other end of ctl, a stream connection
// taskd accepted, for the end of the stream's pipe in direction dir. The
// file is blocking, to be handed to a process as it is, unless nonblocking
// (for taskd's own copies, which closing it then interrupts).
func OpenPipe(ctl net.Conn, dir byte, nonblocking bool) (*os.File, error) {
	uc, ok := ctl.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("stream pipe: %T is not a Unix connection", ctl)
	}
	if dir != PipeRead && dir != PipeWrite {
		return nil, fmt.Errorf("stream pipe: unknown direction %q", dir)
	}
	uc.SetDeadline(time.Now().Add(pipeWait))
	defer uc.SetDeadline(time.Time{})
	if _, err := uc.Write([]byte{dir}); err != nil {
		return nil, fmt.Errorf("stream pipe: ask: %w", err)
	}
	b, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := uc.ReadMsgUnix(b, oob)
	if err != nil {
		return nil, fmt.Errorf("stream pipe: answer: %w", err)
	}
	var fds []int
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range msgs {
			if got, err := unix.ParseUnixRights(&m); err == nil {
				fds = append(fds, got...)
			}
		}
	}
	if n != 1 || b[0] != dir || len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("stream pipe: answer %q with %d descriptors: want %q with one", b[:n], len(fds), dir)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fds[0], &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		unix.Close(fds[0])
		return nil, errors.New("stream pipe: the descriptor received is not a pipe")
	}
	unix.CloseOnExec(fds[0])
	if nonblocking {
		if err := unix.SetNonblock(fds[0], true); err != nil {
			unix.Close(fds[0])
			return nil, fmt.Errorf("stream pipe: %w", err)
		}
	}
	return os.NewFile(uintptr(fds[0]), "stream-pipe"), nil
}

// pipeStream serves a stream connection: it answers taskd's request with
// a pipe end and copies between the host's stream c and the other end
// until either side ends.
func pipeStream(c net.Conn, d *net.UnixConn) {
	defer c.Close()
	defer d.Close()
	req := make([]byte, 1)
	if _, err := io.ReadFull(d, req); err != nil || (req[0] != PipeRead && req[0] != PipeWrite) {
		return
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return
	}
	unix.FcntlInt(uintptr(p[0]), unix.F_SETPIPE_SZ, pipeSize) // best effort
	mine, theirs := p[0], p[1]
	if req[0] == PipeRead {
		mine, theirs = p[1], p[0]
	}
	_, _, err := d.WriteMsgUnix(req, unix.UnixRights(theirs), nil)
	unix.Close(theirs)
	if err != nil {
		unix.Close(mine)
		return
	}
	// The agent's end only is non-blocking, so that closing it ends a
	// copy blocked on it; taskd's stays as a process expects its stdio.
	unix.SetNonblock(mine, true)
	f := os.NewFile(uintptr(mine), "stream-pipe")
	var once sync.Once
	stop := func() { once.Do(func() { f.Close(); c.Close() }) }
	// taskd closing the control ends the stream.
	go func() {
		io.Copy(io.Discard, d)
		stop()
	}()
	buf := make([]byte, copyBufferSize)
	if req[0] == PipeRead {
		copyChunks(f, c, buf)
	} else if err := copyChunks(c, f, buf); err != nil && !errors.Is(err, os.ErrClosed) {
		// The host's stream is gone: drain what the process still
		// writes, so that it neither blocks nor fails, until it ends.
		copyChunks(io.Discard, f, buf)
	}
	// An output is handed over; stdin ends (the process reads EOF).
	stop()
}

// copyChunks copies src to dst through buf (unlike io.Copy, whatever
// WriterTo or ReaderFrom the ends have), and returns the first error; a
// write error is returned as such, a read one only if it is not EOF.
func copyChunks(dst io.Writer, src io.Reader, buf []byte) error {
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}
