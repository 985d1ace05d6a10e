package codecs

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// Protobuf makes the encoding tables of every registered protobuf message
// whose full name starts with one of prefixes (a package such as
// "containerd.task.v3."), by encoding an empty one and decoding it back.
// It returns how many messages it went through.
func Protobuf(prefixes ...string) int {
	n := 0
	protoregistry.GlobalTypes.RangeMessages(func(mt protoreflect.MessageType) bool {
		name := string(mt.Descriptor().FullName())
		for _, p := range prefixes {
			if strings.HasPrefix(name, p) {
				m := mt.New().Interface()
				if b, err := proto.Marshal(m); err == nil {
					proto.Unmarshal(b, mt.New().Interface())
				}
				n++
				break
			}
		}
		return true
	})
	return n
}

// JSON makes encoding/json's field lists of each value's type and of
// every type it holds, by encoding the value and decoding the result into
// a new one. Each value must be a pointer to a struct.
func JSON(values ...any) error {
	for _, v := range values {
		t := reflect.TypeOf(v)
		if t == nil || t.Kind() != reflect.Pointer || t.Elem().Kind() != reflect.Struct {
			return fmt.Errorf("codecs: %T is not a pointer to a struct", v)
		}
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("codecs: encode %T: %w", v, err)
		}
		if err := json.Unmarshal(b, reflect.New(t.Elem()).Interface()); err != nil {
			return fmt.Errorf("codecs: decode %T: %w", v, err)
		}
	}
	return nil
}
