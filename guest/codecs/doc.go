// Package codecs makes ahead of time the codec state that Go's protobuf
// and encoding/json packages build the first time a type is encoded or
// decoded: protobuf's per-message tables and encoding/json's per-struct
// field lists.
//
// A guest does it before it is saved as a template, so every VM restored
// from that template finds the state made. Under an emulator (TCG) this
// matters: no translated code is saved with a template, so making that
// state again in a restored guest runs code translated for the first time,
// and a restored guest's first task call spent tens of milliseconds in it.
package codecs
