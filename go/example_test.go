package hotswap_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os/signal"
	"syscall"
	"time"

	"hotswapd.example/hotswap"
)

// A net/http server that hotswapd can swap without losing a request: three
// calls. Run on its own, it binds :8080 and drains on SIGTERM all the same.
func Example() {
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second}

	ln, err := hotswap.Listen("http", ":8080")
	if err != nil {
		log.Fatal(err)
	}
	if err := hotswap.Ready(); err != nil {
		log.Print(err) // advisory: the health check still decides
	}
	if err := hotswap.Serve(srv, ln); err != nil {
		log.Fatal(err)
	}
}

// Without inherited sockets, Listen is net.Listen("tcp", addr).
func ExampleListen() {
	ln, err := hotswap.Listen("http", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	fmt.Println(ln.Addr().Network())
	// Output: tcp
}

// Serve every inherited socket (public API, admin, ...) with one server, so
// one drain stops them all.
func ExampleListeners() {
	sockets, err := hotswap.Listeners()
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range sockets {
		fmt.Printf("%s(fd %d) %s\n", s.Name, s.FD, s.Listener.Addr())
	}
	fmt.Println(len(sockets), "inherited")
	// Output: 0 inherited
}

// Drain on SIGTERM or SIGINT, with a longer window for clients that pause
// up to 2s between requests, and 20s for slow requests to finish.
func ExampleDrain_Serve() {
	ln, err := hotswap.Listen("http", ":8080")
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	drain := hotswap.Drain{Window: 3 * time.Second, Timeout: 20 * time.Second}
	if err := drain.Serve(ctx, &http.Server{}, ln); err != nil {
		log.Fatal(err)
	}
}

// Readiness with a status line, which hotswapd logs with the swap.
func ExampleNotify() {
	if err := hotswap.Notify("READY=1\nSTATUS=serving v2"); err != nil {
		log.Print(err)
	}
}
