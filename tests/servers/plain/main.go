// Command plain is the server a Go team writes first: net/http with a
// graceful http.Server.Shutdown on SIGTERM. It takes hotswapd's socket with
// hotswap.Listen, so it differs from ../drained only in how it stops. The
// benchmark (bench/bench_servers.py) measures what that costs per swap.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"hotswapd.example/hotswap"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to bind when no socket is inherited")
	flag.Parse()
	pid := fmt.Sprint(os.Getpid())
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(
		func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Pid", pid)
			fmt.Fprintf(w, "hello from pid %s\n", pid)
		})}

	ln, err := hotswap.Listen("http", *addr)
	if err != nil {
		log.Fatal(err)
	}
	hotswap.Ready()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	go srv.Serve(ln)
	<-stop
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Fatal(err)
	}
}
