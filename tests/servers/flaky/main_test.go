package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func mustKnobs(t *testing.T, args ...string) knobs {
	t.Helper()
	k, _, err := parseKnobs(args)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestErrorPercentIsExact(t *testing.T) {
	for _, tc := range []struct {
		percent     string
		first, of1k int64
	}{{"5", 20, 50}, {"25", 4, 250}, {"0.5", 200, 5}, {"100", 1, 1000}, {"0", 0, 0}} {
		k := mustKnobs(t, "-error-percent", tc.percent)
		var first, failed int64
		for n := int64(1); n <= 1000; n++ {
			if k.failNth(n) {
				failed++
				if first == 0 {
					first = n
				}
			}
		}
		if first != tc.first || failed != tc.of1k {
			t.Errorf("%s%%: first failure at %d, %d of 1000; want %d and %d", tc.percent, first, failed, tc.first, tc.of1k)
		}
	}
}

func TestBadKnobsAreRefused(t *testing.T) {
	for _, args := range [][]string{
		{"-error-percent", "101"}, {"-error-percent", "x"}, {"-latency", "5"},
		{"-grow-after", "-1s"}, {"-grow-mib", "-3"}, {"-hang-health-after", "soon"},
	} {
		if _, _, err := parseKnobs(args); err == nil {
			t.Errorf("%v: accepted", args)
		}
	}
}

func get(t *testing.T, h http.Handler, method, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

func TestMetricsCountAppRequestsLikePromhttp(t *testing.T) {
	s := &server{knobs: mustKnobs(t, "-error-percent", "25"), started: time.Now(), pid: "1", metrics: newMetrics()}
	h := s.routes()
	codes := map[int]int{}
	for i := 0; i < 8; i++ {
		code, _ := get(t, h, "GET", "/")
		codes[code]++
	}
	get(t, h, "POST", "/")
	get(t, h, "GET", "/healthz") // not counted
	if codes[200] != 6 || codes[500] != 2 {
		t.Fatalf("25%% of 8 requests: got %v", codes)
	}
	code, text := get(t, h, "GET", "/metrics")
	if code != 200 {
		t.Fatalf("/metrics answered %d", code)
	}
	for _, want := range []string{
		"# TYPE http_requests_total counter\n",
		`http_requests_total{code="200",method="get"} 6` + "\n",
		`http_requests_total{code="200",method="post"} 1` + "\n",
		`http_requests_total{code="500",method="get"} 2` + "\n",
		"# TYPE http_request_duration_seconds histogram\n",
		`http_request_duration_seconds_bucket{code="200",method="get",le="0.005"} 6` + "\n",
		`http_request_duration_seconds_bucket{code="500",method="get",le="+Inf"} 2` + "\n",
		`http_request_duration_seconds_count{code="200",method="get"} 6` + "\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "healthz") || strings.Count(text, "http_requests_total{") != 3 {
		t.Errorf("only the app's requests are counted:\n%s", text)
	}
}

func TestLatencyLandsInItsBucket(t *testing.T) {
	s := &server{knobs: mustKnobs(t, "-latency", "30ms"), started: time.Now(), pid: "1", metrics: newMetrics()}
	h := s.routes()
	get(t, h, "GET", "/")
	_, text := get(t, h, "GET", "/metrics")
	for _, want := range []string{
		`le="0.025"} 0`, `le="0.05"} 1`, `le="+Inf"} 1`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("a 30ms request: /metrics lacks %q:\n%s", want, text)
		}
	}
}

func TestHealthHangsAfterItsTime(t *testing.T) {
	s := &server{knobs: mustKnobs(t, "-hang-health-after", "1h"), started: time.Now(), pid: "1", metrics: newMetrics()}
	if code, _ := get(t, s.routes(), "GET", "/healthz"); code != 200 {
		t.Fatalf("before the hang: %d", code)
	}
	s.started = time.Now().Add(-2 * time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	rec := httptest.NewRecorder()
	done := make(chan struct{})
	go func() {
		s.routes().ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil).WithContext(ctx))
		close(done)
	}()
	select {
	case <-done:
		if ctx.Err() == nil {
			t.Fatal("/healthz answered after the hang time")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("/healthz did not give up with its client")
	}
}

func TestMemoryGrowsAfterItsTime(t *testing.T) {
	s := &server{knobs: mustKnobs(t, "-grow-after", "10ms", "-grow-mib", "3")}
	s.grow()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ballastMu.Lock()
		size := len(ballast)
		ballastMu.Unlock()
		if size == 3<<20 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 5s the ballast is %d bytes, want 3 MiB", size)
		}
		time.Sleep(time.Millisecond) // polling a condition with a deadline
	}
}
