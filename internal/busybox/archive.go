package busybox

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// DefaultRef is the busybox image the project builds.
const DefaultRef = "qemu-shim.dev/busybox:latest"

// WriteDockerArchive writes the busybox root filesystem as a docker-archive
// tarball (manifest.json, an image config, one layer) that `ctr images
// import` and containerd's client take. The same busybox gives the same
// bytes.
func WriteDockerArchive(w io.Writer, ref string) error {
	return WriteLayeredArchive(w, ref, 0)
}

// LayerFile is the file the i-th extra layer of WriteLayeredArchive adds
// (from 1); it holds the layer's number and a newline.
func LayerFile(i int) string { return fmt.Sprintf("/layers/%03d", i) }

// WriteLayeredArchive writes busybox with extra one-file layers on top
// (LayerFile(1) … LayerFile(extra)), the shape of a real image's stack.
func WriteLayeredArchive(w io.Writer, ref string, extra int) error {
	dir, err := os.MkdirTemp("", "qemu-shim-busybox-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := BusyboxRoot(dir); err != nil {
		return err
	}
	var extras [][]byte
	for i := 1; i <= extra; i++ {
		layer, err := oneFileLayer(LayerFile(i), fmt.Sprintf("%d\n", i))
		if err != nil {
			return err
		}
		extras = append(extras, layer)
	}
	return writeArchive(w, ref, dir, ImageConfig{Cmd: []string{"sh"}}, extras)
}

// ImageConfig is what an image's configuration says about its process.
type ImageConfig struct {
	Entrypoint, Cmd []string
}

// WriteDirArchive writes the directory dir as a one-layer image.
func WriteDirArchive(w io.Writer, ref, dir string, cfg ImageConfig) error {
	return writeArchive(w, ref, dir, cfg, nil)
}

func writeArchive(w io.Writer, ref, dir string, cfg ImageConfig, extras [][]byte) error {
	var base bytes.Buffer
	if err := tarDir(&base, dir); err != nil {
		return err
	}
	layers := append([][]byte{base.Bytes()}, extras...)
	var diffIDs, layerNames []string
	for i, l := range layers {
		sum := sha256.Sum256(l)
		diffIDs = append(diffIDs, "sha256:"+hex.EncodeToString(sum[:]))
		layerNames = append(layerNames, fmt.Sprintf("layer%03d.tar", i))
	}
	process := map[string]any{"Env": []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}}
	if cfg.Entrypoint != nil {
		process["Entrypoint"] = cfg.Entrypoint
	}
	if cfg.Cmd != nil {
		process["Cmd"] = cfg.Cmd
	}
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"created":      "1970-01-01T00:00:00Z",
		"config":       process,
		"rootfs":       map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	if err != nil {
		return err
	}
	configSum := sha256.Sum256(config)
	configName := hex.EncodeToString(configSum[:]) + ".json"
	manifest, err := json.Marshal([]map[string]any{{
		"Config": configName, "RepoTags": []string{ref}, "Layers": layerNames,
	}})
	if err != nil {
		return err
	}
	type file struct {
		name string
		data []byte
	}
	files := []file{{"manifest.json", manifest}, {configName, config}}
	for i, l := range layers {
		files = append(files, file{layerNames[i], l})
	}
	tw := tar.NewWriter(w)
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), ModTime: time.Unix(0, 0), Format: tar.FormatPAX}); err != nil {
			return err
		}
		if _, err := tw.Write(f.data); err != nil {
			return err
		}
	}
	return tw.Close()
}

// oneFileLayer is a layer tarball holding one file (and its directory).
func oneFileLayer(path, content string) ([]byte, error) {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	name := strings.TrimPrefix(path, "/")
	for _, h := range []*tar.Header{
		{Name: filepath.Dir(name) + "/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(content))},
	} {
		h.ModTime, h.Format = time.Unix(0, 0), tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
	}
	if _, err := tw.Write([]byte(content)); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// tarDir writes dir as a layer tarball: sorted, root-owned, fixed times.
func tarDir(w io.Writer, dir string) error {
	var paths []string
	if err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			paths = append(paths, p)
		}
		return nil
	}); err != nil {
		return err
	}
	sort.Strings(paths)
	tw := tar.NewWriter(w)
	for _, p := range paths {
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		link := ""
		if st.Mode()&os.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(st, link)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		h.Name = filepath.ToSlash(rel)
		if st.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		h.ModTime, h.AccessTime, h.ChangeTime = time.Unix(0, 0), time.Time{}, time.Time{}
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("tar %s: %w", p, err)
		}
		if st.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return err
			}
		}
	}
	return tw.Close()
}
