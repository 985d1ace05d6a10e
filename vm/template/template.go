// Package template keeps VM templates: for each shape of VM (vm.ShapeKey)
// a guest booted once, readied and saved, from which later VMs of that
// shape are restored instead of booted. Templates are built on first use,
// under a lock so that concurrent shims build each one once, into a
// temporary directory renamed into place whole; a template whose inputs
// changed is simply another key, and unused ones are pruned.
package template

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/qemu-shim/qemu-shim/vm"
)

// DefaultDir is where templates are kept.
const DefaultDir = "/var/lib/qemu-shim/templates"

// Names inside a template's directory.
const (
	infoName   = "template.json"
	brokenName = "broken"
	lockSuffix = ".lock"
	buildInfix = ".build-"
)

// buildTimeout bounds a template's boot and save.
var buildTimeout = 3 * time.Minute

var validKey = regexp.MustCompile(`^[0-9a-f]{24}$`)

// Store is a directory of templates.
type Store struct {
	// Dir holds one directory per template (DefaultDir).
	Dir string
	// MaxAge, when set, is how long a template nobody restored from is
	// kept; Prune removes older ones.
	MaxAge time.Duration
}

// Info describes a built template.
type Info struct {
	Key string `json:"key"`
	// Built is when it was saved; Boot and Save how long that took.
	Built time.Time     `json:"built"`
	Boot  time.Duration `json:"boot_ns"`
	Save  time.Duration `json:"save_ns"`
	// Bytes is what the saved state takes on disk.
	Bytes int64 `json:"bytes"`
	// Kernel, Initrd, Tools and QEMU are what it was started from.
	Kernel string `json:"kernel"`
	Initrd string `json:"initrd"`
	Tools  string `json:"tools"`
	QEMU   string `json:"qemu"`
	CPUs   int    `json:"cpus"`
	Memory int    `json:"memory_mib"`
	// LastUsed is when a VM was last restored from it (read from the
	// state file's access stamp, set at each use).
	LastUsed time.Time `json:"-"`
	// Broken, when set, says why restoring it failed: it is no longer
	// used until removed.
	Broken string `json:"-"`
}

// Get returns the directory of the template for cfg's shape (a saved VM
// for vm.Config.Restore), building the
// template first when there is none. cfg must be templatable (see
// vm.Config.Templatable). A template marked broken is an error
// (FailedPrecondition), not rebuilt: remove it to try again.
func (s *Store) Get(ctx context.Context, cfg vm.Config) (string, error) {
	key, err := vm.ShapeKey(cfg)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(s.Dir, key)
	if state, err := s.ready(key); err == nil || !errors.Is(err, errdefs.ErrNotFound) {
		return state, err
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return "", fmt.Errorf("template directory: %w", err)
	}
	unlock, err := lock(ctx, filepath.Join(s.Dir, key+lockSuffix))
	if err != nil {
		return "", err
	}
	// Pruned once the lock is let go, so that what a dead builder of this
	// key left goes too.
	defer s.Prune(ctx)
	defer unlock()
	// Another shim may have built it while this one waited.
	if state, err := s.ready(key); err == nil || !errors.Is(err, errdefs.ErrNotFound) {
		return state, err
	}
	if err := s.build(ctx, cfg, key); err != nil {
		return "", fmt.Errorf("build template %s: %w", key, err)
	}
	return dir, nil
}

// ready returns the directory of a built template, marking it used.
func (s *Store) ready(key string) (string, error) {
	dir := filepath.Join(s.Dir, key)
	if b, err := os.ReadFile(filepath.Join(dir, brokenName)); err == nil {
		return "", fmt.Errorf("template %s is broken (%s): remove it ('qemu-shim template rm %s') to build it again: %w",
			key, strings.TrimSpace(string(b)), key, errdefs.ErrFailedPrecondition)
	}
	state := filepath.Join(dir, vm.SavedStateName)
	now := time.Now()
	if err := os.Chtimes(state, now, time.Time{}); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("template %s: %w", key, errdefs.ErrNotFound)
		}
		return "", fmt.Errorf("template %s: %w", key, err)
	}
	return dir, nil
}

