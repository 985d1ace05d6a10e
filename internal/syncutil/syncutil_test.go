package syncutil

import (
	"sync"
	"testing"
	"time"
)

func TestWaitTimeout(t *testing.T) {
	var wg sync.WaitGroup
	if !WaitTimeout(&wg, time.Second) {
		t.Error("an empty group did not finish")
	}
	wg.Add(1)
	if WaitTimeout(&wg, 10*time.Millisecond) {
		t.Error("a pending group finished")
	}
	wg.Done()
}
