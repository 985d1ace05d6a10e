package blockdev

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func TestFindBySerial(t *testing.T) {
	sys := t.TempDir()
	for name, attrs := range map[string][3]string{"vda": {"qs-tools", "2048", "1"}, "vdb": {"root", "4096", "0"}} {
		d := filepath.Join(sys, "block", name)
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "serial"), []byte(attrs[0]+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "size"), []byte(attrs[1]+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "ro"), []byte(attrs[2]+"\n"), 0o644)
	}
	// A disk on the virtio-scsi controller: its serial is in VPD page 0x80.
	sd := filepath.Join(sys, "block", "sda")
	os.MkdirAll(filepath.Join(sd, "device"), 0o755)
	os.WriteFile(filepath.Join(sd, "device", "vpd_pg80"), append([]byte{0, 0x80, 0, 4}, "l12 "...), 0o444)
	os.WriteFile(filepath.Join(sd, "size"), []byte("8\n"), 0o644)
	os.WriteFile(filepath.Join(sd, "ro"), []byte("1\n"), 0o644)
	os.WriteFile(filepath.Join(sd, "dev"), []byte("8:16\n"), 0o444)
	if d, ok := Find(sys, "l12"); !ok || d.Path() != "/dev/sda" || !d.ReadOnly || d.SizeBytes != 8*512 || d.Major != 8 || d.Minor != 16 {
		t.Errorf("scsi disk: got %+v %v", d, ok)
	}
	// A page that is not 0x80, or shorter than its header, names nothing.
	os.WriteFile(filepath.Join(sd, "device", "vpd_pg80"), []byte{0, 0x83, 0}, 0o444)
	if _, ok := Find(sys, "l12"); ok {
		t.Error("a malformed VPD page gave a serial")
	}
	d, ok := Find(sys, "root")
	if !ok || d.Path() != "/dev/vdb" || d.SizeBytes != 4096*512 || d.ReadOnly {
		t.Fatalf("got %+v %v", d, ok)
	}
	if d, _ := Find(sys, "qs-tools"); !d.ReadOnly {
		t.Error("vda should be read-only")
	}
	_, err := Wait(context.Background(), sys, "nope", 20*time.Millisecond)
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("missing disk: %v", err)
	}
	if _, err := Wait(context.Background(), sys, "", time.Second); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("empty serial: %v", err)
	}
}

// A SCSI disk that shows no capacity is asked again (its rescan attribute
// written) and, if it never gets one, named in the error.
func TestWaitRescansADiskWithoutCapacity(t *testing.T) {
	sys := t.TempDir()
	sd := filepath.Join(sys, "block", "sdb")
	os.MkdirAll(filepath.Join(sd, "device"), 0o755)
	os.WriteFile(filepath.Join(sd, "device", "vpd_pg80"), append([]byte{0, 0x80, 0, 2}, "l8"...), 0o444)
	os.WriteFile(filepath.Join(sd, "size"), []byte("0\n"), 0o644)
	os.WriteFile(filepath.Join(sd, "device", "rescan"), nil, 0o644)
	_, err := Wait(context.Background(), sys, "l8", rescanEvery+300*time.Millisecond)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "sdb") {
		t.Errorf("disk without capacity: %v", err)
	}
	// The rescan runs in the background: wait for it to be done.
	path := filepath.Join(sd, "device", "rescan")
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, busy := rescanning.Load(path); !busy {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the rescan never ended")
		}
		time.Sleep(time.Millisecond)
	}
	if b, _ := os.ReadFile(path); string(b) != "1" {
		t.Errorf("rescan attribute holds %q, want 1", b)
	}
}
