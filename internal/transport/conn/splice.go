package conn

import (
	"io"
	"net"
	"sync"
)

// closeWriter is a connection that can end its sending half alone.
type closeWriter interface{ CloseWrite() error }

// Splice copies between a and b in both directions until both have ended,
// passing each end of file on as a half close where the connection allows
// (a stream of stdin ends while its output still flows), then closes both.
func Splice(a, b net.Conn) {
	var wg sync.WaitGroup
	half := func(dst, src net.Conn) {
		defer wg.Done()
		io.Copy(dst, src)
		if cw, ok := dst.(closeWriter); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
	}
	wg.Add(2)
	go half(a, b)
	go half(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}
