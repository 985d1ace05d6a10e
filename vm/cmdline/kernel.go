package cmdline

import (
	"fmt"
	"strings"
)

// DefaultKernelParams start a guest quickly and quietly: the console on the
// first serial port, no reboot loop on panic, hot-plugged memory onlined
// movable so that it can be unplugged again.
var DefaultKernelParams = []string{
	"console=ttyS0", "quiet", "panic=-1", "memhp_default_state=online_movable",
	// The crypto self-tests cost about 0.5 s of every boot under TCG.
	"cryptomgr.notests",
	// The hot-plug range above 4 GiB makes the kernel set aside (and zero:
	// the host then holds it) 64 MiB of bounce buffers for devices that
	// cannot reach that memory. Every device here is virtio, which
	// addresses all of the guest's memory and never bounces.
	"swiotlb=noforce",
	// A task blocked in the kernel for 20 s is reported on the console
	// with its stack (the default, 120 s, is as long as the shim waits for
	// a create): the shim logs the console's end when the guest does not
	// answer.
	"sysctl.kernel.hung_task_timeout_secs=20",
}

// Kernel builds a kernel command line. Later values of a key replace
// earlier ones; flags (words without '=') appear once.
type Kernel struct {
	keys   []string
	values map[string]string
	flag   map[string]bool
}

// NewKernel starts from the given words.
func NewKernel(words ...string) *Kernel {
	k := &Kernel{values: map[string]string{}, flag: map[string]bool{}}
	for _, w := range words {
		k.addWord(w)
	}
	return k
}

func (k *Kernel) addWord(w string) {
	key, value, hasValue := strings.Cut(w, "=")
	if _, seen := k.values[key]; !seen && !k.flag[key] {
		k.keys = append(k.keys, key)
	}
	if hasValue {
		delete(k.flag, key)
		k.values[key] = value
	} else {
		delete(k.values, key)
		k.flag[key] = true
	}
}

// Set sets key=value.
func (k *Kernel) Set(key, value string) *Kernel {
	k.addWord(key + "=" + value)
	return k
}

// Add appends words such as "quiet" or "key=value", checking that none
// carries white space or quotes (they would split or bend the line).
func (k *Kernel) Add(words ...string) error {
	for _, w := range words {
		if w == "" || strings.ContainsAny(w, " \t\n\"'") {
			return fmt.Errorf("kernel parameter %q: empty or contains white space or quotes", w)
		}
	}
	for _, w := range words {
		k.addWord(w)
	}
	return nil
}

// String renders the line.
func (k *Kernel) String() string {
	var words []string
	for _, key := range k.keys {
		if v, ok := k.values[key]; ok {
			words = append(words, key+"="+v)
		} else if k.flag[key] {
			words = append(words, key)
		}
	}
	return strings.Join(words, " ")
}
