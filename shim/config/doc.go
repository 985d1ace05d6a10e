// Package config is the shim's configuration: a TOML file whose documented
// defaults are embedded in the binary, per-container overrides by
// annotation, and the VM size a container's spec asks for.
package config
