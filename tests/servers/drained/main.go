// Command drained is ../plain with the package's drain: hotswap.Serve in
// place of the signal handling and Shutdown. It loses no request on a swap.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
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
	if err := hotswap.Serve(srv, ln); err != nil {
		log.Fatal(err)
	}
}
