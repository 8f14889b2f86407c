package hotswap

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// twoGenerations is hotswapd's shared socket in miniature: one listening
// socket, held by the test, accepted from by an old server and, from
// startNext (the cutover) on, a new one.
type twoGenerations struct {
	addr     string
	old, new net.Listener
	next     *http.Server
}

func newTwoGenerations(t *testing.T) *twoGenerations {
	t.Helper()
	sock, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sock.Close() })
	g := &twoGenerations{addr: sock.Addr().String(), old: dupListener(t, sock), new: dupListener(t, sock)}
	g.next = &http.Server{Handler: answer("new")}
	t.Cleanup(func() { g.next.Close() })
	return g
}

func (g *twoGenerations) startNext() { go g.next.Serve(g.new) }

func dupListener(t *testing.T, ln net.Listener) net.Listener {
	t.Helper()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dup, err := net.FileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	return dup
}

func answer(body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) })
}

// clients are keep-alive clients that never retry: each request that fails
// counts, as wrk and Python's http.client count it. A response with
// "Connection: close" makes the client reconnect, as HTTP/1.1 says.
type clients struct {
	addr     string
	pause    time.Duration
	stop     chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	by       map[string]int // successful responses per body
	closes   int            // responses that said Connection: close
	failures []error
}

func startClients(t *testing.T, addr string, n int, pause time.Duration) *clients {
	t.Helper()
	c := &clients{addr: addr, pause: pause, stop: make(chan struct{}), by: map[string]int{}}
	for i := 0; i < n; i++ {
		c.wg.Add(1)
		go c.run()
	}
	t.Cleanup(c.finish)
	return c
}

func (c *clients) run() {
	defer c.wg.Done()
	var conn net.Conn
	var rd *bufio.Reader
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		if conn == nil {
			var err error
			if conn, err = net.Dial("tcp", c.addr); err != nil {
				c.fail(err)
				continue
			}
			rd = bufio.NewReader(conn)
		}
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		body, closed, err := get(conn, rd)
		if err != nil {
			c.fail(err)
			conn.Close()
			conn = nil
			continue
		}
		c.mu.Lock()
		c.by[body]++
		if closed {
			c.closes++
		}
		c.mu.Unlock()
		if closed {
			conn.Close()
			conn = nil
		}
		if c.pause > 0 {
			select {
			case <-c.stop:
				return
			case <-time.After(c.pause):
			}
		}
	}
}

func get(conn net.Conn, rd *bufio.Reader) (string, bool, error) {
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
		return "", false, err
	}
	res, err := http.ReadResponse(rd, nil)
	if err != nil {
		return "", false, err
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	return string(b), res.Close, err
}

func (c *clients) fail(err error) {
	c.mu.Lock()
	c.failures = append(c.failures, err)
	c.mu.Unlock()
}

func (c *clients) finish() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	c.wg.Wait()
}

func (c *clients) count(body string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.by[body]
}

func (c *clients) failed() []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]error(nil), c.failures...)
}

// waitFor polls cond until it holds or the deadline passes: the tests wait on
// what they can observe, never on a fixed sleep.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// serveOld runs the old generation under d and returns a function that
// starts its drain and waits for Serve's result and the time it took.
func serveOld(t *testing.T, g *twoGenerations, d Drain) func() (error, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, &http.Server{Handler: answer("old")}, g.old) }()
	return func() (error, time.Duration) {
		start := time.Now()
		cancel()
		select {
		case err := <-done:
			return err, time.Since(start)
		case <-time.After(10 * time.Second):
			t.Fatal("the old generation never finished draining")
			return nil, 0
		}
	}
}

// drainUnderLoad swaps from old to new under busy keep-alive clients and
// returns the clients once the new generation answers them all.
func drainUnderLoad(t *testing.T, n int, pause time.Duration, drain func(*twoGenerations) func() error) *clients {
	t.Helper()
	g := newTwoGenerations(t)
	finish := drain(g)
	c := startClients(t, g.addr, n, pause)
	waitFor(t, "the old generation to serve every client", 10*time.Second, func() bool { return c.count("old") >= 4*n })
	g.startNext()
	if err := finish(); err != nil {
		t.Fatalf("drain: %v", err)
	}
	after := c.count("new")
	waitFor(t, "the new generation to serve the clients", 10*time.Second, func() bool { return c.count("new") >= after+4*n })
	c.finish()
	return c
}

func TestDrainLosesNoRequestOfBusyKeepAliveClients(t *testing.T) {
	// Busy keep-alive clients all move to the new generation without one failed request, and the window ends early.
	var took time.Duration
	c := drainUnderLoad(t, 16, 0, func(g *twoGenerations) func() error {
		finish := serveOld(t, g, Drain{Window: 3 * time.Second})
		return func() error {
			err, d := finish()
			took = d
			return err
		}
	})
	if f := c.failed(); len(f) != 0 {
		t.Fatalf("%d requests failed across the drain, first: %v", len(f), f[0])
	}
	if c.closes == 0 {
		t.Fatal("no response said Connection: close")
	}
	t.Logf("%d requests, none failed; drained in %s", c.count("old")+c.count("new"), took)
	if took >= 3*time.Second {
		t.Fatalf("the drain took the whole %s window (%s) though every connection had left", 3*time.Second, took)
	}
}

func TestDrainLosesNoRequestOfClientsThatPause(t *testing.T) {
	// Clients pausing 100ms between requests are each answered once more with Connection: close, none is cut off idle.
	c := drainUnderLoad(t, 8, 100*time.Millisecond, func(g *twoGenerations) func() error {
		finish := serveOld(t, g, Drain{Window: time.Second})
		return func() error { err, _ := finish(); return err }
	})
	if f := c.failed(); len(f) != 0 {
		t.Fatalf("%d requests failed across the drain, first: %v", len(f), f[0])
	}
	t.Logf("%d requests, none failed", c.count("old")+c.count("new"))
}

