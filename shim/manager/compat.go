package manager

// The start of a shim by containerd 1.6 and 1.7, which predate the
// bootstrap protocol of containerd 2.3+ that shim.RunShim insists on:
// containerd 1.x writes nothing (or its runtime options) to the start
// helper's stdin, reads the shim's socket address as plain text from its
// combined stdout and stderr, and finds it again in the bundle's address
// file when it restarts or cleans up.

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/v2/pkg/atomicfile"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/protobuf/proto"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/log"
)

// maxStdin is as much of stdin as containerd's shim library reads.
const maxStdin = 10 << 20

// startFlags are the command-line flags containerd passes a shim binary:
// the ones containerd's shim library parses (containerd 1.x passes the
// same, -publish-binary included).
type startFlags struct {
	id, namespace, address, publishBinary string
	debug, info, version                  bool
	action                                string
}

// parseStartFlags reads the flags as containerd's shim library will; ok is
// false when they do not parse, which is the library's to report.
func parseStartFlags(args []string) (f startFlags, ok bool) {
	fs := flag.NewFlagSet("shim", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.BoolVar(&f.debug, "debug", false, "")
	fs.BoolVar(&f.version, "v", false, "")
	fs.BoolVar(&f.version, "version", false, "")
	fs.BoolVar(&f.info, "info", false, "")
	fs.StringVar(&f.namespace, "namespace", "", "")
	fs.StringVar(&f.id, "id", "", "")
	fs.String("socket", "", "")
	fs.String("debug-socket", "", "")
	fs.String("bundle", "", "")
	fs.StringVar(&f.address, "address", "", "")
	fs.StringVar(&f.publishBinary, "publish-binary", "", "")
	if fs.Parse(args) != nil {
		return f, false
	}
	f.action = fs.Arg(0)
	return f, true
}

// legacyParams returns the bootstrap parameters a containerd 1.x start
// amounts to, or nil when input holds containerd 2.x's own (the library's
// test: they parse and name this id and namespace).
func legacyParams(f startFlags, input []byte, getenv func(string) string) *bootapi.BootstrapParams {
	if len(input) > 0 {
		var p bootapi.BootstrapParams
		if proto.Unmarshal(input, &p) == nil && p.InstanceID == f.id && p.Namespace == f.namespace {
			return nil
		}
	}
	p := &bootapi.BootstrapParams{
		InstanceID:             f.id,
		Namespace:              f.namespace,
		ContainerdGrpcAddress:  f.address,
		ContainerdTtrpcAddress: getenv("TTRPC_ADDRESS"),
		ContainerdBinary:       f.publishBinary,
	}
	if p.ContainerdGrpcAddress == "" {
		p.ContainerdGrpcAddress = getenv("GRPC_ADDRESS")
	}
	if f.debug {
		p.LogLevel = bootapi.LogLevel_LOG_LEVEL_DEBUG
	}
	return p
}

// startLegacy starts (or finds) the shim daemon as containerd 1.x asks:
// the address goes to the bundle's (the working directory's) address file
// and, as plain text, to stdout.
func startLegacy(ctx context.Context, s shim.Shim, p *bootapi.BootstrapParams, stdout io.Writer) error {
	if p.Namespace == "" {
		return errors.New("shim namespace cannot be empty")
	}
	ctx = namespaces.WithNamespace(ctx, p.Namespace)
	result, err := s.Start(ctx, p)
	if err != nil {
		return err
	}
	if err := writeAddress("address", result.Address); err != nil {
		return fmt.Errorf("write the address file: %w", err)
	}
	_, err = io.WriteString(stdout, result.Address)
	return err
}

// StartForContainerd1 serves a `start` from containerd 1.x and reports
// true, after which the process is to end; on any other invocation it
// reports false and leaves stdin, as far as it read it, for
// shim.RunShim. A failed start exits as shim.RunShim does.
func StartForContainerd1(ctx context.Context, s shim.Shim, args []string) bool {
	f, ok := parseStartFlags(args)
	if !ok || f.action != "start" || f.info || f.version {
		return false
	}
	input, err := io.ReadAll(io.LimitReader(os.Stdin, maxStdin))
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: read stdin: %s", s.Name(), err)
		os.Exit(1)
	}
	p := legacyParams(f, input, os.Getenv)
	if p == nil {
		if os.Stdin, err = replay(input); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %s", s.Name(), err)
			os.Exit(1)
		}
		return false
	}
	// containerd 1.x reads stdout and stderr together as the address: the
	// start helper's log lines would corrupt it.
	log.L.Logger.SetOutput(io.Discard)
	if err := startLegacy(ctx, s, p, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %s", s.Name(), err)
		os.Exit(1)
	}
	return true
}

// writeAddress writes the address file atomically, as containerd 1.x's
// shim library did (containerd 2.4's has no WriteAddress).
func writeAddress(path, address string) error {
	f, err := atomicfile.New(path, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.WriteString(f, address); err != nil {
		f.Cancel()
		return err
	}
	return f.Close()
}

// replay returns a stdin that holds b again.
func replay(b []byte) (*os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	go func() {
		io.Copy(w, bytes.NewReader(b))
		w.Close()
	}()
	return r, nil
}
