// Command loadgen sends AdmissionReviews to a webhook over keep-alive HTTP/1.1 TLS
// connections and prints one JSON object with the throughput and latency it saw.
//
//	loadgen -url https://127.0.0.1:PORT/path -ca ca.crt -reviews reviews.jsonl \
//	        [-rate R | -rate 0] [-connections C] [-duration 10s] [-warmup 2s] [-expect patch.json]
//
// With -rate R > 0 the load is an open loop: request i is scheduled at start + i/R whatever
// the server does, at most C are in flight, and each latency is measured from the request's
// scheduled send time (so a slow server's queueing is counted: no coordinated omission).
// With -rate 0 it is a closed loop: C connections each send the next request as soon as the
// previous answer arrived (saturation); latency is from send to answer.
//
// Requests scheduled (open) or sent (closed) during the warm-up are sent but not measured;
// achieved_rps is the number of responses that completed inside the measurement window
// divided by its length. Every response is decoded after its latency is taken: its uid must
// match the request's, and a patch must be base64 of a JSON array (and, with -expect, equal
// to that file's JSON).
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"reflect"
	"sort"
	"sync"
	"time"
)

type review struct {
	body []byte
	uid  string
}

type sample struct {
	scheduled time.Time // open loop: the scheduled send time; closed loop: the send time
	done      time.Time
	latency   time.Duration
	err       bool
	sent      bool
	patched   bool
	badPatch  bool
	badReply  bool
}

type result struct {
	Mode          string  `json:"mode"`
	Connections   int     `json:"connections"`
	DurationS     float64 `json:"duration_s"`
	WarmupS       float64 `json:"warmup_s"`
	OfferedRPS    float64 `json:"offered_rps"`
	AchievedRPS   float64 `json:"achieved_rps"`
	Requests      int     `json:"requests"`
	Errors        int     `json:"errors"`
	P50Ms         float64 `json:"p50_ms"`
	P95Ms         float64 `json:"p95_ms"`
	P99Ms         float64 `json:"p99_ms"`
	MaxMs         float64 `json:"max_ms"`
	Patched       int     `json:"patched"`
	BadPatches    int     `json:"bad_patches"`
	BadResponses  int     `json:"bad_responses"`
	SentTotal     int     `json:"sent_total"`
	WarmupSent    int     `json:"warmup_sent"`
	ReviewsLoaded int     `json:"reviews"`
}

type client struct {
	http    *http.Client
	url     string
	expect  any
	timeout time.Duration
}

type answer struct {
	Response *struct {
		UID       string `json:"uid"`
		Allowed   bool   `json:"allowed"`
		PatchType string `json:"patchType"`
		Patch     string `json:"patch"`
	} `json:"response"`
}

// send posts one review; the latency is from `from` (the scheduled or actual send time).
func (c *client) send(r review, from time.Time) sample {
	s := sample{scheduled: from, sent: true}
	request, err := http.NewRequest(http.MethodPost, c.url, bytes.NewReader(r.body))
	if err != nil {
		panic(err)
	}
	request.Header.Set("Content-Type", "application/json")
	request.Header.Set("Accept", "application/json")
	response, err := c.http.Do(request)
	var data []byte
	if err == nil {
		data, err = io.ReadAll(response.Body)
		response.Body.Close()
	}
	s.done = time.Now()
	s.latency = s.done.Sub(from)
	if err != nil || response.StatusCode != http.StatusOK {
		s.err = true
		return s
	}
	c.check(r, data, &s)
	return s
}

func (c *client) check(r review, data []byte, s *sample) {
	var a answer
	if err := json.Unmarshal(data, &a); err != nil || a.Response == nil || a.Response.UID != r.uid || !a.Response.Allowed {
		s.badReply = true
		return
	}
	if a.Response.Patch == "" {
		return
	}
	s.patched = true
	raw, err := base64.StdEncoding.DecodeString(a.Response.Patch)
	var ops []any
	if err == nil {
		err = json.Unmarshal(raw, &ops)
	}
	if err != nil || a.Response.PatchType != "JSONPatch" {
		s.badPatch = true
		return
	}
	if c.expect != nil && !reflect.DeepEqual(any(ops), c.expect) {
		s.badPatch = true
	}
}

func loadReviews(path string) ([]review, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	scanner := bufio.NewScanner(file)
	scanner.Buffer(make([]byte, 1<<20), 16<<20)
	var reviews []review
	for scanner.Scan() {
		line := bytes.TrimSpace(scanner.Bytes())
		if len(line) == 0 {
			continue
		}
		var head struct {
			Request struct {
				UID string `json:"uid"`
			} `json:"request"`
		}
		if err := json.Unmarshal(line, &head); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, len(reviews)+1, err)
		}
		reviews = append(reviews, review{body: append([]byte(nil), line...), uid: head.Request.UID})
	}
	if err := scanner.Err(); err != nil {
		return nil, err
	}
	if len(reviews) == 0 {
		return nil, fmt.Errorf("%s: no reviews", path)
	}
	return reviews, nil
}

