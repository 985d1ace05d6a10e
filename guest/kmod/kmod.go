package kmod

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// Module is one entry of modules.dep.
type Module struct {
	Name string
	// Path is relative to the modules directory.
	Path string
	// Deps are the names of the modules it needs loaded first.
	Deps []string
}

// Name turns a module's file path into its name, as the kernel spells it.
func Name(path string) string {
	base := filepath.Base(path)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		base = strings.TrimSuffix(base, ext)
	}
	return strings.ReplaceAll(strings.TrimSuffix(base, ".ko"), "-", "_")
}

// ParseDep reads a modules.dep file.
func ParseDep(r io.Reader) (map[string]*Module, error) {
	mods := map[string]*Module{}
	s := bufio.NewScanner(r)
	for line := 1; s.Scan(); line++ {
		text := strings.TrimSpace(s.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		path, deps, ok := strings.Cut(text, ":")
		if !ok {
			return nil, fmt.Errorf("modules.dep line %d: no colon in %q", line, text)
		}
		m := &Module{Name: Name(path), Path: strings.TrimSpace(path)}
		for _, d := range strings.Fields(deps) {
			m.Deps = append(m.Deps, Name(d))
		}
		mods[m.Name] = m
	}
	return mods, s.Err()
}

// Order returns the modules to load, dependencies first, for the given names
// (all modules when names is empty). Each module appears once.
func Order(mods map[string]*Module, names []string) ([]*Module, error) {
	names = slices.Clone(names)
	if len(names) == 0 {
		for n := range mods {
			names = append(names, n)
		}
	}
	// Sort for a stable order between boots.
	slices.Sort(names)
	var (
		out   []*Module
		done  = map[string]bool{}
		stack = map[string]bool{}
		visit func(string) error
	)
	visit = func(n string) error {
		if done[n] {
			return nil
		}
		m, ok := mods[n]
		if !ok {
			return fmt.Errorf("module %s is not in modules.dep", n)
		}
		if stack[n] {
			return fmt.Errorf("module %s depends on itself", n)
		}
		stack[n] = true
		for _, d := range m.Deps {
			if err := visit(d); err != nil {
				return fmt.Errorf("%s: %w", n, err)
			}
		}
		stack[n] = false
		done[n] = true
		out = append(out, m)
		return nil
	}
	for _, n := range names {
		if err := visit(n); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// OptionsFile, beside modules.dep, holds the parameters modules are loaded
// with, as modprobe.d's "options NAME PARAM=VALUE..." lines.
const OptionsFile = "modules.options"

// ParseOptions reads an options file: module name → its parameters.
func ParseOptions(r io.Reader) (map[string]string, error) {
	opts := map[string]string{}
	s := bufio.NewScanner(r)
	for line := 1; s.Scan(); line++ {
		f := strings.Fields(s.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if f[0] != "options" || len(f) < 3 {
			return nil, fmt.Errorf("%s line %d: want \"options NAME PARAM=VALUE...\", got %q", OptionsFile, line, s.Text())
		}
		name := strings.ReplaceAll(f[1], "-", "_")
		opts[name] = strings.TrimSpace(opts[name] + " " + strings.Join(f[2:], " "))
	}
	return opts, s.Err()
}

// Load loads one module file with the given parameters ("" for none); a
// module already loaded is not an error.
func Load(path, params string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("load module: %w", err)
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), params, 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load module %s: %w", path, err)
	}
	return nil
}

// Loader loads modules from one modules directory, each at most once.
type Loader struct {
	Dir    string
	mods   map[string]*Module
	opts   map[string]string
	loaded map[string]bool
}

// NewLoader reads Dir/modules.dep, and Dir/modules.options if there is one.
func NewLoader(dir string) (*Loader, error) {
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("read module dependencies: %w", err)
	}
	defer f.Close()
	mods, err := ParseDep(f)
	if err != nil {
		return nil, err
	}
	opts := map[string]string{}
	if o, err := os.Open(filepath.Join(dir, OptionsFile)); err == nil {
		defer o.Close()
		if opts, err = ParseOptions(o); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read module options: %w", err)
	}
	return &Loader{Dir: dir, mods: mods, opts: opts, loaded: map[string]bool{}}, nil
}

// Has says whether the module is available.
func (l *Loader) Has(name string) bool { _, ok := l.mods[name]; return ok }

// Load loads the named modules and their dependencies (all when none are
// named) and returns the names it loaded.
func (l *Loader) Load(names ...string) ([]string, error) {
	order, err := Order(l.mods, names)
	if err != nil {
		return nil, err
	}
	var loaded []string
	for _, m := range order {
		if l.loaded[m.Name] {
			continue
		}
		began := time.Now()
		if err := Load(filepath.Join(l.Dir, m.Path), l.opts[m.Name]); err != nil {
			return loaded, err
		}
		log.L.WithField("module", m.Name).WithField("took", time.Since(began)).Debug("module loaded")
		l.loaded[m.Name] = true
		loaded = append(loaded, m.Name)
	}
	return loaded, nil
}
