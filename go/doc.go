// Package hotswap is what a net/http server needs to be swapped by hotswapd
// (or any supervisor that passes sockets the systemd way) without losing a
// request. Three calls:
//
//	ln, err := hotswap.Listen("http", ":8080") // the inherited socket, or its own bind
//	hotswap.Ready()                            // sd_notify READY=1, when asked for
//	err = hotswap.Serve(srv, ln)               // on SIGTERM: drain, then Shutdown
//
// The same binary runs with and without a supervisor: with nothing inherited,
// Listen binds addr and Ready does nothing.
//
// # Why Shutdown alone loses requests
//
// [http.Server.Shutdown] closes every idle keep-alive connection at once, and
// net/http counts a connection as idle until it has read the next request, so
// a request already on the wire dies with its connection. A busy connection
// is closed right after its current response, which did not say
// "Connection: close", so the client's next request on it is lost too: one
// failed request per keep-alive connection, on every swap.
//
// [Serve] first tells clients to leave. It stops accepting (the supervisor
// holds the socket: new connections go to the next generation), and for a
// window every response carries "Connection: close", so each connection
// closes cleanly after its next request and the client reconnects. The window
// ends as soon as no connection is left, so a busy server drains in about one
// round trip; only then does Shutdown run, with a deadline.
//
// The package is standard library only and follows go-systemd's activation
// conventions (names from LISTEN_FDNAMES, variables unset after use), so a
// server that already adopts its sockets with go-systemd can keep doing so and
// use only [Serve] or [Drain.Serve].
package hotswap