func TestPlainShutdownLosesRequests(t *testing.T) {
	// The failure the drain prevents is real: plain Shutdown (or Window < 0) fails requests on keep-alive connections.
	for name, shutdown := range map[string]func(*twoGenerations) func() error{
		"http.Server.Shutdown": func(g *twoGenerations) func() error {
			srv := &http.Server{Handler: answer("old")}
			go srv.Serve(g.old)
			return func() error { return srv.Shutdown(context.Background()) }
		},
		"Drain{Window: -1}": func(g *twoGenerations) func() error {
			finish := serveOld(t, g, Drain{Window: -1})
			return func() error { err, _ := finish(); return err }
		},
	} {
		t.Run(name, func(t *testing.T) {
			c := drainUnderLoad(t, 16, 0, shutdown)
			if len(c.failed()) == 0 {
				t.Fatal("no request failed: this test cannot tell a lossless drain from a lossy one")
			}
			t.Logf("%d of %d requests failed", len(c.failed()), c.count("old")+c.count("new")+len(c.failed()))
		})
	}
}

func TestIdleConnectionIsClosedAfterTheWindow(t *testing.T) {
	// A connection that sends nothing holds the drain for the window at most, then is closed and Serve returns nil.
	g := newTwoGenerations(t)
	finish := serveOld(t, g, Drain{Window: 200 * time.Millisecond})
	conn, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	rd := bufio.NewReader(conn)
	if body, _, err := get(conn, rd); body != "old" || err != nil {
		t.Fatalf("first answer %q, %v", body, err)
	}
	g.startNext()
	err, took := finish()
	if err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if took < 200*time.Millisecond {
		t.Fatalf("Serve returned after %s, before the window", took)
	}
	if _, err := rd.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("the idle connection was not closed by the server: %v", err)
	}
}

func TestShutdownTimeoutClosesRunningRequests(t *testing.T) {
	// A request that outlives the timeout makes Serve return DeadlineExceeded after closing its connection.
	g := newTwoGenerations(t)
	release := make(chan struct{})
	defer close(release)
	var running atomic.Bool
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		running.Store(true)
		<-release
	})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Drain{Window: 50 * time.Millisecond, Timeout: 100 * time.Millisecond}.Serve(ctx, srv, g.old)
	}()
	conn, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: test\r\n\r\n")
	waitFor(t, "the request to be running", 5*time.Second, running.Load)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Serve: %v, want DeadlineExceeded", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after its timeout")
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := bufio.NewReader(conn).ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the running request's connection is still open: %v", err)
	}
}

func TestServeReportsABrokenListener(t *testing.T) {
	// Serve on a listener that cannot accept returns that error at once, not ErrServerClosed.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	err = Drain{}.Serve(context.Background(), &http.Server{}, ln)
	if err == nil || errors.Is(err, http.ErrServerClosed) || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Serve: %v, want the accept error", err)
	}
	if err := (Drain{}).Serve(context.Background(), &http.Server{}); err == nil {
		t.Fatal("Serve with no listener did not fail")
	}
}

func TestUserHooksAreKept(t *testing.T) {
	// Serve keeps the server's own handler and ConnState hook and runs them.
	g := newTwoGenerations(t)
	var states atomic.Int32
	srv := &http.Server{Handler: answer("mine"), ConnState: func(net.Conn, http.ConnState) { states.Add(1) }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Drain{}.Serve(ctx, srv, g.old) }()
	conn, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	body, _, err := get(conn, bufio.NewReader(conn))
	conn.Close()
	if err != nil || body != "mine" {
		t.Fatalf("answer %q, %v", body, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if states.Load() < 3 { // new, active, idle (and closed)
		t.Fatalf("the ConnState hook ran %d times", states.Load())
	}
}

// BenchmarkKeepAliveRequest is the package's cost per request: one keep-alive
// client on loopback against a bare http.Server and the same server under
// Drain.Serve (its Connection: close wrapper and ConnState hook).
func BenchmarkKeepAliveRequest(b *testing.B) {
	for _, name := range []string{"plain", "drained"} {
		b.Run(name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			srv := &http.Server{Handler: answer("hello")}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			if name == "plain" {
				go func() { done <- srv.Serve(ln) }()
			} else {
				go func() { done <- Drain{Window: -1}.Serve(ctx, srv, ln) }()
			}
			conn, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			rd := bufio.NewReader(conn)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, _, err := get(conn, rd); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			conn.Close()
			cancel()
			if name == "plain" {
				srv.Close()
			}
			<-done
		})
	}
}

// BenchmarkPerRequestOverhead isolates what Drain.Serve adds to every
// request, without the network: its handler wrapper and the two ConnState
// transitions (active, idle) a keep-alive request makes.
func BenchmarkPerRequestOverhead(b *testing.B) {
	req := httptest.NewRequest("GET", "/", nil)
	for _, name := range []string{"plain", "drained"} {
		b.Run(name, func(b *testing.B) {
			srv := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})}
			if name == "drained" {
				watch(srv)
			}
			w := httptest.NewRecorder()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if srv.ConnState != nil {
					srv.ConnState(nil, http.StateActive)
				}
				srv.Handler.ServeHTTP(w, req)
				if srv.ConnState != nil {
					srv.ConnState(nil, http.StateIdle)
				}
			}
		})
	}
}
