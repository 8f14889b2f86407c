package hotswap

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestListenNames(t *testing.T) {
	// The convention as systemd defines it: own pid only, one name per fd, "unknown" where none is given.
	const pid = 4242
	cases := []struct {
		name    string
		env     map[string]string
		want    []string
		wantErr bool
	}{
		{"absent", map[string]string{}, nil, false},
		{"other pid", map[string]string{"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http:admin"}, nil, false},
		{"bad pid", map[string]string{"LISTEN_PID": "x", "LISTEN_FDS": "1"}, nil, false},
		{"zero fds", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "0"}, nil, false},
		{"named", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http:admin"}, []string{"http", "admin"}, false},
		{"names short", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "http"}, []string{"http", "unknown", "unknown"}, false},
		{"names missing", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "1"}, []string{"unknown"}, false},
		{"empty name", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": ":admin"}, []string{"unknown", "admin"}, false},
		{"bad count", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "two"}, nil, true},
		{"negative count", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "-1"}, nil, true},
	}
	for _, c := range cases {
		got, err := listenNames(func(k string) string { return c.env[k] }, pid)
		if (err != nil) != c.wantErr {
			t.Errorf("%s: err = %v, want error %v", c.name, err, c.wantErr)
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: names = %q, want %q", c.name, got, c.want)
		}
	}
}

func listenerFile(t *testing.T, network, addr string) (net.Listener, *os.File) {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var f *os.File
	switch l := ln.(type) {
	case *net.TCPListener:
		f, err = l.File()
	case *net.UnixListener:
		f, err = l.File()
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return ln, f
}

func TestInheritedSocketsAreAdoptedAndServed(t *testing.T) {
	// A child given three sockets at fd 3-5 adopts them by name, close-on-exec, unsets LISTEN_*, serves all, and drains on SIGTERM.
	dir := t.TempDir()
	httpLn, httpFile := listenerFile(t, "tcp", "127.0.0.1:0")
	adminLn, adminFile := listenerFile(t, "tcp", "127.0.0.1:0")
	sockPath := filepath.Join(dir, "web.sock")
	_, webFile := listenerFile(t, "unix", sockPath)
	notify := notifyListener(t, filepath.Join(dir, "notify"))

	cmd, out := child(t, "serve", []string{"SET_LISTEN_PID=1", "LISTEN_FDS=3", "LISTEN_FDNAMES=http:admin:web",
		"NOTIFY_SOCKET=" + notify.LocalAddr().String()}, httpFile, adminFile, webFile)
	got := lines(t, out, "ready ")
	want := []string{
		"socket http fd=3 cloexec=true",
		"socket admin fd=4 cloexec=true",
		"socket web fd=5 cloexec=true",
		`listen nope: hotswap: no inherited socket is named "nope" (LISTEN_FDNAMES has http, admin, web): name it with --listen nope=URL`,
		"ready " + httpLn.Addr().String(),
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("the child printed\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The test never accepts on its copies, so only the child can answer.
	answer := fmt.Sprintf("pid %d", cmd.Process.Pid)
	for _, ln := range []net.Listener{httpLn, adminLn} {
		if body := httpGet(t, "http://"+ln.Addr().String()+"/"); body != answer {
			t.Errorf("%s answered %q, want %q", ln.Addr(), body, answer)
		}
	}
	unixClient := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sockPath)
	}}}
	res, err := unixClient.Get("http://web/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	unixClient.CloseIdleConnections()

	code, rest := stop(t, cmd, out)
	if code != 0 || !reflect.DeepEqual(rest, []string{"drained"}) {
		t.Fatalf("after SIGTERM: exit %d, printed %q", code, rest)
	}
	if got := readDatagram(t, notify); got != "STOPPING=1" {
		t.Fatalf("notify socket got %q, want STOPPING=1", got)
	}
	if _, err := os.Stat(sockPath); err != nil {
		t.Fatalf("the child removed the unix socket it inherited: %v", err)
	}
}

func TestAnotherProcessesSocketsAreIgnored(t *testing.T) {
	// LISTEN_* naming another pid (a leaky parent) are unset and ignored; Listen binds its own address.
	inherited, file := listenerFile(t, "tcp", "127.0.0.1:0")
	cmd, out := child(t, "serve", []string{"LISTEN_PID=1", "LISTEN_FDS=1", "LISTEN_FDNAMES=http", "ADDR=127.0.0.1:0"}, file)
	got := lines(t, out, "ready ")
	addr := strings.TrimPrefix(got[len(got)-1], "ready ")
	if len(got) != 1 || addr == inherited.Addr().String() {
		t.Fatalf("the child printed %q", got)
	}
	if body := httpGet(t, "http://"+addr+"/"); body != fmt.Sprintf("pid %d", cmd.Process.Pid) {
		t.Fatalf("answer %q", body)
	}
	if code, rest := stop(t, cmd, out); code != 0 || len(rest) != 1 {
		t.Fatalf("after SIGTERM: exit %d, printed %q", code, rest)
	}
}

func TestBadInheritanceIsOneClearError(t *testing.T) {
	// A bad LISTEN_FDS or an fd that is no listening socket fails adoption with one line, and LISTEN_* are unset anyway.
	regular, err := os.CreateTemp(t.TempDir(), "not-a-socket")
	if err != nil {
		t.Fatal(err)
	}
	defer regular.Close()
	for _, c := range []struct {
		env   []string
		files []*os.File
		want  string
	}{
		{[]string{"LISTEN_FDS=two"}, nil, `error hotswap: LISTEN_FDS="two" is not a count of sockets`},
		{[]string{"LISTEN_FDS=1", "LISTEN_FDNAMES=http"}, []*os.File{regular},
			"error hotswap: inherited fd 3 (http) is not a listening socket: "},
	} {
		cmd, out := child(t, "serve", append([]string{"SET_LISTEN_PID=1"}, c.env...), c.files...)
		got := lines(t, out, "error ")
		if len(got) != 1 || !strings.HasPrefix(got[0], c.want) {
			t.Errorf("%v: the child printed %q, want %q", c.env, got, c.want)
		}
		cmd.Wait()
		if code := cmd.ProcessState.ExitCode(); code != 1 {
			t.Errorf("%v: exit %d", c.env, code)
		}
	}
}

func TestListenBindsWhenNothingIsInherited(t *testing.T) {
	// With no LISTEN_* at all, Listen is net.Listen("tcp", addr) and Listeners is empty.
	sockets, err := Listeners()
	if err != nil || sockets != nil {
		t.Fatalf("Listeners = %v, %v", sockets, err)
	}
	ln, err := Listen("http", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if ln.Addr().(*net.TCPAddr).Port == 0 {
		t.Fatalf("bound %s", ln.Addr())
	}
}
