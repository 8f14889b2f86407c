package hotswap

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// listenFdsStart is SD_LISTEN_FDS_START: inherited sockets start after stdio.
const listenFdsStart = 3

// Socket is one inherited listening socket.
type Socket struct {
	// Name is the socket's name in LISTEN_FDNAMES ("unknown" when not named).
	Name string
	// FD is the descriptor it was passed as (3, 4, ...). The listener itself
	// holds a close-on-exec duplicate; FD is closed once it is adopted.
	FD int
	// Listener serves the socket.
	Listener net.Listener
}

// The sockets are adopted once per process: the first call reads and unsets
// the LISTEN_* variables, so every later call must see the same answer.
var (
	adoptOnce sync.Once
	adopted   []Socket
	adoptErr  error
)

// Listeners returns every socket this process inherited through the systemd
// socket-activation convention (LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES), in fd
// order, or nil when it inherited none. Sockets count as inherited only when
// LISTEN_PID is this process's own pid: a parent may leak its own variables.
//
// The first call of Listeners or [Listen] adopts the sockets and unsets the
// three variables, so that nothing this process starts adopts them too; later
// calls return the same listeners.
func Listeners() ([]Socket, error) {
	adoptOnce.Do(func() {
		adopted, adoptErr = adopt()
	})
	return adopted, adoptErr
}

// Listen returns the inherited socket called name when the process inherited
// sockets (see [Listeners]), else its own net.Listen("tcp", addr). So the same
// binary serves the supervisor's socket under hotswapd and binds addr when run
// on its own. When sockets were inherited but none is called name, Listen
// fails and names those there are: binding addr then would fight the
// supervisor for the port.
func Listen(name, addr string) (net.Listener, error) {
	sockets, err := Listeners()
	if err != nil {
		return nil, err
	}
	if len(sockets) == 0 {
		return net.Listen("tcp", addr)
	}
	names := make([]string, len(sockets))
	for i, s := range sockets {
		if s.Name == name {
			return s.Listener, nil
		}
		names[i] = s.Name
	}
	return nil, fmt.Errorf("hotswap: no inherited socket is named %q (LISTEN_FDNAMES has %s): name it with --listen %s=URL",
		name, strings.Join(names, ", "), name)
}

// adopt turns the inherited descriptors into listeners and unsets the
// variables, whatever they said.
func adopt() ([]Socket, error) {
	names, err := listenNames(os.Getenv, os.Getpid())
	for _, key := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		os.Unsetenv(key)
	}
	if err != nil || len(names) == 0 {
		return nil, err
	}
	// Close-on-exec first, as go-systemd does: should adoption fail below, no
	// inherited descriptor reaches a program this process starts.
	for i := range names {
		syscall.CloseOnExec(listenFdsStart + i)
	}
	sockets := make([]Socket, 0, len(names))
	for i, name := range names {
		fd := listenFdsStart + i
		f := os.NewFile(uintptr(fd), name)
		// FileListener works for TCP and unix sockets and returns a
		// close-on-exec duplicate; the original is closed so the numbers 3..
		// are free again. The socket stays open in the supervisor. A unix
		// listener made this way never unlinks its path on Close.
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			for _, s := range sockets {
				s.Listener.Close()
			}
			return nil, fmt.Errorf("hotswap: inherited fd %d (%s) is not a listening socket: %w", fd, name, err)
		}
		sockets = append(sockets, Socket{Name: name, FD: fd, Listener: ln})
	}
	return sockets, nil
}

// listenNames applies the convention to an environment: one name per
// inherited fd, or nil when the sockets are not this process's (LISTEN_PID
// absent or another pid's). Missing names are "unknown", as in sd_listen_fds.
func listenNames(getenv func(string) string, pid int) ([]string, error) {
	lp, err := strconv.Atoi(getenv("LISTEN_PID"))
	if err != nil || lp != pid {
		return nil, nil
	}
	n, err := strconv.Atoi(getenv("LISTEN_FDS"))
	if err != nil || n < 0 {
		return nil, fmt.Errorf("hotswap: LISTEN_FDS=%q is not a count of sockets", getenv("LISTEN_FDS"))
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
