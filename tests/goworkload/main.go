// goworkload is a real Go program for the end-to-end proof and the demo. It holds a chosen
// amount of live heap, churns garbage at a chosen rate, and optionally touches anonymous
// mmap'd memory that the Go runtime does not see (like cgo allocations or mmap'd files: the
// reason GOMEMLIMIT needs headroom below the container's limit).
//
// Every -report interval it prints one JSON line on stdout: the GOMEMLIMIT the runtime uses,
// the cgroup's memory limit, GC counts and heap sizes. With -metrics-addr it also serves the
// client_golang default registry (go_gc_gomemlimit_bytes, go_memstats_*, ...) on /metrics;
// -runtime-metrics adds the opt-in runtime/metrics series the GC pressure rules prefer
// (go_gc_heap_live_bytes, go_cpu_classes_gc_total_cpu_seconds_total,
// go_cpu_classes_total_cpu_seconds_total).
//
// It exits 0 after -duration (0: run until SIGTERM). Memory is touched page by page, so what
// it holds is resident and counts against the container's memory limit.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const mib = 1 << 20

// optInRuntimeMetrics are the runtime/metrics (Go >= 1.21) that client_golang exports only
// when asked with collectors.WithGoCollectorRuntimeMetrics.
var optInRuntimeMetrics = regexp.MustCompile(`^/gc/heap/live:bytes$|^/cpu/classes/(gc/)?total:cpu-seconds$`)

// metricsHandler is client_golang's default registry, or with runtimeMetrics a registry
// with the same Go and process collectors plus optInRuntimeMetrics.
func metricsHandler(runtimeMetrics bool) http.Handler {
	if !runtimeMetrics {
		return promhttp.Handler()
	}
	registry := prometheus.NewRegistry()
	registry.MustRegister(
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
			collectors.GoRuntimeMetricsRule{Matcher: optInRuntimeMetrics},
		)),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return promhttp.HandlerFor(registry, promhttp.HandlerOpts{})
}

var pageSize = os.Getpagesize()

type report struct {
	Event          string  `json:"event"`
	Seconds        float64 `json:"t"`
	GoVersion      string  `json:"go,omitempty"`
	GOMEMLIMITEnv  *string `json:"gomemlimit_env,omitempty"`
	MemoryLimit    int64   `json:"memory_limit_bytes"`
	CgroupLimit    int64   `json:"cgroup_limit_bytes"`
	LiveMiB        int     `json:"live_mib"`
	OffHeapMiB     int     `json:"offheap_mib"`
	ChurnedMiB     int64   `json:"churned_mib"`
	NumGC          uint32  `json:"num_gc"`
	NumForcedGC    uint32  `json:"num_forced_gc"`
	HeapAllocBytes uint64  `json:"heap_alloc_bytes"`
	HeapSysBytes   uint64  `json:"heap_sys_bytes"`
	GoSysBytes     uint64  `json:"go_sys_bytes"`
	NextGCBytes    uint64  `json:"next_gc_bytes"`
}

// cgroupLimit reads the memory limit of this process's cgroup (v2 memory.max, v1
// memory.limit_in_bytes); -1 when there is none or it cannot be read.
func cgroupLimit() int64 {
	for _, path := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		raw, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		text := strings.TrimSpace(string(raw))
		if text == "max" {
			return -1
		}
		if v, err := strconv.ParseInt(text, 10, 64); err == nil {
			return v
		}
	}
	return -1
}

// touch writes one byte per page, so the kernel really backs (and charges) the memory.
func touch(b []byte) {
	for i := 0; i < len(b); i += pageSize {
		b[i] = 1
	}
}

func main() {
	liveMiB := flag.Int("live-mib", 64, "MiB of live heap to hold")
	offHeapMiB := flag.Int("offheap-mib", 0, "MiB of anonymous mmap to touch and hold (invisible to the Go runtime)")
	churnRate := flag.Int("churn-mib-per-sec", 256, "MiB of garbage to allocate per second (0: none)")
	chunkKiB := flag.Int("chunk-kib", 1024, "size of each garbage allocation, KiB")
	duration := flag.Duration("duration", 0, "exit 0 after this long (0: run until SIGTERM)")
	every := flag.Duration("report", time.Second, "interval between JSON reports on stdout")
	startDelay := flag.Duration("start-delay", 0, "idle this long before allocating anything")
	metricsAddr := flag.String("metrics-addr", "", "serve Prometheus metrics on this address, e.g. 127.0.0.1:9102")
	runtimeMetrics := flag.Bool("runtime-metrics", false, "with -metrics-addr, also export go_gc_heap_live_bytes and the GC CPU classes")
	flag.Parse()

	start := time.Now()
	out := json.NewEncoder(os.Stdout)
	var churned int64
	emit := func(event string) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		r := report{
			Event: event, Seconds: time.Since(start).Seconds(),
			MemoryLimit: debug.SetMemoryLimit(-1), CgroupLimit: cgroupLimit(),
			LiveMiB: *liveMiB, OffHeapMiB: *offHeapMiB, ChurnedMiB: churned / mib,
			NumGC: ms.NumGC, NumForcedGC: ms.NumForcedGC, HeapAllocBytes: ms.HeapAlloc,
			HeapSysBytes: ms.HeapSys, GoSysBytes: ms.Sys, NextGCBytes: ms.NextGC,
		}
		if event == "start" {
			r.GoVersion = runtime.Version()
			if v, ok := os.LookupEnv("GOMEMLIMIT"); ok {
				r.GOMEMLIMITEnv = &v
			}
		}
		_ = out.Encode(r)
	}
	emit("start")

	if *metricsAddr != "" {
		server := &http.Server{Addr: *metricsAddr, Handler: metricsHandler(*runtimeMetrics), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := server.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				fmt.Fprintf(os.Stderr, "goworkload: metrics server: %v\n", err)
				os.Exit(3)
			}
		}()
	}

	time.Sleep(*startDelay)
	if *offHeapMiB > 0 {
		region, err := syscall.Mmap(-1, 0, *offHeapMiB*mib, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
		if err != nil {
			fmt.Fprintf(os.Stderr, "goworkload: mmap %d MiB: %v\n", *offHeapMiB, err)
			os.Exit(3)
		}
		touch(region)
		defer runtime.KeepAlive(region)
	}

	// The live heap: 1 MiB chunks that stay reachable until the end.
	live := make([][]byte, *liveMiB)
	for i := range live {
		live[i] = make([]byte, mib)
		touch(live[i])
	}
	emit("live")

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	var deadline <-chan time.Time
	if *duration > 0 {
		deadline = time.After(*duration - time.Since(start))
	}
	ticker := time.NewTicker(*every)
	defer ticker.Stop()

	chunk := *chunkKiB * 1024
	// Pace the churn in 10 ms steps; sink keeps the latest chunk reachable so it is not elided.
	var sink []byte
	step := time.NewTicker(10 * time.Millisecond)
	defer step.Stop()
	perStep := int64(*churnRate) * mib / 100
	for {
		select {
		case <-stop:
			emit("stopped")
			runtime.KeepAlive(live)
			return
		case <-deadline:
			emit("done")
			runtime.KeepAlive(live)
			return
		case <-ticker.C:
			emit("report")
		case <-step.C:
			for budget := perStep; budget > 0 && chunk > 0; budget -= int64(chunk) {
				sink = make([]byte, chunk)
				touch(sink)
				churned += int64(chunk)
			}
		}
		runtime.KeepAlive(sink)
	}
}
