// Command flaky is the canary-analysis test server: a build whose error
// percentage, added latency, memory growth and health hang are set per build,
// with the metrics a promhttp-instrumented server exposes, so that hotswapd's
// analysis can be tested on a real socket against real Prometheus text.
//
// Build-time knobs (-ldflags "-X main.<name>=<value>"), each also a flag:
//
//	errorPercent     share of app requests answered 500, exact and deterministic
//	                 (5: requests 20, 40, 60, ... fail)
//	latency          a Go duration added to every app request
//	growAfter        a Go duration: then hold growMiB more resident memory
//	growMiB          how much
//	hangHealthAfter  a Go duration: then /healthz never answers
//
// The metrics follow prometheus/client_golang's promhttp middleware
// (InstrumentHandlerCounter and InstrumentHandlerDuration with the code and
// method labels, the default buckets), written by hand: the module has no
// dependencies. /healthz and /metrics are not counted, as promhttp users
// instrument the application's handler only.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"hotswapd.example/hotswap"
)

var (
	version         = "dev"
	errorPercent    = "0"
	latency         = "0s"
	growAfter       = ""
	growMiB         = "0"
	hangHealthAfter = ""
)

// ballast keeps the grown memory referenced so the GC never frees it.
var (
	ballastMu sync.Mutex
	ballast   []byte
)

// knobs is one build's behaviour, from the -X values, then the flags.
type knobs struct {
	errorBasisPoints int64 // errorPercent in 1/100 %: 5% is 500
	latency          time.Duration
	growAfter        time.Duration // 0: never
	growMiB          int
	hangHealthAfter  time.Duration // 0: never
}

func parseKnobs(args []string) (knobs, string, error) {
	fs := flag.NewFlagSet("flaky", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8080", "address to bind when no socket is inherited")
	errPct := fs.String("error-percent", errorPercent, "share of app requests answered 500")
	lat := fs.String("latency", latency, "a Go duration added to every app request")
	after := fs.String("grow-after", growAfter, "a Go duration: then hold -grow-mib more memory")
	mib := fs.String("grow-mib", growMiB, "MiB to hold resident after -grow-after")
	hang := fs.String("hang-health-after", hangHealthAfter, "a Go duration: then /healthz hangs")
	if err := fs.Parse(args); err != nil {
		return knobs{}, "", err
	}
	var k knobs
	pct, err := strconv.ParseFloat(*errPct, 64)
	if err != nil || pct < 0 || pct > 100 {
		return k, "", fmt.Errorf("error percent %q: want a number from 0 to 100", *errPct)
	}
	k.errorBasisPoints = int64(pct*100 + 0.5)
	durations := []struct {
		name string
		text string
		into *time.Duration
	}{{"latency", *lat, &k.latency}, {"grow after", *after, &k.growAfter}, {"hang health after", *hang, &k.hangHealthAfter}}
	for _, d := range durations {
		if d.text == "" {
			continue
		}
		if *d.into, err = time.ParseDuration(d.text); err != nil || *d.into < 0 {
			return k, "", fmt.Errorf("%s %q: want a Go duration such as 200ms", d.name, d.text)
		}
	}
	if k.growMiB, err = strconv.Atoi(*mib); err != nil || k.growMiB < 0 {
		return k, "", fmt.Errorf("grow MiB %q: want a whole number", *mib)
	}
	return k, *addr, nil
}

// failNth says whether the n-th app request (from 1) is one of the errors:
// exactly floor(n * percent / 100) of the first n requests fail.
func (k knobs) failNth(n int64) bool {
	return n*k.errorBasisPoints/10000 > (n-1)*k.errorBasisPoints/10000
}

// server is the application, its metrics and its clock.
type server struct {
	knobs   knobs
	started time.Time
	pid     string
	served  atomic.Int64
	metrics *metrics
}

func (s *server) app(w http.ResponseWriter, r *http.Request) {
	n := s.served.Add(1)
	if s.knobs.latency > 0 {
		time.Sleep(s.knobs.latency)
	}
	w.Header().Set("X-Pid", s.pid)
	w.Header().Set("X-Version", version)
	if s.knobs.failNth(n) {
		http.Error(w, "flaky: this request fails by design", http.StatusInternalServerError)
		return
	}
	fmt.Fprintf(w, "hello from %s pid %s\n", version, s.pid)
}

func (s *server) healthz(w http.ResponseWriter, r *http.Request) {
	if h := s.knobs.hangHealthAfter; h > 0 && time.Since(s.started) >= h {
		<-r.Context().Done() // a hung server: the probe gets nothing until it gives up
		return
	}
	w.Header().Set("X-Pid", s.pid)
	fmt.Fprintln(w, "ok")
}

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", s.healthz)
	mux.Handle("/metrics", s.metrics)
	mux.Handle("/", s.metrics.instrument(http.HandlerFunc(s.app)))
	return mux
}

func (s *server) grow() {
	if s.knobs.growAfter <= 0 || s.knobs.growMiB == 0 {
		return
	}
	time.AfterFunc(s.knobs.growAfter, func() {
		b := make([]byte, s.knobs.growMiB<<20)
		for i := 0; i < len(b); i += os.Getpagesize() {
			b[i] = 1 // touch every page, so the growth is resident (VmRSS)
		}
		ballastMu.Lock()
		ballast = b
		ballastMu.Unlock()
		log.Printf("grew by %d MiB after %s", s.knobs.growMiB, s.knobs.growAfter)
	})
}

func listeners(addr string) ([]net.Listener, error) {
	sockets, err := hotswap.Listeners()
	if err != nil {
		return nil, err
	}
	if len(sockets) == 0 {
		ln, err := net.Listen("tcp", addr)
		return []net.Listener{ln}, err
	}
	lns := make([]net.Listener, len(sockets))
	for i, s := range sockets {
		lns[i] = s.Listener
	}
	return lns, nil
}

func main() {
	log.SetFlags(0)
	log.SetPrefix(fmt.Sprintf("flaky %s pid %d ", version, os.Getpid()))
	k, addr, err := parseKnobs(os.Args[1:])
	if err != nil {
		log.Printf("%v", err)
		os.Exit(2)
	}
	s := &server{knobs: k, started: time.Now(), pid: strconv.Itoa(os.Getpid()), metrics: newMetrics()}
	lns, err := listeners(addr)
	if err != nil {
		log.Printf("listeners: %v", err)
		os.Exit(2)
	}
	s.grow()
	srv := &http.Server{Handler: s.routes(), ReadHeaderTimeout: 10 * time.Second}
	var where []string
	for _, ln := range lns {
		where = append(where, ln.Addr().String())
	}
	log.Printf("serving on %s (errors %.2f%%, latency %s)", strings.Join(where, ","),
		float64(k.errorBasisPoints)/100, k.latency)
	hotswap.Ready()
	fmt.Printf("ready pid=%d version=%s\n", os.Getpid(), version)
	if err := hotswap.Serve(srv, lns...); err != nil {
		log.Printf("%v", err)
		os.Exit(1)
	}
}
