package manager

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// containerd 1.6's start: its shim library's Command puts -namespace,
// -address and -publish-binary before the binary's -id, -debug and start.
var containerd16Args = []string{"-namespace", "ns1", "-address", "/run/c/containerd.sock", "-publish-binary", "/usr/bin/containerd", "-id", "c1", "-debug", "start"}

func TestParseStartFlagsTakesContainerd1Flags(t *testing.T) {
	f, ok := parseStartFlags(containerd16Args)
	if !ok {
		t.Fatal("containerd 1.6's flags do not parse")
	}
	want := startFlags{id: "c1", namespace: "ns1", address: "/run/c/containerd.sock", publishBinary: "/usr/bin/containerd", debug: true, action: "start"}
	if f != want {
		t.Errorf("parsed %+v, want %+v", f, want)
	}
	// containerd 1.x's delete passes -bundle.
	if f, ok := parseStartFlags([]string{"-namespace", "ns1", "-id", "c1", "-bundle", "/b", "delete"}); !ok || f.action != "delete" {
		t.Errorf("delete: %+v %v", f, ok)
	}
	if _, ok := parseStartFlags([]string{"-no-such-flag", "start"}); ok {
		t.Error("an unknown flag parsed")
	}
}

func TestLegacyParams(t *testing.T) {
	f, _ := parseStartFlags(containerd16Args)
	env := map[string]string{"TTRPC_ADDRESS": "/run/c/containerd.sock.ttrpc"}
	getenv := func(k string) string { return env[k] }
	want := &bootapi.BootstrapParams{
		InstanceID: "c1", Namespace: "ns1", LogLevel: bootapi.LogLevel_LOG_LEVEL_DEBUG,
		ContainerdGrpcAddress: "/run/c/containerd.sock", ContainerdTtrpcAddress: "/run/c/containerd.sock.ttrpc",
		ContainerdBinary: "/usr/bin/containerd",
	}
	// containerd 1.x sends nothing, or the runtime's options as an Any,
	// which parses as bootstrap parameters naming another instance.
	opts, err := proto.Marshal(&anypb.Any{TypeUrl: "containerd.runc.v1.Options", Value: []byte("c1")})
	if err != nil {
		t.Fatal(err)
	}
	for name, input := range map[string][]byte{"empty": nil, "options": opts, "garbage": []byte{0xff, 0xff}} {
		if p := legacyParams(f, input, getenv); !proto.Equal(p, want) {
			t.Errorf("%s stdin: %v, want %v", name, p, want)
		}
	}
	// containerd 2.x's own parameters go to the shim library.
	b, _ := proto.Marshal(&bootapi.BootstrapParams{InstanceID: "c1", Namespace: "ns1"})
	if p := legacyParams(f, b, getenv); p != nil {
		t.Errorf("bootstrap parameters taken for a containerd 1.x start: %v", p)
	}
	// The address from the environment when the flag is absent.
	env["GRPC_ADDRESS"] = "/env.sock"
	if p := legacyParams(startFlags{id: "c1", namespace: "ns1"}, nil, getenv); p.ContainerdGrpcAddress != "/env.sock" || p.LogLevel != bootapi.LogLevel_LOG_LEVEL_INFO {
		t.Errorf("no -address: %v", p)
	}
}

// fakeShim records the start it is asked for.
type fakeShim struct {
	params *bootapi.BootstrapParams
	ns     string
}

func (f *fakeShim) Name() string { return "fake" }
func (f *fakeShim) Start(ctx context.Context, p *bootapi.BootstrapParams) (*bootapi.BootstrapResult, error) {
	f.params = p
	f.ns, _ = namespaces.Namespace(ctx)
	return &bootapi.BootstrapResult{Version: 3, Address: "unix:///run/containerd/s/abc", Protocol: "ttrpc"}, nil
}
func (f *fakeShim) Stop(context.Context, string) (shim.StopStatus, error) {
	return shim.StopStatus{}, nil
}
func (f *fakeShim) Info(context.Context, io.Reader) (*types.RuntimeInfo, error) { return nil, nil }

func TestStartLegacyPrintsAndRecordsTheAddress(t *testing.T) {
	bundle := t.TempDir()
	t.Chdir(bundle)
	s := &fakeShim{}
	p := &bootapi.BootstrapParams{InstanceID: "c1", Namespace: "ns1"}
	var out bytes.Buffer
	if err := startLegacy(context.Background(), s, p, &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != "unix:///run/containerd/s/abc" {
		t.Errorf("stdout %q", out.String())
	}
	if s.ns != "ns1" || s.params != p {
		t.Errorf("started in namespace %q with %v", s.ns, s.params)
	}
	if a, err := shim.ReadAddress(filepath.Join(bundle, "address")); err != nil || a != "unix:///run/containerd/s/abc" {
		t.Errorf("address file: %q, %v", a, err)
	}
	if entries, _ := os.ReadDir(bundle); len(entries) != 1 {
		t.Errorf("bundle holds %v", entries)
	}
	if err := startLegacy(context.Background(), s, &bootapi.BootstrapParams{InstanceID: "c1"}, &out); err == nil {
		t.Error("a start without namespace succeeded")
	}
}

func TestReplayGivesStdinBack(t *testing.T) {
	b := bytes.Repeat([]byte("x"), 1<<20) // more than a pipe holds
	r, err := replay(b)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, b) {
		t.Errorf("read back %d bytes, %v", len(got), err)
	}
}
