package main

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain runs main itself when re-executed as a child by TestServerDrainsOnSIGTERM.
func TestMain(m *testing.M) {
	if os.Getenv("EXAMPLE_SERVER_CHILD") == "1" {
		os.Args = append([]string{os.Args[0]}, strings.Fields(os.Getenv("EXAMPLE_SERVER_ARGS"))...)
		main()
		return
	}
	os.Exit(m.Run())
}

func get(t *testing.T, a *app, path string) *http.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	a.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec.Result()
}

func TestRoutesAndHeaders(t *testing.T) {
	// Every route answers with the version and pid headers; healthz=fail answers 503.
	a := &app{version: "v9", pid: "7", healthz: "ok"}
	for path, want := range map[string]string{"/": "hello from v9 pid 7\n", "/version": "v9\n", "/healthz": "ok\n"} {
		rec := httptest.NewRecorder()
		a.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != 200 || rec.Body.String() != want {
			t.Errorf("%s: %d %q, want 200 %q", path, rec.Code, rec.Body.String(), want)
		}
		if rec.Header().Get("X-Version") != "v9" || rec.Header().Get("X-Pid") != "7" {
			t.Errorf("%s: headers %v", path, rec.Header())
		}
	}
	a.healthz = "fail"
	if res := get(t, a, "/healthz"); res.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("healthz=fail: status %d, want 503", res.StatusCode)
	}
	if res := get(t, a, "/sleep?d=2h"); res.StatusCode != http.StatusBadRequest {
		t.Errorf("/sleep?d=2h: status %d, want 400", res.StatusCode)
	}
}

func TestServerDrainsOnSIGTERM(t *testing.T) {
	// Run on its own, the server binds -addr, reloads on SIGHUP, says Connection: close while draining, and exits 0.
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "EXAMPLE_SERVER_CHILD=1", "EXAMPLE_SERVER_ARGS=-addr 127.0.0.1:0 -drain-window 5s")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	errLines, outLines := lines(stderr), lines(stdout)
	serving := wait(t, errLines, "serving on ")
	addr := strings.TrimSuffix(serving[strings.Index(serving, "serving on ")+len("serving on "):], "(-addr)")
	wait(t, outLines, "ready pid=")

	// A keep-alive connection held open across the signal is told to close.
	client := &http.Client{Timeout: 5 * time.Second}
	if res := fetch(t, client, "http://"+addr+"/version"); res.Close {
		t.Fatal("Connection: close before the drain")
	}
	cmd.Process.Signal(syscall.SIGHUP)
	wait(t, outLines, "SIGHUP received")
	cmd.Process.Signal(syscall.SIGTERM)
	signalled := time.Now()
	wait(t, errLines, "terminated: draining (Connection: close for 5s, then shutdown within 25s)")
	// The log line comes a moment before the drain starts: ask until the
	// answer says Connection: close (the connection stays open until then).
	for res := fetch(t, client, "http://"+addr+"/version"); !res.Close; res = fetch(t, client, "http://"+addr+"/version") {
		if time.Since(signalled) > 4*time.Second {
			t.Fatal("no Connection: close while draining")
		}
	}
	wait(t, errLines, "drained; exiting 0")
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v", err)
	}
	// Its only connection has gone: the drain ends long before the 5s window.
	if took := time.Since(signalled); took > 4*time.Second {
		t.Fatalf("the drain took %s", took)
	}
}

func fetch(t *testing.T, client *http.Client, url string) *http.Response {
	t.Helper()
	res, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res
}

func lines(r io.Reader) <-chan string {
	c := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			c <- sc.Text()
		}
		close(c)
	}()
	return c
}

// wait returns the first line containing want, within a deadline.
func wait(t *testing.T, c <-chan string, want string) string {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case line, ok := <-c:
			if !ok {
				t.Fatalf("output ended before %q", want)
			}
			if strings.Contains(line, want) {
				return line
			}
		case <-deadline:
			t.Fatalf("timed out waiting for %q", want)
		}
	}
}
