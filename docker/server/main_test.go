package main

import (
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"
)

func TestListenNames(t *testing.T) {
	const pid = 4242
	cases := []struct {
		name    string
		env     map[string]string
		want    []string
		wantErr bool
	}{
		{"absent", map[string]string{}, nil, false},
		{"other pid", map[string]string{"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http:probe"}, nil, false},
		{"bad pid", map[string]string{"LISTEN_PID": "x", "LISTEN_FDS": "1"}, nil, false},
		{"zero fds", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "0"}, nil, false},
		{"named", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http:probe"}, []string{"http", "probe"}, false},
		{"names short", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "http"}, []string{"http", "unknown", "unknown"}, false},
		{"names missing", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "1"}, []string{"unknown"}, false},
		{"empty name", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": ":probe"}, []string{"unknown", "probe"}, false},
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

func get(t *testing.T, a *app, path string) *http.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	a.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec.Result()
}

func TestDrainingSetsConnectionClose(t *testing.T) {
	a := &app{version: "v9", pid: "7", healthz: "ok"}
	if got := get(t, a, "/").Header.Get("Connection"); got != "" {
		t.Fatalf("before drain: Connection = %q, want none", got)
	}
	a.draining.Store(true)
	for _, p := range []string{"/", "/version", "/healthz", "/missing"} {
		res := get(t, a, p)
		if got := res.Header.Get("Connection"); got != "close" {
			t.Errorf("draining %s: Connection = %q, want close", p, got)
		}
	}
}

func TestRoutesAndHeaders(t *testing.T) {
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
}