// build boots a VM of cfg's shape, saves it and moves it into place.
func (s *Store) build(ctx context.Context, cfg vm.Config, key string) (retErr error) {
	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	tmp, err := os.MkdirTemp(s.Dir, buildInfix+key+"-")
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			os.RemoveAll(tmp)
		}
	}()
	cfg.ID = "template-" + key[:12]
	cfg.Restore, cfg.Share, cfg.ForTemplate = "", nil, true
	inst, err := vm.New(cfg)
	if err != nil {
		return err
	}
	l := log.G(ctx).WithField("template", key)
	l.Info("building a VM template: booting its guest")
	begin := time.Now()
	if err := inst.Start(ctx); err != nil {
		return err
	}
	defer inst.Kill(context.WithoutCancel(ctx))
	booted := time.Now()
	if err := inst.SaveState(ctx, tmp); err != nil {
		return err
	}
	var size int64
	for _, name := range []string{vm.SavedStateName, vm.SavedMemoryName} {
		st, err := os.Stat(filepath.Join(tmp, name))
		if err != nil {
			return err
		}
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			size += sys.Blocks * 512
		}
	}
	info := Info{Key: key, Built: time.Now(), Boot: booted.Sub(begin), Save: time.Since(booted), Bytes: size,
		Kernel: cfg.Kernel, Initrd: cfg.Initrd, Tools: cfg.Tools, QEMU: cfg.QEMU, CPUs: cfg.CPUs, Memory: cfg.MemoryMiB}
	b, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, infoName), b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(s.Dir, key)); err != nil {
		return err
	}
	l.WithField("boot", info.Boot).WithField("save", info.Save).WithField("bytes", info.Bytes).Info("VM template built")
	return nil
}

// MarkBroken records why restoring the template in dir (as Get returned it)
// failed: the template is not used again until it is removed.
func (s *Store) MarkBroken(dir, why string) error {
	if filepath.Dir(dir) != filepath.Clean(s.Dir) || !validKey.MatchString(filepath.Base(dir)) {
		return fmt.Errorf("%s is not a template of %s: %w", dir, s.Dir, errdefs.ErrInvalidArgument)
	}
	return os.WriteFile(filepath.Join(dir, brokenName), []byte(why+"\n"), 0o600)
}

// List returns the built templates.
func (s *Store) List() ([]Info, error) {
	entries, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Info
	for _, e := range entries {
		if !e.IsDir() || !validKey.MatchString(e.Name()) {
			continue
		}
		dir := filepath.Join(s.Dir, e.Name())
		info := Info{Key: e.Name()}
		if b, err := os.ReadFile(filepath.Join(dir, infoName)); err == nil {
			json.Unmarshal(b, &info)
		}
		if b, err := os.ReadFile(filepath.Join(dir, brokenName)); err == nil {
			info.Broken = strings.TrimSpace(string(b))
		}
		if st, err := os.Stat(filepath.Join(dir, vm.SavedStateName)); err == nil {
			info.LastUsed = accessTime(st)
		}
		out = append(out, info)
	}
	return out, nil
}

// Remove deletes the template key. A VM restoring from it keeps reading
// the state it opened.
func (s *Store) Remove(key string) error {
	if !validKey.MatchString(key) {
		return fmt.Errorf("template %q: want the 24 hexadecimal digits 'qemu-shim template ls' shows: %w", key, errdefs.ErrInvalidArgument)
	}
	dir := filepath.Join(s.Dir, key)
	if _, err := os.Stat(dir); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("template %s: %w", key, errdefs.ErrNotFound)
		}
		return err
	}
	// Moved aside first, so that no shim finds it half removed.
	gone := filepath.Join(s.Dir, buildInfix+key+"-removed")
	os.RemoveAll(gone)
	if err := os.Rename(dir, gone); err != nil {
		return err
	}
	return os.RemoveAll(gone)
}

// Prune removes templates nobody restored from for MaxAge, and builds that
// a dead builder left (no one holds their lock).
func (s *Store) Prune(ctx context.Context) {
	entries, err := os.ReadDir(s.Dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasPrefix(name, buildInfix):
			key, _, _ := strings.Cut(strings.TrimPrefix(name, buildInfix), "-")
			if unlock, err := tryLock(filepath.Join(s.Dir, key+lockSuffix)); err == nil {
				os.RemoveAll(filepath.Join(s.Dir, name))
				unlock()
			}
		case validKey.MatchString(name) && s.MaxAge > 0:
			st, err := os.Stat(filepath.Join(s.Dir, name, vm.SavedStateName))
			if err != nil || time.Since(accessTime(st)) < s.MaxAge {
				continue
			}
			log.G(ctx).WithField("template", name).Info("removing a VM template unused for " + s.MaxAge.String())
			s.Remove(name)
			os.Remove(filepath.Join(s.Dir, name+lockSuffix))
		}
	}
}

func accessTime(st os.FileInfo) time.Time {
	if sys, ok := st.Sys().(*unix.Stat_t); ok {
		return time.Unix(sys.Atim.Unix())
	}
	return st.ModTime()
}

// lock takes an exclusive flock on path, waiting until ctx ends.
func lock(ctx context.Context, path string) (func(), error) {
	for {
		unlock, err := tryLock(path)
		if err == nil {
			return unlock, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for another shim building the template (%s): %w", path, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func tryLock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}
