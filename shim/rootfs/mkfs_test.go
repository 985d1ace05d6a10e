package rootfs

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The writable layer's image says its inode tables are zeroed, so that
// the guest's kernel does not write them; with an mke2fs that does not
// know the option the image is made without it.
func TestWritableLayerInodeTablesAreMarkedZeroed(t *testing.T) {
	for _, tool := range []string{"mkfs.ext4", "dumpe2fs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: %s missing (make deps)", tool)
		}
	}
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "upper"), 0o755)
	c := &Converter{UpperSizeMiB: 512}
	d, err := c.upper(context.Background(), dir, filepath.Join(dir, "upper"))
	if err != nil {
		t.Fatal(err)
	}
	if prezeroedRefused.Load() {
		t.Log("this mke2fs (before 1.47) does not know assume_storage_prezeroed: not checking the image")
	} else {
		out, err := exec.Command("dumpe2fs", d.Path).CombinedOutput()
		if err != nil {
			t.Fatalf("dumpe2fs: %v: %s", err, out)
		}
		groups := len(regexp.MustCompile(`(?m)^Group [0-9]+:`).FindAll(out, -1))
		zeroed := strings.Count(string(out), "ITABLE_ZEROED")
		if groups == 0 || zeroed != groups {
			t.Errorf("%d of %d block groups have their inode table marked zeroed", zeroed, groups)
		}
	}

	// An mke2fs before 1.47 refuses the option (its words, then fails).
	bin := t.TempDir()
	real, _ := exec.LookPath("mkfs.ext4")
	script := "#!/bin/sh\ncase \"$*\" in *assume_storage_prezeroed*) echo '\nBad option(s) specified: assume_storage_prezeroed=1' >&2; exit 1;; esac\nexec " + real + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(bin, "mkfs.ext4"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	t.Cleanup(func() { prezeroedRefused.Store(false) })
	if _, err := c.upper(context.Background(), dir, filepath.Join(dir, "upper")); err != nil {
		t.Fatalf("with an older mke2fs: %v", err)
	}
	if !prezeroedRefused.Load() {
		t.Error("the refusal was not remembered")
	}

	// Any other failure is the caller's, named, and changes nothing.
	prezeroedRefused.Store(false)
	script = "#!/bin/sh\necho 'mkfs.ext4: Device size reported to be zero.' >&2\nexit 1\n"
	if err := os.WriteFile(filepath.Join(bin, "mkfs.ext4"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = c.upper(context.Background(), dir, filepath.Join(dir, "upper"))
	if err == nil || !strings.Contains(err.Error(), "Device size reported to be zero") {
		t.Errorf("failing mke2fs: %v", err)
	}
	if prezeroedRefused.Load() {
		t.Error("an unrelated failure turned the option off")
	}
}
