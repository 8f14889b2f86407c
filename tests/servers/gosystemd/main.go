// Command gosystemd is a server that already adopts its sockets with go-systemd
// (activation.Listeners, daemon.SdNotify), as many do. Running under hotswapd it
// needs one change: hotswap.Serve instead of http.Serve, so SIGTERM drains
// instead of dropping the requests in flight on keep-alive connections.
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"

	"hotswapd.example/hotswap"
)

func main() {
	listeners, err := activation.Listeners()
	if err != nil || len(listeners) != 1 {
		log.Fatalf("want exactly one inherited socket, got %d (%v)", len(listeners), err)
	}
	pid := fmt.Sprint(os.Getpid())
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Pid", pid)
		fmt.Fprintf(w, "hello from pid %s\n", pid)
	})
	daemon.SdNotify(false, daemon.SdNotifyReady)
	// The one line a go-systemd server adds: was `http.Serve(listeners[0], mux)`.
	if err := hotswap.Serve(&http.Server{Handler: mux}, listeners[0]); err != nil {
		log.Fatal(err)
	}
}
