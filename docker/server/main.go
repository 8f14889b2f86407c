// Command server is the example Go server that hotswapd supervises. It serves
// HTTP on every socket it inherits (the systemd socket-activation convention),
// tells the supervisor when it is ready (sd_notify), and drains gracefully so a
// swap to the next generation loses no request.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"hotswapd.example/hotswap"
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

// listeners returns every socket the server inherited, or its own bind of addr
// when it inherited none, and a description for the start-up log line.
func listeners(addr string) ([]net.Listener, string, error) {
	sockets, err := hotswap.Listeners()
	if err != nil {
		return nil, "", err
	}
	if len(sockets) == 0 {
		ln, err := hotswap.Listen("http", addr) // nothing inherited: binds addr
		if err != nil {
			return nil, "", err
		}
		return []net.Listener{ln}, fmt.Sprintf("%s(-addr)", ln.Addr()), nil
	}
	var lns []net.Listener
	var desc []string
	for _, s := range sockets {
		lns = append(lns, s.Listener)
		desc = append(desc, fmt.Sprintf("%s(fd %d)", s.Name, s.FD))
	}
	return lns, strings.Join(desc, ","), nil
}

// app is the HTTP handler. One instance serves every listener, so each of
// them (a private "probe" listener for the health check too) answers alike.
type app struct {
	version, pid string
	healthz      string
}

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("X-Version", a.version)
	h.Set("X-Pid", a.pid)
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
		"the longest time to answer with Connection: close before shutting down; 0s: plain Shutdown (env DRAIN_WINDOW)")
	timeout := flag.Duration("shutdown-timeout", envDuration("SHUTDOWN_TIMEOUT", 25*time.Second),
		"how long to wait for in-flight requests after the window (env SHUTDOWN_TIMEOUT)")
	config := flag.String("config", "", "a file re-read on SIGHUP")
	flag.Parse()

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
	drain := hotswap.Drain{Window: *window, Timeout: *timeout}
	if *window == 0 {
		drain.Window = -1 // the flag's 0s is no window; the package's zero is its default
	}
	ctx, stop := context.WithCancel(context.Background())
	go func() {
		for sig := range sigs {
			switch {
			case sig == syscall.SIGHUP:
				reload(*config)
			case ctx.Err() == nil: // a second stop signal changes nothing
				log.Printf("%v: draining (Connection: close for %s, then shutdown within %s)", sig, *window, *timeout)
				stop()
			}
		}
	}()

	// The sockets are already listening (the kernel queues connections), so
	// the server is ready before Serve starts the accept loops.
	log.Printf("serving on %s", desc)
	if err := hotswap.Notify(fmt.Sprintf("READY=1\nSTATUS=serving %s\nMAINPID=%d", version, pid)); err != nil {
		log.Printf("sd_notify: %v", err) // advisory: the health check still decides
	}
	fmt.Printf("ready pid=%d version=%s\n", pid, version) // os.Stdout is unbuffered

	if err := drain.Serve(ctx, srv, lns...); err != nil {
		log.Printf("%v", err)
		os.Exit(1)
	}
	log.Printf("drained; exiting 0")
}
