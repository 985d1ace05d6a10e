package task

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/qemu-shim/qemu-shim/api/wire"
)

// runcFor returns the OCI runtime of one container: its log goes to the
// bundle, where runcError finds the runtime's own explanation of a
// failure.
func (s *Service) runcFor(c *container) *runc.Runc {
	r := *s.runtimes[c.runtime]
	r.Log = filepath.Join(c.bundle, "log.json")
	return &r
}

// chooseRuntime takes the runtime the host named out of the spec (the
// default when it named none) and checks that the guest has it. Where
// the runtime needs it, the spec is adjusted: crun before 1.14.3 refuses
// a spec whose ociVersion is not 1.0.x ("unknown version specified", a
// check crun has since dropped as useless); it reads the same fields
// either way.
func (s *Service) chooseRuntime(spec *specs.Spec) (string, error) {
	name := s.cfg.DefaultRuntime
	if v, ok := spec.Annotations[wire.OCIRuntimeAnnotation]; ok {
		delete(spec.Annotations, wire.OCIRuntimeAnnotation)
		name = v
	}
	if !slices.Contains(wire.OCIRuntimes, name) {
		return "", fmt.Errorf("OCI runtime %q: want one of %s: %w", name, strings.Join(wire.OCIRuntimes, ", "), errdefs.ErrInvalidArgument)
	}
	if _, ok := s.runtimes[name]; !ok {
		return "", fmt.Errorf("OCI runtime %s is not in the guest's tools: %w", name, errdefs.ErrFailedPrecondition)
	}
	if err := s.checkRuntime(name); err != nil {
		return "", err
	}
	if name == wire.RuntimeCrun && !strings.HasPrefix(spec.Version, "1.0") {
		spec.Version = "1.0.2"
	}
	return name, nil
}

// runcError adds the last error runc logged to its failure.
func runcError(c *container, op string, err error) error {
	if c != nil {
		if msg := lastRuncError(filepath.Join(c.bundle, "log.json")); msg != "" {
			return fmt.Errorf("%s %s: %s: %w", runtimeName(c), op, msg, err)
		}
	}
	return fmt.Errorf("%s %s: %w", runtimeName(c), op, err)
}

// runtimeName names c's runtime in errors.
func runtimeName(c *container) string {
	if c == nil || c.runtime == "" {
		return "OCI runtime"
	}
	return c.runtime
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

// checkRuntime says clearly when there is no runtime to run containers
// with.
func (s *Service) checkRuntime(name string) error {
	if _, err := os.Stat(s.runtimes[name].Command); err != nil {
		return fmt.Errorf("%s is not in the guest (%v): is the tools disk attached?: %w", name, err, errdefs.ErrFailedPrecondition)
	}
	return nil
}
