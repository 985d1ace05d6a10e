// Package kmod loads kernel modules the way modprobe would, without modprobe:
// it reads the modules.dep that depmod computed for the initramfs and loads
// each module after its dependencies, with finit_module.
package kmod
