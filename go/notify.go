package hotswap

import (
	"net"
	"os"
	"sync"
)

// notifySocket is NOTIFY_SOCKET, read once and then unset, as
// sd_notify(unset_environment=1) does: the variable is this process's line to
// its supervisor, and a program it starts must not report in its name. Read
// once rather than per call, so that STOPPING=1 at the drain still reaches
// the supervisor after Ready unset the variable.
var notifySocket = sync.OnceValue(func() string {
	sock := os.Getenv("NOTIFY_SOCKET")
	os.Unsetenv("NOTIFY_SOCKET")
	return sock
})

// Ready tells the supervisor that the server can answer: sd_notify READY=1.
// Calling it just before [Serve] is fine: the sockets listen already and the
// kernel queues connections until the accept loops take them. hotswapd waits
// for it with --ready notify; without NOTIFY_SOCKET, Ready does nothing and
// returns nil.
func Ready() error {
	return Notify("READY=1")
}

// Notify sends one sd_notify datagram, newline-separated assignments such as
// "READY=1\nSTATUS=serving v2", to NOTIFY_SOCKET (a leading '@' names an
// abstract socket). It does nothing without NOTIFY_SOCKET. An error is worth a
// log line, not an exit: the supervisor's health check still decides.
func Notify(state string) error {
	return sdNotify(notifySocket(), state)
}

func sdNotify(sock, state string) error {
	if sock == "" {
		return nil
	}
	// Go maps a leading '@' to the abstract namespace itself.
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}
