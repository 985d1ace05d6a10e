// Package sparse copies files that are mostly holes or zeros (a guest's
// memory) without touching, reading or writing what is not data: only the
// extents the source holds are read (SEEK_DATA), and the copy leaves holes
// where the source has none or only zeros.
package sparse

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// PageSize is the unit in which zeros are left out: a page of the guest.
const PageSize = 4096

// chunk is how much is read at once.
const chunk = 1 << 20

var zeroPage = make([]byte, PageSize)

// extents calls fn for each data extent of f below size, in order: the
// ranges SEEK_DATA and SEEK_HOLE find.
func extents(f *os.File, size int64, fn func(off, end int64) error) error {
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}
		if err != nil {
			return fmt.Errorf("find data in %s: %w", f.Name(), err)
		}
		if data >= size {
			return nil
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("find a hole in %s: %w", f.Name(), err)
		}
		hole = min(hole, size)
		if err := fn(data, hole); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// CopyNonZero copies the first size bytes of src into dst at the same
// offsets, leaving out the pages that are holes or zeros in src, and sets
// dst's size to size: dst must hold nothing yet. It returns how many
// bytes it wrote.
func CopyNonZero(dst, src *os.File, size int64) (int64, error) {
	if err := dst.Truncate(size); err != nil {
		return 0, err
	}
	buf := make([]byte, chunk)
	var written int64
	err := extents(src, size, func(off, end int64) error {
		for off < end {
			n := int(min(int64(len(buf)), end-off))
			if _, err := src.ReadAt(buf[:n], off); err != nil {
				return fmt.Errorf("read %s at %d: %w", src.Name(), off, err)
			}
			// Runs of non-zero pages are written at once.
			for p := 0; p < n; {
				if bytes.Equal(buf[p:min(p+PageSize, n)], zeroPage[:min(PageSize, n-p)]) {
					p += PageSize
					continue
				}
				q := p + PageSize
				for q < n && !bytes.Equal(buf[q:min(q+PageSize, n)], zeroPage[:min(PageSize, n-q)]) {
					q += PageSize
				}
				q = min(q, n)
				if _, err := dst.WriteAt(buf[p:q], off+int64(p)); err != nil {
					return err
				}
				written += int64(q - p)
				p = q
			}
			off += int64(n)
		}
		return nil
	})
	return written, err
}

// CopyData copies src's data extents into dst at the same offsets (dst
// must hold nothing there yet), in the kernel, and returns how many bytes
// it copied. dst's size is left as it is.
func CopyData(dst, src *os.File) (int64, error) {
	st, err := src.Stat()
	if err != nil {
		return 0, err
	}
	var copied int64
	err = extents(src, st.Size(), func(off, end int64) error {
		if _, err := dst.Seek(off, io.SeekStart); err != nil {
			return err
		}
		for in := off; in < end; {
			n, err := unix.Sendfile(int(dst.Fd()), int(src.Fd()), &in, int(min(end-in, 1<<30)))
			if err != nil {
				return fmt.Errorf("copy %s at %d: %w", src.Name(), in, err)
			}
			if n == 0 {
				return fmt.Errorf("copy %s at %d: %w", src.Name(), in, io.ErrUnexpectedEOF)
			}
			copied += int64(n)
		}
		return nil
	})
	return copied, err
}
