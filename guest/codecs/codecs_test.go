package codecs

import (
	"testing"

	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"
)

func TestProtobufGoesThroughTheNamedPackages(t *testing.T) {
	_ = ttrpc.Request{}
	_ = anypb.Any{}
	if n := Protobuf("ttrpc."); n < 2 {
		t.Errorf("ttrpc.: went through %d messages, want at least Request and Response", n)
	}
	if n := Protobuf("no.such.package."); n != 0 {
		t.Errorf("an unknown package: went through %d messages, want 0", n)
	}
	all, some := Protobuf("ttrpc.", "google.protobuf."), Protobuf("google.protobuf.")
	if all <= some {
		t.Errorf("two prefixes went through %d messages, one of them alone %d", all, some)
	}
}

func TestJSONTakesPointersToStructs(t *testing.T) {
	if err := JSON(&specs.Spec{}, &specs.Process{}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []any{specs.Spec{}, new(int), nil} {
		if err := JSON(bad); err == nil {
			t.Errorf("JSON(%#v) took it", bad)
		}
	}
}
