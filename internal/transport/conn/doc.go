// Package conn is how a logical connection to the agent says what it
// carries. Every connection the host opens starts with a short header: the
// TTRPC connection, or a named stdio stream that a later Create or Exec
// refers to as "stream:NAME". On the guest side a Demux sorts accepted
// connections into a net.Listener for TTRPC and a registry of streams.
package conn
