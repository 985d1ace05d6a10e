package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeQEMU is a QMP peer speaking the protocol on a Unix socket: the
// greeting, capabilities, scripted replies, and events on demand.
type fakeQEMU struct {
	l       net.Listener
	replies map[string]string // command → JSON reply line
	events  chan string
	stall   string // a command that never gets a reply
}

func startFake(t *testing.T) (*fakeQEMU, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeQEMU{l: l, replies: map[string]string{}, events: make(chan string, 4)}
	t.Cleanup(func() { l.Close() })
	go f.serve()
	return f, path
}

func (f *fakeQEMU) serve() {
	c, err := f.l.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	w := func(s string) { c.Write([]byte(s + "\r\n")) }
	w(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}`)
	go func() {
		for e := range f.events {
			w(e)
		}
	}()
	// Commands are JSON values, not lines (QEMU needs no newline).
	dec := json.NewDecoder(c)
	for {
		var req struct {
			Execute string `json:"execute"`
		}
		if err := dec.Decode(&req); err != nil {
			return
		}
		switch {
		case req.Execute == "qmp_capabilities":
			w(`{"return": {}}`)
		case req.Execute == f.stall:
		case f.replies[req.Execute] != "":
			w(f.replies[req.Execute])
		default:
			w(`{"error": {"class": "CommandNotFound", "desc": "The command ` + req.Execute + ` has not been found"}}`)
		}
	}
}

func TestRunDecodesRepliesAndErrors(t *testing.T) {
	f, path := startFake(t)
	f.replies["query-hotpluggable-cpus"] = `{"return": [{"type": "qemu64-x86_64-cpu", "vcpus-count": 1, "props": {"core-id": 1}}]}`
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := Connect(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var cpus []struct {
		Type  string         `json:"type"`
		Props map[string]any `json:"props"`
	}
	if err := m.Run(ctx, "query-hotpluggable-cpus", nil, &cpus); err != nil {
		t.Fatal(err)
	}
	if len(cpus) != 1 || cpus[0].Type != "qemu64-x86_64-cpu" {
		t.Errorf("decoded %+v", cpus)
	}
	err = m.Run(ctx, "no-such-command", nil, nil)
	var qerr *Error
	if !errors.As(err, &qerr) || !strings.Contains(err.Error(), "no-such-command") {
		t.Errorf("QEMU's error: got %v", err)
	}
}

func TestRunTimesOut(t *testing.T) {
	f, path := startFake(t)
	f.stall = "device_del"
	ctx := context.Background()
	m, err := Connect(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := m.Run(tctx, "device_del", map[string]string{"id": "x"}, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a command QEMU never answers: got %v", err)
	}
}

func TestEventsReachSubscribers(t *testing.T) {
	f, path := startFake(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := Connect(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	events, unsubscribe := m.Subscribe()
	defer unsubscribe()
	f.events <- `{"event": "DEVICE_DELETED", "data": {"device": "other"}, "timestamp": {"seconds": 1, "microseconds": 0}}`
	f.events <- `{"event": "DEVICE_DELETED", "data": {"device": "disk1"}, "timestamp": {"seconds": 2, "microseconds": 0}}`
	e, err := WaitEvent(ctx, events, func(e Event) bool { return e.Name == "DEVICE_DELETED" && e.Data["device"] == "disk1" })
	if err != nil {
		t.Fatal(err)
	}
	if e.Timestamp.Unix() != 2 {
		t.Errorf("timestamp %v", e.Timestamp)
	}
	// When QEMU goes away, waiters return.
	m.Close()
	if _, err := WaitEvent(ctx, events, func(Event) bool { return false }); err == nil {
		t.Error("waiting on a closed monitor did not end")
	}
}

func TestConnectGivesUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := Connect(ctx, filepath.Join(t.TempDir(), "absent.sock")); err == nil {
		t.Error("connected to a socket that does not exist")
	}
}
