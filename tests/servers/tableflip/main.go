// Command tableflip is cloudflare/tableflip's README pattern, without
// hotswapd: SIGHUP forks a new copy that inherits the listening socket, the
// old one exits once the new one is ready. With -drain-window > 0 the old one
// leaves through the hotswap package's drain instead of a bare Shutdown, to
// show that the loss is in how a server drains, whoever swaps it.
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

	"github.com/cloudflare/tableflip"
	"hotswapd.example/hotswap"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on")
	pidFile := flag.String("pid-file", "", "where the serving process writes its pid")
	window := flag.Duration("drain-window", 0, "0: Shutdown as the README does; else the hotswap drain with this window")
	flag.Parse()
	log.SetPrefix(fmt.Sprintf("tableflip pid %d ", os.Getpid()))

	upg, err := tableflip.New(tableflip.Options{PIDFile: *pidFile})
	if err != nil {
		log.Fatal(err)
	}
	defer upg.Stop()
	go func() {
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		for range hup {
			if err := upg.Upgrade(); err != nil {
				log.Println("upgrade failed:", err)
			}
		}
	}()

	ln, err := upg.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	pid := fmt.Sprint(os.Getpid())
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(
		func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Pid", pid)
			fmt.Fprintf(w, "hello from pid %s\n", pid)
		})}

	if *window > 0 {
		// The parent's cue to leave is upg.Exit(), not a signal.
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			<-upg.Exit()
			cancel()
		}()
		if err := upg.Ready(); err != nil {
			log.Fatal(err)
		}
		fmt.Println("ready")
		if err := (hotswap.Drain{Window: *window}).Serve(ctx, srv, ln); err != nil {
			log.Fatal(err)
		}
		return
	}

	go srv.Serve(ln)
	if err := upg.Ready(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("ready")
	<-upg.Exit()
	// As the README says: a deadline on the exit, then wait for connections.
	time.AfterFunc(30*time.Second, func() {
		log.Println("graceful shutdown timed out")
		os.Exit(1)
	})
	srv.Shutdown(context.Background())
}
