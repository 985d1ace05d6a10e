package task

import (
	"context"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsapi "github.com/qemu-shim/qemu-shim/api/events/v1"
)

// DefaultEventRetention is how many events the log keeps for a host that
// is away.
const DefaultEventRetention = 4096

// EventLog numbers events and keeps the most recent ones, so that a host
// that reconnects asks for what followed the last one it saw.
type EventLog struct {
	mu      sync.Mutex
	seq     uint64
	keep    int
	events  []*eventsapi.Envelope
	changed chan struct{}
}

// NewEventLog keeps up to keep events.
func NewEventLog(keep int) *EventLog {
	return &EventLog{keep: keep, changed: make(chan struct{})}
}

// Publish appends an event (one of containerd's event messages).
func (l *EventLog) Publish(topic string, event any) {
	a, err := typeurl.MarshalAnyToProto(event)
	if err != nil {
		log.L.WithError(err).WithField("topic", topic).Error("encode event")
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	l.events = append(l.events, &eventsapi.Envelope{Seq: l.seq, Timestamp: timestamppb.New(time.Now()), Topic: topic, Event: a})
	if len(l.events) > l.keep {
		dropped := l.events[0]
		l.events = l.events[1:]
		log.L.WithField("seq", dropped.Seq).WithField("topic", dropped.Topic).Warn("event log full: dropping the oldest event")
	}
	close(l.changed)
	l.changed = make(chan struct{})
}

// after returns the events numbered above seq, and a channel closed at the
// next Publish.
func (l *EventLog) after(seq uint64) ([]*eventsapi.Envelope, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	i := len(l.events)
	for i > 0 && l.events[i-1].Seq > seq {
		i--
	}
	return append([]*eventsapi.Envelope(nil), l.events[i:]...), l.changed
}

// Stream implements the Events service.
func (l *EventLog) Stream(ctx context.Context, req *eventsapi.StreamRequest, srv eventsapi.Events_StreamServer) error {
	next := req.After
	for {
		batch, changed := l.after(next)
		for _, e := range batch {
			if err := srv.Send(e); err != nil {
				return err
			}
			next = e.Seq
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		}
	}
}
