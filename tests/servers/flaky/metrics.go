package main

import (
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// defaultBuckets are client_golang's prometheus.DefBuckets.
var defaultBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// series is one (code, method) pair, as promhttp labels them.
type series struct {
	code, method string
}

// observed is one series' counter and histogram.
type observed struct {
	count   uint64
	sum     float64
	buckets []uint64 // per bucket, not cumulative; the last is +Inf
}

// metrics is a hand-written http_requests_total counter and
// http_request_duration_seconds histogram, both labelled code and method.
type metrics struct {
	mu     sync.Mutex
	series map[series]*observed
}

func newMetrics() *metrics {
	return &metrics{series: map[series]*observed{}}
}

func (m *metrics) observe(code int, method string, seconds float64) {
	key := series{strconv.Itoa(code), sanitizeMethod(method)}
	m.mu.Lock()
	defer m.mu.Unlock()
	o := m.series[key]
	if o == nil {
		o = &observed{buckets: make([]uint64, len(defaultBuckets)+1)}
		m.series[key] = o
	}
	o.count++
	o.sum += seconds
	i := sort.SearchFloat64s(defaultBuckets, seconds) // first bound >= seconds: le is inclusive
	o.buckets[i]++
}

// sanitizeMethod lowercases the usual methods as promhttp does.
func sanitizeMethod(m string) string {
	switch m {
	case "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "CONNECT", "TRACE":
		return strings.ToLower(m)
	}
	return m
}

// recorder remembers the status a handler wrote.
type recorder struct {
	http.ResponseWriter
	code int
}

func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// instrument counts and times every request next answers.
func (m *metrics) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		if rec.code == 0 {
			rec.code = http.StatusOK
		}
		m.observe(rec.code, r.Method, time.Since(start).Seconds())
	})
}

func (m *metrics) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	m.write(w)
}

func formatFloat(f float64) string {
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// write renders the text exposition format, series in a stable order.
func (m *metrics) write(w io.Writer) {
	m.mu.Lock()
	keys := make([]series, 0, len(m.series))
	copied := make(map[series]observed, len(m.series))
	for k, o := range m.series {
		keys = append(keys, k)
		copied[k] = observed{o.count, o.sum, append([]uint64(nil), o.buckets...)}
	}
	m.mu.Unlock()
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].code != keys[j].code {
			return keys[i].code < keys[j].code
		}
		return keys[i].method < keys[j].method
	})

	fmt.Fprintln(w, "# HELP http_requests_total Total number of HTTP requests by status code and method.")
	fmt.Fprintln(w, "# TYPE http_requests_total counter")
	for _, k := range keys {
		fmt.Fprintf(w, "http_requests_total{code=%q,method=%q} %d\n", k.code, k.method, copied[k].count)
	}
	fmt.Fprintln(w, "# HELP http_request_duration_seconds A histogram of request latencies.")
	fmt.Fprintln(w, "# TYPE http_request_duration_seconds histogram")
	for _, k := range keys {
		o := copied[k]
		labels := fmt.Sprintf("code=%q,method=%q", k.code, k.method)
		var cumulative uint64
		for i, bound := range defaultBuckets {
			cumulative += o.buckets[i]
			fmt.Fprintf(w, "http_request_duration_seconds_bucket{%s,le=%q} %d\n", labels, formatFloat(bound), cumulative)
		}
		cumulative += o.buckets[len(defaultBuckets)]
		fmt.Fprintf(w, "http_request_duration_seconds_bucket{%s,le=\"+Inf\"} %d\n", labels, cumulative)
		fmt.Fprintf(w, "http_request_duration_seconds_sum{%s} %s\n", labels, formatFloat(o.sum))
		fmt.Fprintf(w, "http_request_duration_seconds_count{%s} %d\n", labels, o.count)
	}
}
