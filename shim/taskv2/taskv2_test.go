package taskv2

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	v2 "github.com/containerd/containerd/api/runtime/task/v2"
	v3 "github.com/containerd/containerd/api/runtime/task/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/emptypb"
)

// The claim the package rests on: every v2 message has the fields of its
// v3 namesake, number for number, and the services the same methods.
func TestV2AndV3DefineTheSameMessages(t *testing.T) {
	f2, f3 := v2.File_runtime_task_v2_shim_proto, v3.File_runtime_task_v3_shim_proto
	if f2.Messages().Len() != f3.Messages().Len() {
		t.Fatalf("%d messages in v2, %d in v3", f2.Messages().Len(), f3.Messages().Len())
	}
	for i := 0; i < f2.Messages().Len(); i++ {
		m2 := f2.Messages().Get(i)
		m3 := f3.Messages().ByName(m2.Name())
		if m3 == nil {
			t.Errorf("v3 has no %s", m2.Name())
			continue
		}
		sameFields(t, m2, m3)
	}
	s2, s3 := f2.Services().Get(0), f3.Services().Get(0)
	if s2.Methods().Len() != s3.Methods().Len() {
		t.Fatalf("%d methods in v2, %d in v3", s2.Methods().Len(), s3.Methods().Len())
	}
	for i := 0; i < s2.Methods().Len(); i++ {
		m2 := s2.Methods().Get(i)
		m3 := s3.Methods().ByName(m2.Name())
		if m3 == nil || m2.Input().Name() != m3.Input().Name() || m2.Output().Name() != m3.Output().Name() ||
			m2.IsStreamingClient() != m3.IsStreamingClient() || m2.IsStreamingServer() != m3.IsStreamingServer() {
			t.Errorf("method %s differs: v2 %v, v3 %v", m2.Name(), m2, m3)
		}
	}
}

func sameFields(t *testing.T, m2, m3 protoreflect.MessageDescriptor) {
	t.Helper()
	if m2.Fields().Len() != m3.Fields().Len() {
		t.Errorf("%s: %d fields in v2, %d in v3", m2.Name(), m2.Fields().Len(), m3.Fields().Len())
		return
	}
	for j := 0; j < m2.Fields().Len(); j++ {
		a := m2.Fields().Get(j)
		b := m3.Fields().ByNumber(a.Number())
		if b == nil || a.Name() != b.Name() || a.Kind() != b.Kind() || a.Cardinality() != b.Cardinality() || a.IsMap() != b.IsMap() {
			t.Errorf("%s field %d: v2 %v, v3 %v", m2.Name(), a.Number(), a, b)
			continue
		}
		if a.Message() != nil && strings.TrimPrefix(string(a.Message().FullName()), "containerd.task.v2.") != strings.TrimPrefix(string(b.Message().FullName()), "containerd.task.v3.") {
			t.Errorf("%s.%s: v2 type %s, v3 type %s", m2.Name(), a.Name(), a.Message().FullName(), b.Message().FullName())
		}
	}
}

// fill sets every field of m, nested messages' too, to something other
// than its zero value.
func fill(m protoreflect.Message, depth int) {
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		switch {
		case fd.IsMap():
			mp := m.Mutable(fd).Map()
			mp.Set(scalar(fd.MapKey(), 1).MapKey(), valueFor(mp.NewValue, fd.MapValue(), depth))
		case fd.IsList():
			l := m.Mutable(fd).List()
			l.Append(valueFor(l.NewElement, fd, depth))
			l.Append(valueFor(l.NewElement, fd, depth))
		case fd.Message() != nil:
			if depth > 0 {
				fill(m.Mutable(fd).Message(), depth-1)
			}
		default:
			m.Set(fd, scalar(fd, i+1))
		}
	}
}

func valueFor(newValue func() protoreflect.Value, fd protoreflect.FieldDescriptor, depth int) protoreflect.Value {
	if fd.Message() == nil {
		return scalar(fd, 2)
	}
	v := newValue()
	if depth > 0 {
		fill(v.Message(), depth-1)
	}
	return v
}

