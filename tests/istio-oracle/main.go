// Command istio-oracle compiles a stream of mesh objects with Istio's own config compiler and
// prints, as one JSON document, the Envoy configuration that each requested proxy would receive
// (routes, clusters, endpoints with their localities) together with Istio's analyzer messages.
//
// Input (stdin): {"objects": "<YAML stream>", "proxies": [{"name": ..., "namespace": ...,
// "region": ..., "zone": ..., "type": "sidecar"|"router", "labels": {...}}]}.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"istio.io/istio/pkg/log"
)

type request struct {
	Objects string      `json:"objects"`
	Proxies []proxySpec `json:"proxies"`
}

type report struct {
	Proxies  []proxyConfig     `json:"proxies"`
	Analysis []json.RawMessage `json:"analysis"`
}

func main() {
	// Istio logs to stdout by default; stdout carries only the report.
	options := log.DefaultOptions()
	options.OutputPaths = []string{"stderr"}
	options.ErrorOutputPaths = []string{"stderr"}
	options.SetDefaultOutputLevel("all", log.ErrorLevel)
	if err := log.Configure(options); err != nil {
		fmt.Fprintln(os.Stderr, "istio-oracle: configuring logs:", err)
		os.Exit(1)
	}
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "istio-oracle:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	var req request
	if err := json.NewDecoder(in).Decode(&req); err != nil {
		return fmt.Errorf("reading the request: %w", err)
	}
	objects, err := splitObjects(req.Objects)
	if err != nil {
		return err
	}
	proxies, err := compile(objects, req.Proxies)
	if err != nil {
		return err
	}
	analysis, err := analyze(req.Objects)
	if err != nil {
		return err
	}
	return json.NewEncoder(out).Encode(report{Proxies: proxies, Analysis: analysis})
}
