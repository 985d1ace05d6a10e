// Command bareinit is the trivial /init of the boot baseline: it says it
// runs on the first serial port and powers off. Booting it measures what
// the kernel and QEMU cost before any agent work.
package main

import (
	"os"
	"syscall"
)

func main() {
	syscall.Mount("devtmpfs", "/dev", "devtmpfs", 0, "")
	if f, err := os.OpenFile("/dev/ttyS0", os.O_WRONLY, 0); err == nil {
		f.Write([]byte("\nBARE-INIT-READY\n"))
		f.Close()
	}
	syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
}
