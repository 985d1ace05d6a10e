package vm

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestStateTransitions(t *testing.T) {
	var m stateMachine
	if err := m.transition("x", "start", StateNew, StateStarting); err != nil {
		t.Fatal(err)
	}
	err := m.transition("x", "start", StateNew, StateStarting)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "cannot start while starting") {
		t.Fatalf("second start: %v", err)
	}
	if err := m.require("x", "hot-plug", StateRunning); err == nil {
		t.Fatal("hot-plug allowed while starting")
	}
	if err := m.transition("x", "finish start", StateStarting, StateRunning); err != nil {
		t.Fatal(err)
	}
	if err := m.transition("x", "shut down", StateRunning, StateShutdown); err != nil {
		t.Fatal(err)
	}
	if err := m.transition("x", "start", StateNew, StateStarting); err == nil {
		t.Fatal("restart after shutdown allowed")
	}
}

func TestHasVirtFlag(t *testing.T) {
	if hasVirtFlag([]byte("processor: 0\nflags : fpu sse hypervisor\n")) {
		t.Error("found vmx/svm where there is none")
	}
	if !hasVirtFlag([]byte("flags : fpu vmx sse\n")) || !hasVirtFlag([]byte("flags : svm\n")) {
		t.Error("missed vmx/svm")
	}
}
