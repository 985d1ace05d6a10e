package agent

import (
	"sync"
	"testing"
)

func TestTimeline(t *testing.T) {
	var tl Timeline
	tl.Step("init")
	tl.Step("mounted")
	steps := tl.Steps()
	if len(steps) != 2 || steps[0].Name != "init" || steps[1].Name != "mounted" {
		t.Fatalf("steps %v", steps)
	}
	if steps[1].AtNs < steps[0].AtNs || steps[0].AtNs == 0 {
		t.Fatalf("times not in boot-time order: %d, %d", steps[0].AtNs, steps[1].AtNs)
	}
	// Steps is a copy: later steps do not change it.
	tl.Step("listening")
	if len(steps) != 2 || len(tl.Steps()) != 3 {
		t.Fatal("Steps shares its slice")
	}

	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() { defer wg.Done(); tl.Step("x"); tl.Steps() }()
	}
	wg.Wait()
	if n := len(tl.Steps()); n != 11 {
		t.Fatalf("%d steps, want 11", n)
	}
}
