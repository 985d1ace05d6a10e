// Package layout checks the shape of the tree: which packages may import
// which (cmd/ → shim/ → vm/ → api/ ← guest/, internal/ below them all),
// and that the host's shim binary links no guest code.
package layout

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/qemu-shim/qemu-shim/"

// forbidden lists, for each part of the tree, the parts it must not import.
var forbidden = map[string][]string{
	"shim":     {"guest"},
	"vm":       {"guest", "shim"},
	"api":      {"guest", "shim", "vm", "cmd"},
	"guest":    {"shim", "vm"},
	"internal": {"guest", "shim", "vm", "api", "cmd"},
}

type pkg struct {
	ImportPath string
	Imports    []string
	Deps       []string
	GoFiles    []string
	Dir        string
}

func list(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", "-deps=false", module+"...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// part is the top directory of a package of this module ("shim", "vm"…).
func part(importPath string) string {
	rest, ok := strings.CutPrefix(importPath, module)
	if !ok {
		return ""
	}
	top, _, _ := strings.Cut(rest, "/")
	return top
}

func TestImportDirections(t *testing.T) {
	for _, p := range list(t) {
		from := part(p.ImportPath)
		for _, imp := range p.Imports {
			to := part(imp)
			for _, bad := range forbidden[from] {
				if to == bad {
					t.Errorf("%s imports %s: %s/ must not import %s/", p.ImportPath, imp, from, to)
				}
			}
		}
	}
}

// The shim runs on the host: none of the guest's code belongs in it.
func TestShimLinksNoGuestCode(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", module+"cmd/containerd-shim-qemu-v1", module+"cmd/qemu-shim")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if part(sc.Text()) == "guest" {
			t.Errorf("the host binaries link %s", sc.Text())
		}
	}
}

// maxLines bounds a hand-written Go file; generated code is exempt.
const maxLines = 600

func TestNoFileIsTooLong(t *testing.T) {
	for _, p := range list(t) {
		for _, f := range p.GoFiles {
			path := filepath.Join(p.Dir, f)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(b, []byte("Code generated")) {
				continue
			}
			if n := bytes.Count(b, []byte("\n")); n > maxLines {
				t.Errorf("%s has %d lines (at most %d): split it by what its parts do", path, n, maxLines)
			}
		}
	}
}
