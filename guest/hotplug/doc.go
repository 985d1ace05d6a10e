// Package hotplug onlines the CPUs and memory blocks the host hot-plugs. There
// is no udev in the guest: it listens to the kernel's uevents itself, and can
// also sweep sysfs for anything still offline.
package hotplug
