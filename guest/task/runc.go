package task

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
)

// runcFor returns the runc of one container: its log goes to the bundle,
// where runcError finds runc's own explanation of a failure.
func (s *Service) runcFor(c *container) *runc.Runc {
	r := *s.runc
	r.Log = filepath.Join(c.bundle, "log.json")
	return &r
}

// runcError adds the last error runc logged to its failure.
func runcError(c *container, op string, err error) error {
	if c != nil {
		if msg := lastRuncError(filepath.Join(c.bundle, "log.json")); msg != "" {
			return fmt.Errorf("runc %s: %s: %w", op, msg, err)
		}
	}
	return fmt.Errorf("runc %s: %w", op, err)
}

// lastRuncError reads the last error line of a runc JSON log (its last
// 64 KiB, the log being runc's, not trusted to be small).
func lastRuncError(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > 64<<10 {
		f.Seek(st.Size()-64<<10, 0)
	}
	b, _ := io.ReadAll(io.LimitReader(f, 64<<10))
	msg := ""
	for _, line := range strings.Split(string(b), "\n") {
		var entry struct{ Level, Msg string }
		if json.Unmarshal([]byte(line), &entry) == nil && entry.Level == "error" {
			msg = entry.Msg
		}
	}
	return msg
}

// debugTook logs, at debug level, how long a step took: the cold start's
// breakdown (see test/bench's trace section) reads these.
func debugTook(ctx context.Context, what string, began time.Time) {
	log.G(ctx).WithField("took", time.Since(began)).Debug(what)
}

// checkRunc says clearly when there is no runc to run containers with.
func (s *Service) checkRunc() error {
	if _, err := os.Stat(s.cfg.Runc); err != nil {
		return fmt.Errorf("runc is not in the guest (%v): is the tools disk attached?: %w", err, errdefs.ErrFailedPrecondition)
	}
	return nil
}