func scalar(fd protoreflect.FieldDescriptor, n int) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.EnumKind:
		vals := fd.Enum().Values()
		return protoreflect.ValueOfEnum(vals.Get(vals.Len() - 1).Number())
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(int32(-n))
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(int64(-n) << 33)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(uint32(n + 100))
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(uint64(n) << 40)
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(float32(n) + 0.5)
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(float64(n) + 0.25)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(string(fd.Name()) + "-" + strings.Repeat("x", n))
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte{byte(n), 0xfe})
	}
	panic("kind " + fd.Kind().String())
}

// hasUnknown reports whether m, or a message in it, holds fields its type
// does not know.
func hasUnknown(m protoreflect.Message) bool {
	if len(m.GetUnknown()) > 0 {
		return true
	}
	unknown := false
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() != nil {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					unknown = unknown || hasUnknown(mv.Message())
					return !unknown
				})
			}
		case fd.IsList():
			if fd.Message() != nil {
				for i := 0; i < v.List().Len(); i++ {
					unknown = unknown || hasUnknown(v.List().Get(i).Message())
				}
			}
		case fd.Message() != nil:
			unknown = unknown || hasUnknown(v.Message())
		}
		return !unknown
	})
	return unknown
}

func wire(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fake is a v3 task service that records each request and answers with a
// response whose every field is set.
type fake struct {
	got    proto.Message
	method string
	sent   proto.Message
	err    error
}

func answer[Out proto.Message](f *fake, method string, r proto.Message) (Out, error) {
	f.got, f.method = r, method
	var zero Out
	if f.err != nil {
		return zero, f.err
	}
	out := zero.ProtoReflect().Type().New()
	fill(out, 4)
	f.sent = out.Interface()
	return f.sent.(Out), nil
}

func (f *fake) State(_ context.Context, r *v3.StateRequest) (*v3.StateResponse, error) {
	return answer[*v3.StateResponse](f, "State", r)
}
func (f *fake) Create(_ context.Context, r *v3.CreateTaskRequest) (*v3.CreateTaskResponse, error) {
	return answer[*v3.CreateTaskResponse](f, "Create", r)
}
func (f *fake) Start(_ context.Context, r *v3.StartRequest) (*v3.StartResponse, error) {
	return answer[*v3.StartResponse](f, "Start", r)
}
func (f *fake) Delete(_ context.Context, r *v3.DeleteRequest) (*v3.DeleteResponse, error) {
	return answer[*v3.DeleteResponse](f, "Delete", r)
}
func (f *fake) Pids(_ context.Context, r *v3.PidsRequest) (*v3.PidsResponse, error) {
	return answer[*v3.PidsResponse](f, "Pids", r)
}
func (f *fake) Pause(_ context.Context, r *v3.PauseRequest) (*emptypb.Empty, error) {
	return answer[*emptypb.Empty](f, "Pause", r)
}
func (f *fake) Resume(_ context.Context, r *v3.ResumeRequest) (*emptypb.Empty, error) {
	return answer[*emptypb.Empty](f, "Resume", r)
}
func (f *fake) Checkpoint(_ context.Context, r *v3.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return answer[*emptypb.Empty](f, "Checkpoint", r)
}
func (f *fake) Kill(_ context.Context, r *v3.KillRequest) (*emptypb.Empty, error) {
	return answer[*emptypb.Empty](f, "Kill", r)
}
func (f *fake) Exec(_ context.Context, r *v3.ExecProcessRequest) (*emptypb.Empty, error) {
	return answer[*emptypb.Empty](f, "Exec", r)
}
func (f *fake) ResizePty(_ context.Context, r *v3.ResizePtyRequest) (*emptypb.Empty, error) {
	return answer[*emptypb.Empty](f, "ResizePty", r)
}
func (f *fake) CloseIO(_ context.Context, r *v3.CloseIORequest) (*emptypb.Empty, error) {
	return answer[*emptypb.Empty](f, "CloseIO", r)
}
func (f *fake) Update(_ context.Context, r *v3.UpdateTaskRequest) (*emptypb.Empty, error) {
	return answer[*emptypb.Empty](f, "Update", r)
}
func (f *fake) Wait(_ context.Context, r *v3.WaitRequest) (*v3.WaitResponse, error) {
	return answer[*v3.WaitResponse](f, "Wait", r)
}
func (f *fake) Stats(_ context.Context, r *v3.StatsRequest) (*v3.StatsResponse, error) {
	return answer[*v3.StatsResponse](f, "Stats", r)
}
func (f *fake) Connect(_ context.Context, r *v3.ConnectRequest) (*v3.ConnectResponse, error) {
	return answer[*v3.ConnectResponse](f, "Connect", r)
}
func (f *fake) Shutdown(_ context.Context, r *v3.ShutdownRequest) (*emptypb.Empty, error) {
	return answer[*emptypb.Empty](f, "Shutdown", r)
}

// Every v2 method reaches its v3 namesake with the request as sent, every
// field of it, and answers with the v3 response as given, every field of
// it; errors pass through as they are.
func TestEveryMethodConvertsRequestAndResponse(t *testing.T) {
	api := reflect.TypeOf((*v2.TTRPCTaskService)(nil)).Elem()
	if api.NumMethod() != 17 {
		t.Errorf("the v2 task API has %d methods, the test knows 17", api.NumMethod())
	}
	for i := 0; i < api.NumMethod(); i++ {
		name := api.Method(i).Name
		t.Run(name, func(t *testing.T) {
			f := &fake{}
			method := reflect.ValueOf(New(f)).MethodByName(name)
			req := reflect.New(method.Type().In(1).Elem()).Interface().(proto.Message)
			fill(req.ProtoReflect(), 4)
			out := method.Call([]reflect.Value{reflect.ValueOf(context.Background()), reflect.ValueOf(req)})
			if err, _ := out[1].Interface().(error); err != nil {
				t.Fatal(err)
			}
			if f.method != name {
				t.Fatalf("v2 %s called v3 %s", name, f.method)
			}
			if got, want := f.got.ProtoReflect().Descriptor().FullName(), protoreflect.FullName("containerd.task.v3."+req.ProtoReflect().Descriptor().Name()); got != want {
				t.Errorf("v3 got a %s, want %s", got, want)
			}
			if hasUnknown(f.got.ProtoReflect()) {
				t.Errorf("the v3 request has fields its type does not know: %v", f.got)
			}
			if !bytes.Equal(wire(t, f.got), wire(t, req)) {
				t.Errorf("request changed on the way:\nv2 %v\nv3 %v", req, f.got)
			}
			resp := out[0].Interface().(proto.Message)
			if resp.ProtoReflect().Descriptor().FullName() != "google.protobuf.Empty" {
				if got := resp.ProtoReflect().Descriptor().FullName().Parent(); got != "containerd.task.v2" {
					t.Errorf("response is a %s", resp.ProtoReflect().Descriptor().FullName())
				}
				if hasUnknown(resp.ProtoReflect()) {
					t.Errorf("the v2 response has fields its type does not know: %v", resp)
				}
			}
			if !bytes.Equal(wire(t, resp), wire(t, f.sent)) {
				t.Errorf("response changed on the way:\nv3 %v\nv2 %v", f.sent, resp)
			}
			if len(wire(t, req)) == 0 && name != "Shutdown" && name != "Connect" {
				t.Errorf("the filled %T is empty", req)
			}

			f.err = errors.New("boom")
			out = method.Call([]reflect.Value{reflect.ValueOf(context.Background()), reflect.ValueOf(req)})
			if err, _ := out[1].Interface().(error); err != f.err {
				t.Errorf("error %v, want %v", err, f.err)
			}
		})
	}
}
