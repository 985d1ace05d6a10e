package vm

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestCheckID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"crash", true},
		{"default_pod1-0123456789abcdef", true},
		{strings.Repeat("a", 64), true},
		{strings.Repeat("a", 65), false},
		{"", false},
		{"-x", false},
		{"a/b", false},
		{"..", false},
		{CIDLeaseDirName, false}, // the CID leases' directory under the state root
	} {
		err := CheckID(tc.id)
		if tc.ok != (err == nil) || err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("CheckID(%q) = %v, want ok %v", tc.id, err, tc.ok)
		}
		// New checks it first.
		if _, err := New(Config{ID: tc.id}); !tc.ok && (err == nil || !strings.Contains(err.Error(), "id ")) {
			t.Errorf("New with id %q: %v", tc.id, err)
		}
	}
}
