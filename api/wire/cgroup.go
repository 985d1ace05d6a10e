package wire

import (
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// AnyNumber says whether a device cgroup rule's major or minor matches
// every number (unset or -1).
func AnyNumber(n *int64) bool { return n == nil || *n == -1 }

// RuleAccess is the accesses a device cgroup rule names: a subset of
// "rwm", all of them when it names none.
func RuleAccess(r specs.LinuxDeviceCgroup) string {
	if r.Access == "" {
		return "rwm"
	}
	acc := ""
	for _, c := range "rwm" {
		if strings.ContainsRune(r.Access, c) {
			acc += string(c)
		}
	}
	return acc
}

// DeviceAccess is what the rules grant a device of type typ ("b" or "c")
// and numbers major:minor, as the device cgroup reads them: the last rule
// naming an access wins, and nothing is granted unless a rule allows it.
// The host reads the spec's rules with it, and the guest the rules it
// rewrites, so that both read them alike.
func DeviceAccess(rules []specs.LinuxDeviceCgroup, typ string, major, minor int64) string {
	granted := map[rune]bool{}
	for _, r := range rules {
		if r.Type != "" && r.Type != "a" && r.Type != typ {
			continue
		}
		if (!AnyNumber(r.Major) && *r.Major != major) || (!AnyNumber(r.Minor) && *r.Minor != minor) {
			continue
		}
		for _, c := range RuleAccess(r) {
			granted[c] = r.Allow
		}
	}
	acc := ""
	for _, c := range "rwm" {
		if granted[c] {
			acc += string(c)
		}
	}
	return acc
}
