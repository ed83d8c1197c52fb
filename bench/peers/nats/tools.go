//go:build tools

// The NATS server that the Pitaya peer's servers talk through, pinned by
// this module's go.sum and built from the Go module proxy by
// bench/peers/build.sh.
package tools

import _ "github.com/nats-io/nats-server/v2"
