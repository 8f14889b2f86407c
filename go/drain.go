package hotswap

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The defaults keep a whole drain (window, then Shutdown) inside hotswapd's
// --drain-timeout (30s) and the example image's --stop-timeout (8s), so
// in-flight requests finish instead of being killed.
const (
	// DefaultWindow is the longest time responses carry "Connection: close"
	// before Shutdown. The window ends as soon as no connection is left, so
	// busy keep-alive connections cost one round trip, not the window; it
	// lasts this long only for a connection that sends nothing. A connection
	// idle for longer than the window is closed while idle (see Drain.Window).
	DefaultWindow = time.Second
	// DefaultTimeout bounds Shutdown: how long requests still running after
	// the window may take before their connections are closed under them.
	DefaultTimeout = 5 * time.Second
)

// Drain is how a server leaves: first a window in which keep-alive clients
// are told to reconnect, then http.Server.Shutdown with a deadline.
// The zero value uses the defaults.
type Drain struct {
	// Window is the longest time every HTTP/1 response says
	// "Connection: close", so that each connection closes cleanly after its
	// next request and the client reconnects, to the next generation. It
	// ends early once no connection is open. A connection that sends nothing
	// for the whole window is closed idle by Shutdown, and a client that
	// sends on it without noticing loses that request (Go's Transport and
	// browsers notice, or retry idempotent requests), so the window should
	// be longer than the pause between requests of the clients that matter,
	// and shorter than what the supervisor allows for the drain. Zero means
	// DefaultWindow; negative means none: a plain Shutdown, which loses
	// requests (for comparison).
	Window time.Duration
	// Timeout bounds Shutdown after the window. Zero means DefaultTimeout.
	Timeout time.Duration
}

// Serve serves srv on every listener until SIGTERM, then drains with the
// defaults (see [Drain]) and returns nil once every request has been answered.
// It is [Drain.Serve] with a context cancelled by SIGTERM; a second SIGTERM
// during the drain is ignored (the supervisor escalates to SIGKILL).
func Serve(srv *http.Server, lns ...net.Listener) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	return Drain{}.Serve(ctx, srv, lns...)
}

// Serve serves srv on every listener until ctx is done, then drains: it sends
// sd_notify STOPPING=1 (see [Notify]), closes the listeners (the supervisor
// holds the sockets, so new connections go to the next generation), answers
// with "Connection: close" until the open connections have gone or the window
// is over, and shuts srv down within the timeout. It returns nil after a
// clean drain; an error when a listener fails (srv is closed then), or when
// requests outlived the timeout (their connections are closed). To drain on
// another signal, pass signal.NotifyContext(ctx, syscall.SIGQUIT).
//
// Serve wraps srv.Handler (nil means http.DefaultServeMux) and srv.ConnState;
// set both before calling it, and call it once per server.
func (d Drain) Serve(ctx context.Context, srv *http.Server, lns ...net.Listener) error {
	if len(lns) == 0 {
		return errors.New("hotswap: Serve needs at least one listener")
	}
	conns := watch(srv)
	errc := make(chan error, len(lns))
	for _, ln := range lns {
		go func(ln net.Listener) { errc <- srv.Serve(ln) }(ln)
	}
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return err // someone else shut srv down
		}
		srv.Close()
		return fmt.Errorf("hotswap: serve: %w", err)
	case <-ctx.Done():
	}
	_ = Notify("STOPPING=1") // advisory: the supervisor watches the exit
	if d.Window >= 0 {
		conns.draining.Store(true)
		stopAccepting(lns, errc)
		conns.drain(orDefault(d.Window, DefaultWindow))
	}
	timeout := orDefault(d.Timeout, DefaultTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
		return fmt.Errorf("hotswap: requests still running %s after the drain window, connections closed: %w", timeout, err)
	}
	return nil
}

// stopAccepting closes the listeners and waits for the accept loops to end
// (their connections live on). The supervisor (hotswapd, tableflip's parent,
// systemd) holds the sockets, so what is queued or still arriving goes to the
// next generation. Shutdown would close them too, but only after the window,
// and a connection accepted just before it would have its first request read
// during Shutdown, which drops that request unanswered.
func stopAccepting(lns []net.Listener, errc <-chan error) {
	for _, ln := range lns {
		ln.Close()
	}
	for range lns {
		<-errc
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// conns counts a server's open connections, so the window can end the moment
// the last one has gone, and marks responses while draining.
type conns struct {
	draining atomic.Bool
	mu       sync.Mutex
	open     int
	gone     chan struct{} // closed once draining and no connection is open
	isGone   bool
}

// watch installs the counting ConnState hook and the Connection: close
// handler on srv, keeping what srv had.
func watch(srv *http.Server) *conns {
	c := &conns{gone: make(chan struct{})}
	next := srv.Handler
	if next == nil {
		next = http.DefaultServeMux
	}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Set before the handler runs, so it holds whatever the handler
		// writes. net/http then closes the connection after this response,
		// and the client, told so, opens a new one instead of reusing it.
		// HTTP/2 has no such header (Shutdown sends GOAWAY there).
		if c.draining.Load() && r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		next.ServeHTTP(w, r)
	})
	hook := srv.ConnState
	srv.ConnState = func(conn net.Conn, state http.ConnState) {
		switch state {
		case http.StateNew:
			c.add(1)
		case http.StateClosed, http.StateHijacked:
			c.add(-1)
		}
		if hook != nil {
			hook(conn, state)
		}
	}
	return c
}

func (c *conns) add(delta int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.open += delta
	if c.open == 0 && c.draining.Load() && !c.isGone {
		c.isGone = true
		close(c.gone)
	}
}

// drain returns once no connection is open, or after window; responses are
// marked already. Why not SetKeepAlivesEnabled(false) or Shutdown right away:
// both close idle connections at once, and net/http counts a connection as
// idle until it has read the next request, so a request already on the wire
// is lost with its connection. Shutdown also closes a busy connection after
// its response without saying "Connection: close", and drops a request it
// reads once shutting down: the client's next request is lost either way.
func (c *conns) drain(window time.Duration) {
	c.add(0) // the last connection may have gone already
	timer := time.NewTimer(window)
	defer timer.Stop()
	select {
	case <-c.gone:
	case <-timer.C:
	}
}