func percentile(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0 // JSON has no NaN; requests is 0 then
	}
	rank := int(math.Ceil(q * float64(len(sorted))))
	rank = max(1, min(len(sorted), rank))
	return float64(sorted[rank-1]) / float64(time.Millisecond)
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "loadgen: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	url := flag.String("url", "", "webhook URL (https://127.0.0.1:PORT/path)")
	caFile := flag.String("ca", "", "PEM CA that signed the server's certificate")
	reviewsFile := flag.String("reviews", "", "JSON lines, one AdmissionReview per line (sent round robin)")
	rate := flag.Float64("rate", 0, "open loop at this many requests/s; 0: closed loop")
	connections := flag.Int("connections", 8, "connections (closed loop); most requests in flight (open loop)")
	duration := flag.Duration("duration", 10*time.Second, "measurement window")
	warmup := flag.Duration("warmup", 2*time.Second, "load before the window, not measured")
	timeout := flag.Duration("timeout", 10*time.Second, "per request, from its scheduled time")
	expectFile := flag.String("expect", "", "optional: JSON the decoded patches must equal")
	flag.Parse()
	if *url == "" || *caFile == "" || *reviewsFile == "" {
		fail("-url, -ca and -reviews are required")
	}
	if *connections < 1 || *duration <= 0 || *rate < 0 || *warmup < 0 {
		fail("bad -connections, -duration, -warmup or -rate")
	}
	reviews, err := loadReviews(*reviewsFile)
	if err != nil {
		fail("%v", err)
	}
	caPEM, err := os.ReadFile(*caFile)
	if err != nil {
		fail("%v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		fail("%s: no certificate", *caFile)
	}
	c := &client{url: *url, timeout: *timeout}
	if *expectFile != "" {
		data, err := os.ReadFile(*expectFile)
		if err == nil {
			err = json.Unmarshal(data, &c.expect)
		}
		if err != nil {
			fail("%s: %v", *expectFile, err)
		}
	}
	transport := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:   false, // HTTP/1.1 keep-alive, as the API server's webhook client
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
		MaxIdleConns:        *connections,
		MaxIdleConnsPerHost: *connections,
		MaxConnsPerHost:     *connections,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	c.http = &http.Client{Transport: transport, Timeout: *timeout}

	start := time.Now().Add(50 * time.Millisecond)
	windowStart := start.Add(*warmup)
	windowEnd := windowStart.Add(*duration)
	perWorker := make([][]sample, *connections)
	var wg sync.WaitGroup
	mode := "closed"
	if *rate > 0 {
		mode = "open"
		interval := float64(time.Second) / *rate
		total := int(math.Ceil((*warmup + *duration).Seconds() * *rate))
		jobs := make(chan int, total+1)
		go func() {
			for i := 0; ; i++ {
				at := start.Add(time.Duration(float64(i) * interval))
				if !at.Before(windowEnd) {
					break
				}
				if wait := time.Until(at); wait > 0 {
					time.Sleep(wait)
				}
				jobs <- i
			}
			close(jobs)
		}()
		for w := range *connections {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range jobs {
					at := start.Add(time.Duration(float64(i) * interval))
					if time.Since(at) > *timeout { // waited too long in the queue: not sent
						perWorker[w] = append(perWorker[w], sample{scheduled: at, done: time.Now(), latency: time.Since(at), err: true})
						continue
					}
					perWorker[w] = append(perWorker[w], c.send(reviews[i%len(reviews)], at))
				}
			}()
		}
	} else {
		var mu sync.Mutex
		next := 0
		for w := range *connections {
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(time.Until(start))
				for {
					now := time.Now()
					if !now.Before(windowEnd) {
						return
					}
					mu.Lock()
					i := next
					next++
					mu.Unlock()
					perWorker[w] = append(perWorker[w], c.send(reviews[i%len(reviews)], now))
				}
			}()
		}
	}
	wg.Wait()
	transport.CloseIdleConnections()

	out := result{
		Mode: mode, Connections: *connections, DurationS: duration.Seconds(), WarmupS: warmup.Seconds(),
		OfferedRPS: *rate, ReviewsLoaded: len(reviews),
	}
	var latencies []time.Duration
	completedInWindow := 0
	for _, samples := range perWorker {
		for _, s := range samples {
			if s.sent {
				out.SentTotal++
			}
			if !s.err && !s.done.Before(windowStart) && s.done.Before(windowEnd) {
				completedInWindow++
			}
			if s.scheduled.Before(windowStart) {
				if s.sent {
					out.WarmupSent++
				}
				continue
			}
			out.Requests++
			latencies = append(latencies, s.latency)
			switch {
			case s.err:
				out.Errors++
			case s.badReply:
				out.BadResponses++
			}
			if s.patched {
				out.Patched++
			}
			if s.badPatch {
				out.BadPatches++
			}
		}
	}
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	out.AchievedRPS = float64(completedInWindow) / duration.Seconds()
	out.P50Ms = percentile(latencies, 0.50)
	out.P95Ms = percentile(latencies, 0.95)
	out.P99Ms = percentile(latencies, 0.99)
	if len(latencies) > 0 {
		out.MaxMs = float64(latencies[len(latencies)-1]) / float64(time.Millisecond)
	}
	if mode == "closed" {
		out.OfferedRPS = 0
	}
	encoded, err := json.Marshal(out)
	if err != nil {
		fail("%v", err)
	}
	fmt.Println(string(encoded))
}
