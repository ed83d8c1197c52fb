// The Pitaya peer of the benchmarks: the bench routes of session-proxy's
// bench app (chat.benchHandler.echo, set, login, join, fanout, remote), on Pitaya
// v2 in cluster mode as in its cluster demo: a frontend "connector" that
// clients reach over TCP (the Pomelo package format), and a backend "chat"
// server reached over NATS, both found through etcd.
//
//	pitaya-peer -type connector -frontend -port 4600 -nats nats://127.0.0.1:4222 -etcd 127.0.0.1:2379
//	pitaya-peer -type chat -nats nats://127.0.0.1:4222 -etcd 127.0.0.1:2379
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"unicode"

	"github.com/sirupsen/logrus"

	"github.com/topfreegames/pitaya/v2"
	"github.com/topfreegames/pitaya/v2/acceptor"
	"github.com/topfreegames/pitaya/v2/component"
	"github.com/topfreegames/pitaya/v2/config"
	"github.com/topfreegames/pitaya/v2/constants"
	"github.com/topfreegames/pitaya/v2/groups"
	"github.com/topfreegames/pitaya/v2/logger"
	pitayalogrus "github.com/topfreegames/pitaya/v2/logger/logrus"
	"github.com/topfreegames/pitaya/v2/protos"
)

var app pitaya.Pitaya

// Bench holds the routes, on the "chat" server.
type Bench struct {
	component.Base
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
func (b *Bench) Echo(ctx context.Context, msg []byte) ([]byte, error) {
	return msg, nil
}

// Set sets a key on the session and pushes the session to its frontend.
func (b *Bench) Set(ctx context.Context, msg *SetMsg) (*Ok, error) {
	s := app.GetSessionFromCtx(ctx)
	key := msg.Key
	if key == "" {
		key = "k"
	}
	if err := s.Set(key, msg.Value); err != nil {
		return nil, err
	}
	if err := s.PushToFront(ctx); err != nil {
		return nil, err
	}
	return &Ok{Code: 200}, nil
}

// Login binds the uid (unless bound already), sets two keys and pushes the
// session to its frontend.
func (b *Bench) Login(ctx context.Context, msg *LoginMsg) (*Ok, error) {
	s := app.GetSessionFromCtx(ctx)
	if s.UID() != msg.UID {
		if err := s.Bind(ctx, msg.UID); err != nil {
			return nil, err
		}
	}
	if err := s.Set("level", 1); err != nil {
		return nil, err
	}
	if err := s.Set("name", msg.UID); err != nil {
		return nil, err
	}
	if err := s.PushToFront(ctx); err != nil {
		return nil, err
	}
	return &Ok{Code: 200}, nil
}

// Join adds the session's uid to a group (a channel).
func (b *Bench) Join(ctx context.Context, msg *ChannelMsg) (*Joined, error) {
	s := app.GetSessionFromCtx(ctx)
	channel := channelOf(msg)
	if err := app.GroupCreate(ctx, channel); err != nil && !errors.Is(err, constants.ErrGroupAlreadyExists) {
		return nil, err
	}
	if err := app.GroupAddMember(ctx, channel, s.UID()); err != nil {
		return nil, err
	}
	n, err := app.GroupCountMembers(ctx, channel)
	if err != nil {
		return nil, err
	}
	return &Joined{Code: 200, Members: n}, nil
}

// Fanout pushes onFanout {msg} to every member of a group.
func (b *Bench) Fanout(ctx context.Context, msg *ChannelMsg) (*Ok, error) {
	channel := channelOf(msg)
	if err := app.GroupBroadcast(ctx, "connector", channel, "onFanout", &Fanout{Msg: msg.Msg}); err != nil {
		return nil, err
	}
	return &Ok{Code: 200}, nil
}

// Remote makes one RPC to the connector's benchRemote.echo (Pitaya refuses
// an RPC a server could run itself) and answers what it echoed: a call
// between servers over NATS, as Pinus's bench makes one with app.rpc.
func (b *Bench) Remote(ctx context.Context, msg []byte) ([]byte, error) {
	reply := &protos.Response{}
	if err := app.RPC(ctx, "connector.benchRemote.echo", reply, &protos.Response{Data: msg}); err != nil {
		return nil, err
	}
	return reply.Data, nil
}

// BenchRemote is the callee of Remote, on the connector.
type BenchRemote struct {
	component.Base
}

// Echo answers its argument.
func (r *BenchRemote) Echo(ctx context.Context, msg *protos.Response) (*protos.Response, error) {
	return msg, nil
}

func channelOf(msg *ChannelMsg) string {
	if msg.Channel == "" {
		return "all"
	}
	return msg.Channel
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
	port := flag.Int("port", 4600, "the frontend's client port (loopback)")
	svType := flag.String("type", "connector", "the server type")
	frontend := flag.Bool("frontend", false, "a frontend server")
	natsURL := flag.String("nats", "nats://127.0.0.1:4222", "the NATS server")
	etcd := flag.String("etcd", "127.0.0.1:2379", "the etcd endpoint")
	flag.Parse()

	// Warnings and errors only, as the other peers run: Pitaya logs every
	// message at debug by default.
	quiet := logrus.New()
	quiet.SetLevel(logrus.WarnLevel)
	logger.SetLogger(pitayalogrus.NewWithLogger(quiet))
	cfg := config.NewDefaultPitayaConfig()
	cfg.Cluster.RPC.Client.Nats.Connect = *natsURL
	cfg.Cluster.RPC.Server.Nats.Connect = *natsURL
	cfg.Cluster.SD.Etcd.Endpoints = []string{*etcd}
	cfg.Cluster.SD.Etcd.Prefix = "session-proxy-bench/"
	// As Pinus and session-proxy's bench: many sessions may bind one uid.
	cfg.Session.Unique = false
	// Bodies go uncompressed, as the other systems send them (Pitaya
	// deflates every message by default).
	cfg.Handler.Messages.Compression = false
	builder := pitaya.NewDefaultBuilder(*frontend, *svType, pitaya.Cluster, map[string]string{}, *cfg)
	if *frontend {
		builder.AddAcceptor(acceptor.NewTCPAcceptor(fmt.Sprintf("127.0.0.1:%d", *port)))
	}
	builder.Groups = groups.NewMemoryGroupService(builder.Config.Groups.Memory)
	app = builder.Build()
	if *frontend {
		app.RegisterRemote(&BenchRemote{}, component.WithName("benchRemote"), component.WithNameFunc(lowerFirst))
	} else {
		app.Register(&Bench{}, component.WithName("benchHandler"), component.WithNameFunc(lowerFirst))
	}
	// Start returns on SIGTERM or SIGINT, after Pitaya's own shutdown.
	app.Start()
}
