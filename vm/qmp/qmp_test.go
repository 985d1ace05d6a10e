package qmp

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qemu-shim/qemu-shim/vm/qmp/qmptest"
)

func connect(t *testing.T, ctx context.Context, s *qmptest.Server) *Monitor {
	t.Helper()
	m, err := Connect(ctx, s.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestRunDecodesRepliesAndErrors(t *testing.T) {
	s := qmptest.New(t)
	s.Return("query-hotpluggable-cpus", []map[string]any{{"type": "qemu64-x86_64-cpu", "vcpus-count": 1, "props": map[string]int{"core-id": 1}}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m := connect(t, ctx, s)
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
	err := m.Run(ctx, "no-such-command", nil, nil)
	var qerr *Error
	if !errors.As(err, &qerr) || !strings.Contains(err.Error(), "no-such-command") {
		t.Errorf("QEMU's error: got %v", err)
	}
	if got := s.Commands(); strings.Join(got, " ") != "query-hotpluggable-cpus no-such-command" {
		t.Errorf("recorded %v", got)
	}
}

func TestRunPassesArgumentsAndFiles(t *testing.T) {
	s := qmptest.New(t)
	s.Return("getfd", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m := connect(t, ctx, s)
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := m.RunWithFile(ctx, "getfd", struct {
		FDName string `json:"fdname"`
	}{"tap0"}, nil, f); err != nil {
		t.Fatal(err)
	}
	calls := s.Calls()
	var args struct {
		FDName string `json:"fdname"`
	}
	if len(calls) != 1 || calls[0].FDs != 1 || calls[0].Decode(&args) != nil || args.FDName != "tap0" {
		t.Errorf("recorded %+v", calls)
	}
}

func TestRunTimesOut(t *testing.T) {
	s := qmptest.New(t)
	unblock := make(chan struct{})
	t.Cleanup(func() { close(unblock) }) // before the server closes
	s.Handle("device_del", func(qmptest.Call) qmptest.Reply {
		<-unblock
		return qmptest.Reply{}
	})
	ctx := context.Background()
	m := connect(t, ctx, s)
	tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := m.Run(tctx, "device_del", map[string]string{"id": "x"}, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a command QEMU never answers: got %v", err)
	}
}

func TestEventsReachSubscribers(t *testing.T) {
	s := qmptest.New(t)
	s.Handle("device_del", func(c qmptest.Call) qmptest.Reply {
		return qmptest.Reply{Events: []qmptest.Event{
			{Name: "DEVICE_DELETED", Data: map[string]string{"device": "other"}},
			{Name: "DEVICE_DELETED", Data: map[string]string{"device": "disk1"}},
		}}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m := connect(t, ctx, s)
	events, unsubscribe := m.Subscribe()
	defer unsubscribe()
	before := time.Now().Add(-time.Second)
	if err := m.Run(ctx, "device_del", map[string]string{"id": "disk1"}, nil); err != nil {
		t.Fatal(err)
	}
	e, err := WaitEvent(ctx, events, func(e Event) bool { return e.Name == "DEVICE_DELETED" && e.Data["device"] == "disk1" })
	if err != nil {
		t.Fatal(err)
	}
	if e.Timestamp.Before(before) {
		t.Errorf("timestamp %v", e.Timestamp)
	}
	s.Emit(qmptest.Event{Name: "SHUTDOWN"})
	if e, err := WaitEvent(ctx, events, func(e Event) bool { return true }); err != nil || e.Name != "SHUTDOWN" {
		t.Errorf("an emitted event: %v, %v", e, err)
	}
	// When QEMU goes away, waiters return.
	s.Close()
	if _, err := WaitEvent(ctx, events, func(Event) bool { return false }); err == nil {
		t.Error("waiting on a closed monitor did not end")
	}
	select {
	case <-m.Closed():
	case <-ctx.Done():
		t.Error("Closed not closed when QEMU went away")
	}
}

func TestConnectGivesUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := Connect(ctx, filepath.Join(t.TempDir(), "absent.sock")); err == nil {
		t.Error("connected to a socket that does not exist")
	}
}
