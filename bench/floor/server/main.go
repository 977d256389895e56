// Command server is the Go "floor" for the admission benchmark: the least a Go mutating
// webhook can do per request. It decodes each AdmissionReview fully with encoding/json
// (request.object as a generic value, the parse cost a real Go webhook such as Kyverno
// pays), answers Pod CREATE with a static JSON patch and anything else with allowed.
//
//	server -addr 127.0.0.1:PORT -cert tls.crt -key tls.key -patch patch.json
//
// The patch file holds a JSON array of RFC 6902 operations; its bytes are sent as they are
// (base64), so the patch matches byte for byte the one it was written from. GOMAXPROCS is
// taken from the environment (the Go runtime reads it).
package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"runtime"
	"time"
)

const maxBody = 3 << 20 // the API server's limit for a request body is 3 MiB

type groupVersionKind struct {
	Group   string `json:"group"`
	Version string `json:"version"`
	Kind    string `json:"kind"`
}

type groupVersionResource struct {
	Group    string `json:"group"`
	Version  string `json:"version"`
	Resource string `json:"resource"`
}

type userInfo struct {
	Username string              `json:"username,omitempty"`
	UID      string              `json:"uid,omitempty"`
	Groups   []string            `json:"groups,omitempty"`
	Extra    map[string][]string `json:"extra,omitempty"`
}

// admissionRequest mirrors k8s.io/api/admission/v1.AdmissionRequest.
type admissionRequest struct {
	UID                string                `json:"uid"`
	Kind               groupVersionKind      `json:"kind"`
	Resource           groupVersionResource  `json:"resource"`
	SubResource        string                `json:"subResource,omitempty"`
	RequestKind        *groupVersionKind     `json:"requestKind,omitempty"`
	RequestResource    *groupVersionResource `json:"requestResource,omitempty"`
	RequestSubResource string                `json:"requestSubResource,omitempty"`
	Name               string                `json:"name,omitempty"`
	Namespace          string                `json:"namespace,omitempty"`
	Operation          string                `json:"operation"`
	UserInfo           userInfo              `json:"userInfo"`
	Object             any                   `json:"object,omitempty"`
	OldObject          any                   `json:"oldObject,omitempty"`
	DryRun             *bool                 `json:"dryRun,omitempty"`
	Options            any                   `json:"options,omitempty"`
}

type admissionResponse struct {
	UID       string   `json:"uid"`
	Allowed   bool     `json:"allowed"`
	PatchType string   `json:"patchType,omitempty"`
	Patch     []byte   `json:"patch,omitempty"` // encoding/json writes []byte as base64
	Warnings  []string `json:"warnings,omitempty"`
}

type admissionReview struct {
	APIVersion string             `json:"apiVersion"`
	Kind       string             `json:"kind"`
	Request    *admissionRequest  `json:"request,omitempty"`
	Response   *admissionResponse `json:"response,omitempty"`
}

type handler struct {
	patch []byte
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		http.Error(w, "cannot read the body: "+err.Error(), http.StatusBadRequest)
		return
	}
	var review admissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		http.Error(w, "not JSON: "+err.Error(), http.StatusBadRequest)
		return
	}
	request := review.Request
	if request == nil || request.UID == "" {
		http.Error(w, "not an AdmissionReview request (request.uid is missing)", http.StatusBadRequest)
		return
	}
	response := &admissionResponse{UID: request.UID, Allowed: true}
	if request.Operation == "CREATE" && request.Resource.Group == "" &&
		request.Resource.Resource == "pods" && request.Object != nil {
		response.PatchType = "JSONPatch"
		response.Patch = h.patch
	}
	apiVersion := review.APIVersion
	if apiVersion == "" {
		apiVersion = "admission.k8s.io/v1"
	}
	out, err := json.Marshal(admissionReview{
		APIVersion: apiVersion, Kind: "AdmissionReview", Response: response,
	})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
}

func loadPatch(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	data = bytes.TrimSpace(data)
	var ops []map[string]any
	if err := json.Unmarshal(data, &ops); err != nil {
		return nil, fmt.Errorf("%s: not a JSON array of operations: %w", path, err)
	}
	for i, op := range ops {
		if _, ok := op["op"].(string); !ok {
			return nil, fmt.Errorf("%s: operation %d has no \"op\"", path, i)
		}
		if _, ok := op["path"].(string); !ok {
			return nil, fmt.Errorf("%s: operation %d has no \"path\"", path, i)
		}
	}
	return data, nil
}

func main() {
	addr := flag.String("addr", "127.0.0.1:9443", "listen address")
	certFile := flag.String("cert", "", "PEM serving certificate")
	keyFile := flag.String("key", "", "PEM private key")
	patchFile := flag.String("patch", "", "file with the JSON patch (an array of RFC 6902 operations)")
	flag.Parse()
	if *certFile == "" || *keyFile == "" || *patchFile == "" {
		log.Fatal("-cert, -key and -patch are required")
	}
	patch, err := loadPatch(*patchFile)
	if err != nil {
		log.Fatal(err)
	}
	certificate, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatal(err)
	}
	server := &http.Server{
		Addr:              *addr,
		Handler:           &handler{patch: patch},
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{certificate}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0), // handshake noise from readiness probes
	}
	log.Printf("floor server on https://%s (GOMAXPROCS=%d, %s)", *addr, runtime.GOMAXPROCS(0), runtime.Version())
	if err := server.ListenAndServeTLS("", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}
