// The nano peer of the benchmarks: the bench routes of session-proxy's
// bench app (chat.benchHandler.echo, set, login, join, fanout) on nano in
// cluster mode, as in its cluster example: a master, a gate that clients
// reach over TCP (the Pomelo package format), and a chat member that the
// gate forwards to over gRPC.
//
//	nano-peer -role master -listen 127.0.0.1:34567
//	nano-peer -role chat -listen 127.0.0.1:34580 -master 127.0.0.1:34567
//	nano-peer -role gate -listen 127.0.0.1:34570 -client 127.0.0.1:4500 -master 127.0.0.1:34567
//
// nano keeps a session's state on the node that sets it and binds uids
// there too: nothing goes back to the gate. So its set and login rows do
// less work than session-proxy's, Pinus's and Pitaya's, which send the
// change back to the frontend that owns the session.
package main

import (
	"flag"
	"hash/fnv"
	"io"
	"log"
	"sync"
	"unicode"

	"github.com/lonng/nano"
	"github.com/lonng/nano/component"
	"github.com/lonng/nano/serialize/json"
	"github.com/lonng/nano/session"
)

// Bench holds the routes, on the chat member.
type Bench struct {
	component.Base
	mu     sync.Mutex
	groups map[string]*nano.Group
}

// Ok is the answer of the routes that change something.
type Ok struct {
	Code int `json:"code"`
}

// SetMsg is set's body.
type SetMsg struct {
	Key   string      `json:"key"`
	Value interface{} `json:"value"`
}

// LoginMsg is login's body.
type LoginMsg struct {
	UID string `json:"uid"`
}

// ChannelMsg is join's and fanout's body.
type ChannelMsg struct {
	Channel string `json:"channel"`
	Msg     uint64 `json:"msg"`
}

// Fanout is what the members of a channel are pushed.
type Fanout struct {
	Msg uint64 `json:"msg"`
}

// Joined is join's answer.
type Joined struct {
	Code    int `json:"code"`
	Members int `json:"members"`
}

// Echo answers its body as it came.
func (b *Bench) Echo(s *session.Session, msg []byte) error {
	return s.Response(msg)
}

// Set sets a key on the session.
func (b *Bench) Set(s *session.Session, msg *SetMsg) error {
	key := msg.Key
	if key == "" {
		key = "k"
	}
	s.Set(key, msg.Value)
	return s.Response(&Ok{Code: 200})
}

// Login binds the uid (nano's are numbers: a hash of the name) and sets
// two keys.
func (b *Bench) Login(s *session.Session, msg *LoginMsg) error {
	h := fnv.New64a()
	_, _ = io.WriteString(h, msg.UID)
	if err := s.Bind(int64(h.Sum64()>>1) | 1); err != nil {
		return err
	}
	s.Set("level", 1)
	s.Set("name", msg.UID)
	return s.Response(&Ok{Code: 200})
}

func (b *Bench) group(msg *ChannelMsg) *nano.Group {
	name := msg.Channel
	if name == "" {
		name = "all"
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	g, ok := b.groups[name]
	if !ok {
		g = nano.NewGroup(name)
		b.groups[name] = g
	}
	return g
}

// Join adds the session to a group (a channel).
func (b *Bench) Join(s *session.Session, msg *ChannelMsg) error {
	g := b.group(msg)
	if err := g.Add(s); err != nil && err != nano.ErrSessionDuplication {
		return err
	}
	return s.Response(&Joined{Code: 200, Members: g.Count()})
}

// Fanout pushes onFanout {msg} to every member of a group.
func (b *Bench) Fanout(s *session.Session, msg *ChannelMsg) error {
	if err := b.group(msg).Broadcast("onFanout", &Fanout{Msg: msg.Msg}); err != nil {
		return err
	}
	return s.Response(&Ok{Code: 200})
}

// lowerFirst names methods as the bench routes do: Echo -> echo.
func lowerFirst(s string) string {
	r := []rune(s)
	if len(r) > 0 {
		r[0] = unicode.ToLower(r[0])
	}
	return string(r)
}

func main() {
	role := flag.String("role", "gate", "master, gate or chat")
	listen := flag.String("listen", "", "this node's cluster address (loopback)")
	master := flag.String("master", "127.0.0.1:34567", "the master's address")
	client := flag.String("client", "127.0.0.1:4500", "the gate's client address (loopback)")
	flag.Parse()
	if *listen == "" {
		log.Fatal("-listen is required")
	}
	opts := []nano.Option{nano.WithSerializer(json.NewSerializer())}
	switch *role {
	case "master":
		opts = append(opts, nano.WithMaster())
	case "gate":
		opts = append(opts, nano.WithAdvertiseAddr(*master), nano.WithClientAddr(*client))
	case "chat":
		services := &component.Components{}
		services.Register(&Bench{groups: map[string]*nano.Group{}},
			component.WithName("chat.benchHandler"), component.WithNameFunc(lowerFirst))
		opts = append(opts, nano.WithAdvertiseAddr(*master), nano.WithComponents(services))
	default:
		log.Fatalf("unknown role %q", *role)
	}
	// Listen returns on SIGTERM or SIGINT, after nano's own shutdown.
	nano.Listen(*listen, opts...)
}
