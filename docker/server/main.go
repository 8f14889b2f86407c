// Command server is the example Go server that hotswapd supervises. It serves
// HTTP on every socket it inherits (the systemd socket-activation convention),
// tells the supervisor when it is ready (sd_notify), and drains gracefully so a
// swap to the next generation loses no request.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Build-time knobs, set with -ldflags "-X main.<name>=<value>". They are strings
// because -X can only set strings. They exist so that bad builds (unhealthy,
// memory hog, crashing) can be produced for the rollback tests and the demo.
// The env vars SERVER_HEALTHZ, SERVER_ALLOC_MIB and SERVER_CRASH_AFTER win.
var (
	version    = "dev"
	healthz    = "ok" // anything else: /healthz answers 503
	allocMiB   = "0"  // >0: hold that many MiB resident
	crashAfter = ""   // a Go duration: exit 3 after that long
)

// ballast keeps the memory-hog allocation referenced so the GC never frees it.
var ballast []byte

// listenFdsStart is SD_LISTEN_FDS_START: inherited sockets start after stdio.
const listenFdsStart = 3

// listenNames applies the socket-activation convention to an environment. It
// returns one name per inherited fd (fd 3, 4, ...), or nil when the sockets are
// not meant for this process: LISTEN_PID absent or naming another pid (a parent
// that leaked its own LISTEN_* into our environment). Missing names are "unknown".
func listenNames(getenv func(string) string, pid int) ([]string, error) {
	lp, err := strconv.Atoi(getenv("LISTEN_PID"))
	if err != nil || lp != pid {
		return nil, nil
	}
	n, err := strconv.Atoi(getenv("LISTEN_FDS"))
	if err != nil || n < 0 {
		return nil, fmt.Errorf("LISTEN_FDS=%q is not a count of sockets", getenv("LISTEN_FDS"))
	}
	if n == 0 {
		return nil, nil
	}
	var given []string
	if s := getenv("LISTEN_FDNAMES"); s != "" {
		given = strings.Split(s, ":")
	}
	names := make([]string, n)
	for i := range names {
		names[i] = "unknown"
		if i < len(given) && given[i] != "" {
			names[i] = given[i]
		}
	}
	return names, nil
}

// listeners adopts the inherited sockets, or binds addr when there are none.
// It returns the listeners and a description for the start-up log line.
func listeners(addr string) ([]net.Listener, string, error) {
	names, err := listenNames(os.Getenv, os.Getpid())
	// Unset in every case: these values describe our fds and must not leak
	// into anything we start (its pid would never match anyway).
	for _, k := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		os.Unsetenv(k)
	}
	if err != nil {
		return nil, "", err
	}
	if names == nil {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, "", err
		}
		return []net.Listener{ln}, fmt.Sprintf("%s(-addr)", ln.Addr()), nil
	}
	var lns []net.Listener
	var desc []string
	for i, name := range names {
		fd := listenFdsStart + i
		f := os.NewFile(uintptr(fd), name)
		// FileListener works for TCP and unix sockets and returns a close-on-exec
		// dup, so closing the original keeps fd 3.. out of our own children. The
		// socket itself stays open in the supervisor and the other generation.
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return nil, "", fmt.Errorf("inherited fd %d (%s) is not a listening socket: %w", fd, name, err)
		}
		lns = append(lns, ln)
		desc = append(desc, fmt.Sprintf("%s(fd %d)", name, fd))
	}
	return lns, strings.Join(desc, ","), nil
}

// app is the HTTP handler. One instance serves every listener, so the private
// "probe" listener the supervisor health-checks answers exactly like the public one.
type app struct {
	version, pid string
	healthz      string
	draining     atomic.Bool
}

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("X-Version", a.version)
	h.Set("X-Pid", a.pid)
	if a.draining.Load() {
		// Tell keep-alive clients to reconnect: their next connection lands on
		// the shared socket, where the new generation accepts it.
		h.Set("Connection", "close")
	}
	switch r.URL.Path {
	case "/":
		fmt.Fprintf(w, "hello from %s pid %s\n", a.version, a.pid)
	case "/version":
		fmt.Fprintf(w, "%s\n", a.version)
	case "/healthz":
		if a.healthz != "ok" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintf(w, "%s\n", a.healthz)
	case "/sleep":
		// An in-flight request that outlives a swap, for drain tests: /sleep?d=2s.
		d, err := time.ParseDuration(r.URL.Query().Get("d"))
		if err != nil || d < 0 || d > time.Minute {
			http.Error(w, "want ?d=<duration up to 1m>", http.StatusBadRequest)
			return
		}
		time.Sleep(d)
		fmt.Fprintf(w, "slept %s in %s pid %s\n", d, a.version, a.pid)
	default:
		http.NotFound(w, r)
	}
}

