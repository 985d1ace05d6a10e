// Package qmptest is a fake QEMU monitor for tests: a Unix-socket server
// that speaks QMP's greeting and capabilities handshake, records the
// commands it gets, answers them as scripted and sends events on demand.
package qmptest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Call is one command the server received.
type Call struct {
	Command string
	// Args is the command's "arguments" object as sent (nil without).
	Args json.RawMessage
	// FDs is how many file descriptors came with the command (getfd).
	FDs int
}

// Decode unmarshals the call's arguments into v.
func (c Call) Decode(v any) error {
	if c.Args == nil {
		return fmt.Errorf("%s: no arguments", c.Command)
	}
	return json.Unmarshal(c.Args, v)
}

// Event is an asynchronous event to send.
type Event struct {
	Name string
	Data any
}

// Error is a QMP error reply.
type Error struct {
	Class, Desc string
}

// Reply is what a handler answers: an error, or Return (nil for {}),
// then the events to send after the reply, as QEMU does for device_del.
type Reply struct {
	Return any
	Error  *Error
	Events []Event
}

// Handler answers one command.
type Handler func(Call) Reply

// Server is a fake QMP monitor. Commands without a handler get QEMU's
// CommandNotFound error.
type Server struct {
	// Path is the server's socket.
	Path string

	l        net.Listener
	mu       sync.Mutex
	handlers map[string]Handler
	calls    []Call
	conns    map[*conn]struct{}
	called   chan struct{} // closed and replaced at every call
	closed   bool
	wg       sync.WaitGroup
}

// New starts a server on a socket in a fresh directory; it is closed when
// the test ends.
func New(t testing.TB) *Server {
	t.Helper()
	// Unix socket paths are short: t.TempDir's can be too long.
	dir, err := os.MkdirTemp("", "qmptest")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "qmp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	s := &Server{Path: path, l: l, handlers: map[string]Handler{}, conns: map[*conn]struct{}{}, called: make(chan struct{})}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(func() {
		s.Close()
		os.RemoveAll(dir)
	})
	return s
}

// Handle sets the handler of a command.
func (s *Server) Handle(command string, h Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handlers[command] = h
}

// Return makes a command always succeed with v (nil for {}).
func (s *Server) Return(command string, v any) {
	s.Handle(command, func(Call) Reply { return Reply{Return: v} })
}

// Fail makes a command always fail.
func (s *Server) Fail(command, class, desc string) {
	s.Handle(command, func(Call) Reply { return Reply{Error: &Error{Class: class, Desc: desc}} })
}

// Calls returns the commands received so far, in order, without the
// capabilities handshake.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls...)
}

// Commands returns the names of Calls.
func (s *Server) Commands() []string {
	var names []string
	for _, c := range s.Calls() {
		names = append(names, c.Command)
	}
	return names
}

// WaitCalls waits until at least n commands were received or d passed, and
// returns them.
func (s *Server) WaitCalls(n int, d time.Duration) []Call {
	deadline := time.After(d)
	for {
		s.mu.Lock()
		calls, ch := append([]Call(nil), s.calls...), s.called
		s.mu.Unlock()
		if len(calls) >= n {
			return calls
		}
		select {
		case <-ch:
		case <-deadline:
			return calls
		}
	}
}

// Emit sends an event to every connected client now.
func (s *Server) Emit(e Event) {
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.event(e)
	}
}

// Close stops the server and drops its connections, as QEMU exiting would.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	for c := range s.conns {
		c.c.Close()
	}
	s.mu.Unlock()
	s.l.Close()
	s.wg.Wait()
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.l.Accept()
		if err != nil {
			return
		}
		sc := &conn{s: s, c: c.(*net.UnixConn)}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[sc] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			sc.serve()
			s.mu.Lock()
			delete(s.conns, sc)
			s.mu.Unlock()
		}()
	}
}

type conn struct {
	s   *Server
	c   *net.UnixConn
	wmu sync.Mutex
	fds int // descriptors received and not yet assigned to a command
}

func (c *conn) write(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("qmptest: %v", err))
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.c.Write(append(b, '\r', '\n'))
}

func (c *conn) event(e Event) {
	now := time.Now()
	msg := map[string]any{
		"event":     e.Name,
		"timestamp": map[string]int64{"seconds": now.Unix(), "microseconds": int64(now.Nanosecond() / 1000)},
	}
	if e.Data != nil {
		msg["data"] = e.Data
	}
	c.write(msg)
}

// Read reads the stream, keeping count of (and closing) the descriptors
// that come with it.
func (c *conn) Read(p []byte) (int, error) {
	oob := make([]byte, unix.CmsgSpace(16*4))
	n, oobn, _, _, err := c.c.ReadMsgUnix(p, oob)
	if oobn > 0 {
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for _, m := range msgs {
			fds, _ := unix.ParseUnixRights(&m)
			for _, fd := range fds {
				unix.Close(fd)
			}
			c.fds += len(fds)
		}
	}
	if n < 0 {
		n = 0
	}
	if n == 0 && err == nil {
		err = io.EOF
	}
	return n, err
}

func (c *conn) serve() {
	defer c.c.Close()
	c.write(map[string]any{"QMP": map[string]any{
		"version":      map[string]any{"qemu": map[string]int{"major": 7, "minor": 2, "micro": 0}, "package": "qmptest"},
		"capabilities": []string{"oob"},
	}})
	// Commands are JSON values, not lines.
	dec := json.NewDecoder(c)
	for {
		var req struct {
			Execute   string          `json:"execute"`
			Arguments json.RawMessage `json:"arguments"`
			ID        any             `json:"id,omitempty"`
		}
		if err := dec.Decode(&req); err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				c.write(map[string]any{"error": map[string]string{"class": "GenericError", "desc": err.Error()}})
			}
			return
		}
		if req.Execute == "qmp_capabilities" {
			c.write(map[string]any{"return": map[string]any{}})
			continue
		}
		call := Call{Command: req.Execute, Args: req.Arguments, FDs: c.fds}
		c.fds = 0
		c.s.mu.Lock()
		c.s.calls = append(c.s.calls, call)
		close(c.s.called)
		c.s.called = make(chan struct{})
		h := c.s.handlers[req.Execute]
		c.s.mu.Unlock()
		reply := Reply{Error: &Error{Class: "CommandNotFound", Desc: fmt.Sprintf("The command %s has not been found", req.Execute)}}
		if h != nil {
			reply = h(call)
		}
		msg := map[string]any{}
		switch {
		case reply.Error != nil:
			msg["error"] = map[string]string{"class": reply.Error.Class, "desc": reply.Error.Desc}
		case reply.Return != nil:
			msg["return"] = reply.Return
		default:
			msg["return"] = map[string]any{}
		}
		if req.ID != nil {
			msg["id"] = req.ID
		}
		c.write(msg)
		for _, e := range reply.Events {
			c.event(e)
		}
	}
}
