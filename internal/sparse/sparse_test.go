package sparse

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func memfd(t *testing.T, size int64) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate("sparse-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "memfd")
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return f
}

func allocated(t *testing.T, f *os.File) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// A memory image round trip: pages written with data come back, pages
// never written or written with zeros take no room in the copy, and the
// copy back allocates only the data.
func TestRoundTrip(t *testing.T) {
	const size = 8 << 20
	src := memfd(t, size)
	want := make([]byte, size)
	fill := func(off int64, n int, b byte) {
		p := bytes.Repeat([]byte{b}, n)
		if _, err := src.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], p)
	}
	fill(0, PageSize, 1)
	fill(3*PageSize, 5*PageSize, 0) // written, but zero
	fill(3*PageSize+100, 1, 7)      // one byte in a page of zeros
	fill(2<<20, 1<<20+PageSize, 9)  // crosses the read chunk
	fill(size-PageSize, PageSize, 3)

	img, err := os.Create(filepath.Join(t.TempDir(), "memory"))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	n, err := CopyNonZero(img, src, size)
	if err != nil {
		t.Fatal(err)
	}
	data := int64(3*PageSize + 1<<20 + PageSize)
	if n != data {
		t.Errorf("wrote %d bytes, want %d", n, data)
	}
	if got := allocated(t, img); got > data+64<<10 {
		t.Errorf("image takes %d bytes on disk, want about %d", got, data)
	}

	dst := memfd(t, size)
	c, err := CopyData(dst, img)
	if err != nil {
		t.Fatal(err)
	}
	if c < data {
		t.Errorf("copied %d bytes back, want at least %d", c, data)
	}
	if got := allocated(t, dst); got > data+64<<10 {
		t.Errorf("copy holds %d bytes, want about %d", got, data)
	}
	got := make([]byte, size)
	if _, err := dst.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("the copy differs from the source")
	}
}

func TestEmpty(t *testing.T) {
	src := memfd(t, 1<<20)
	img, err := os.Create(filepath.Join(t.TempDir(), "memory"))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if n, err := CopyNonZero(img, src, 1<<20); err != nil || n != 0 {
		t.Fatalf("CopyNonZero = %d, %v; want 0, nil", n, err)
	}
	if st, _ := img.Stat(); st.Size() != 1<<20 {
		t.Errorf("image size %d, want %d", st.Size(), 1<<20)
	}
	if n, err := CopyData(memfd(t, 1<<20), img); err != nil || n != 0 {
		t.Fatalf("CopyData = %d, %v; want 0, nil", n, err)
	}
}
