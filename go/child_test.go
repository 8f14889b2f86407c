package hotswap

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The tests that need a fresh process (sockets at fd 3.., LISTEN_* and
// NOTIFY_SOCKET read once per process) re-run this test binary as a child
// with HOTSWAP_TEST_CHILD naming what it does, and read the lines it prints.
func TestMain(m *testing.M) {
	switch os.Getenv("HOTSWAP_TEST_CHILD") {
	case "":
		os.Exit(m.Run())
	case "serve":
		childServe()
	case "notify":
		childNotify()
	default:
		fmt.Println("unknown HOTSWAP_TEST_CHILD")
		os.Exit(2)
	}
	os.Exit(0)
}

// childServe is the three-line server: it reports what it adopted, then
// serves every inherited socket (or binds ADDR) until SIGTERM.
func childServe() {
	if os.Getenv("SET_LISTEN_PID") != "" {
		// What a supervisor does in the child after fork; exec.Cmd cannot,
		// since the pid is not known before the child exists.
		os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	}
	sockets, err := Listeners()
	for _, key := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		if v, ok := os.LookupEnv(key); ok {
			fmt.Printf("env %s=%s still set\n", key, v)
		}
	}
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	for _, s := range sockets {
		fmt.Printf("socket %s fd=%d cloexec=%v\n", s.Name, s.FD, cloexec(s))
	}
	if len(sockets) > 0 {
		if _, err := Listen("nope", ""); err != nil {
			fmt.Println("listen nope:", err)
		}
	}
	ln, err := Listen("http", os.Getenv("ADDR"))
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	all := []net.Listener{ln}
	for _, s := range sockets {
		if s.Listener != ln {
			all = append(all, s.Listener)
		}
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "pid %d", os.Getpid())
	})}
	fmt.Printf("ready %s\n", ln.Addr())
	if err := Serve(srv, all...); err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("drained")
}

func childNotify() {
	fmt.Println("ready:", Ready())
	if v, ok := os.LookupEnv("NOTIFY_SOCKET"); ok {
		fmt.Printf("env NOTIFY_SOCKET=%s still set\n", v)
	}
	fmt.Println("status:", Notify("STATUS=after the variable is gone"))
}

// cloexec says whether the listener's own descriptor is close-on-exec.
func cloexec(s Socket) bool {
	raw, err := s.Listener.(syscall.Conn).SyscallConn()
	if err != nil {
		return false
	}
	var flags uintptr
	raw.Control(func(fd uintptr) {
		flags, _, _ = syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_GETFD, 0)
	})
	return flags&syscall.FD_CLOEXEC != 0
}

// child starts this test binary in a child mode and returns it with a reader
// of its stdout lines.
func child(t *testing.T, mode string, env []string, files ...*os.File) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(cleanEnv(), "HOTSWAP_TEST_CHILD="+mode)
	cmd.Env = append(cmd.Env, env...)
	cmd.ExtraFiles = files
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd, bufio.NewScanner(out)
}

func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LISTEN_") && !strings.HasPrefix(kv, "NOTIFY_SOCKET=") {
			env = append(env, kv)
		}
	}
	return env
}

// lines reads stdout lines until one starts with stop (returned last).
func lines(t *testing.T, sc *bufio.Scanner, stop string) []string {
	t.Helper()
	var got []string
	for sc.Scan() {
		got = append(got, sc.Text())
		if strings.HasPrefix(sc.Text(), stop) {
			return got
		}
	}
	t.Fatalf("the child ended before printing %q; it printed %q", stop, got)
	return nil
}

// stop sends SIGTERM to the child this test started and returns its exit
// status and what it printed after.
func stop(t *testing.T, cmd *exec.Cmd, sc *bufio.Scanner) (int, []string) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var rest []string
	for sc.Scan() {
		rest = append(rest, sc.Text())
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the child did not exit after SIGTERM")
	}
	return cmd.ProcessState.ExitCode(), rest
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	// No keep-alive: an idle connection would hold the child's drain window.
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	res, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
