package wire

// OCIRuntimeAnnotation names, in the spec the host sends, the OCI runtime
// the guest runs the container under (one of OCIRuntimes). The host sets
// it on every spec it sends, replacing any the spec had; the guest drops
// it before the runtime reads the spec.
const OCIRuntimeAnnotation = "qemu-shim.dev/oci-runtime"

// The OCI runtimes on the guest's tools disk: runc-compatible command
// lines, so that one driver (go-runc) drives either.
const (
	RuntimeRunc = "runc"
	RuntimeCrun = "crun"
)

// OCIRuntimes lists the runtimes a host may name.
var OCIRuntimes = []string{RuntimeCrun, RuntimeRunc}
