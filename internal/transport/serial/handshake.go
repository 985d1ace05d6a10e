package serial

import (
	"bytes"
	"io"
	"time"

	"github.com/hashicorp/yamux"
)

// Handshake tokens. They all start with a byte that a yamux frame never
// starts with (yamux's version byte is 0), so the host can tell leftover
// tokens from session data.
var (
	tokenPing  = []byte("QSH-PING")
	tokenReady = []byte("QSH-REDY")
	tokenStart = []byte("QSH-STRT")
)

const tokenLen = 8

// PortName is the virtio-serial port name the host gives the agent's port.
const PortName = "org.qemu-shim.agent.0"

// pingInterval is how often the host repeats its ping until the guest answers.
const pingInterval = 20 * time.Millisecond

// scanFor reads from r until the token has gone by, calling onOther for each
// other token seen on the way (tokens may arrive split or after lost bytes,
// so it slides a window byte by byte).
func scanFor(r io.Reader, want []byte, onOther func(tok []byte) error) error {
	window := make([]byte, 0, tokenLen)
	buf := make([]byte, 1)
	for {
		n, err := r.Read(buf)
		if n == 1 {
			if len(window) == tokenLen {
				copy(window, window[1:])
				window = window[:tokenLen-1]
			}
			window = append(window, buf[0])
			if len(window) == tokenLen {
				if bytes.Equal(window, want) {
					return nil
				}
				if onOther != nil && window[0] == 'Q' {
					for _, t := range [][]byte{tokenPing, tokenReady, tokenStart} {
						if bytes.Equal(window, t) {
							if err := onOther(t); err != nil {
								return err
							}
							window = window[:0]
							break
						}
					}
				}
			}
		}
		if err != nil {
			return err
		}
	}
}

func yamuxConfig() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	cfg.EnableKeepAlive = false
	cfg.StreamOpenTimeout = 10 * time.Second
	cfg.MaxStreamWindowSize = 1 << 20
	return cfg
}