// drain stops the server without losing a request and returns the exit status.
//
// Why not just Shutdown: it closes idle keep-alive connections at once, under
// the feet of clients that are just sending on them, which loses one request
// per such connection. So first, for the drain window, every response says
// "Connection: close", and clients move to new connections on the shared socket.
// SetKeepAlivesEnabled(false) comes only after the window because it, too,
// closes idle connections immediately.
func drain(srv *http.Server, a *app, notify string, window, timeout time.Duration) int {
	a.draining.Store(true)
	sdNotify(notify, "STOPPING=1")
	time.Sleep(window)
	srv.SetKeepAlivesEnabled(false)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Printf("shutdown after %s: %v; closing the remaining connections", timeout, err)
		srv.Close()
		return 1
	}
	log.Printf("drained; exiting 0")
	return 0
}

// sdNotify sends one sd_notify datagram. Go maps a leading '@' to an abstract
// socket name. A failure is logged, never fatal: readiness is advisory.
func sdNotify(sock, state string) {
	if sock == "" {
		return
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err == nil {
		_, err = c.Write([]byte(state))
		c.Close()
	}
	if err != nil {
		log.Printf("sd_notify %s: %v", sock, err)
	}
}

// reload re-reads the -config file. A bad file is reported and ignored: it must
// never take down the generation that is serving.
func reload(path string) {
	fmt.Println("SIGHUP received")
	if path == "" {
		log.Printf("SIGHUP: no -config file, nothing to reload")
		return
	}
	b, err := os.ReadFile(path)
	if err != nil {
		log.Printf("SIGHUP: config not reloaded, keeping the old one: %v", err)
		return
	}
	fmt.Printf("config reloaded %d bytes\n", len(b))
}

// knob returns the env var when set and non-empty, else the build-time value.
func knob(env, built string) string {
	if v := os.Getenv(env); v != "" {
		return v
	}
	return built
}

// envDuration is a flag default taken from the environment when set.
func envDuration(env string, def time.Duration) time.Duration {
	if v := os.Getenv(env); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			fatalf("%s=%q: want a Go duration such as 300ms", env, v)
		}
		return d
	}
	return def
}

func fatalf(format string, args ...any) {
	log.Printf(format, args...)
	os.Exit(2)
}

func main() {
	pid := os.Getpid()
	log.SetFlags(0)
	log.SetPrefix(fmt.Sprintf("server %s pid %d ", version, pid))

	// Catch signals first: until Notify, SIGTERM would kill us without a drain.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGHUP)

	defAddr := ":8080"
	if v := os.Getenv("ADDR"); v != "" {
		defAddr = v
	}
	addr := flag.String("addr", defAddr, "address to bind when no sockets are inherited (env ADDR)")
	window := flag.Duration("drain-window", envDuration("DRAIN_WINDOW", 300*time.Millisecond),
		"how long to answer with Connection: close before shutting down (env DRAIN_WINDOW)")
	timeout := flag.Duration("shutdown-timeout", 25*time.Second, "how long to wait for in-flight requests")
	config := flag.String("config", "", "a file re-read on SIGHUP")
	flag.Parse()

	// Read once and unset, as sd_notify(unset_environment=1) does, so children
	// of ours do not report to our supervisor.
	notify := os.Getenv("NOTIFY_SOCKET")
	os.Unsetenv("NOTIFY_SOCKET")

	a := &app{version: version, pid: strconv.Itoa(pid), healthz: knob("SERVER_HEALTHZ", healthz)}
	if s := knob("SERVER_ALLOC_MIB", allocMiB); s != "0" {
		mib, err := strconv.Atoi(s)
		if err != nil || mib < 0 {
			fatalf("allocMiB %q: want a whole number of MiB", s)
		}
		// make() gets untouched zero pages; write one byte per page so they
		// are really resident and show up in VmRSS for the memory gate.
		ballast = make([]byte, mib<<20)
		for i := 0; i < len(ballast); i += os.Getpagesize() {
			ballast[i] = 1
		}
		log.Printf("holding %d MiB resident", mib)
	}
	if s := knob("SERVER_CRASH_AFTER", crashAfter); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			fatalf("crashAfter %q: want a Go duration such as 200ms", s)
		}
		time.AfterFunc(d, func() {
			log.Printf("crashAfter %s elapsed: exiting 3", d)
			os.Exit(3)
		})
	}
	if *config != "" {
		if _, err := os.ReadFile(*config); err != nil {
			fatalf("-config: %v", err)
		}
	}

	lns, desc, err := listeners(*addr)
	if err != nil {
		fatalf("listeners: %v", err)
	}
	srv := &http.Server{Handler: a, ReadHeaderTimeout: 10 * time.Second}
	for _, ln := range lns {
		go func(ln net.Listener) {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				log.Printf("serve %s: %v", ln.Addr(), err)
				os.Exit(1)
			}
		}(ln)
	}
	// The sockets are already listening (the kernel queues connections), so
	// the server is ready as soon as the accept loops are started.
	log.Printf("serving on %s", desc)
	sdNotify(notify, fmt.Sprintf("READY=1\nSTATUS=serving %s\nMAINPID=%d", version, pid))
	fmt.Printf("ready pid=%d version=%s\n", pid, version) // os.Stdout is unbuffered

	for sig := range sigs {
		if sig == syscall.SIGHUP {
			reload(*config)
			continue
		}
		log.Printf("%v: draining (Connection: close for %s, then shutdown within %s)", sig, *window, *timeout)
		os.Exit(drain(srv, a, notify, *window, *timeout))
	}
}
