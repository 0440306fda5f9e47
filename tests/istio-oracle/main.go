// Command istio-oracle compiles a stream of mesh objects with Istio's own config compiler and
// prints, as one JSON document, the Envoy configuration that each requested proxy would receive
// (routes, clusters, endpoints with their localities) together with Istio's analyzer messages.
//
// Input (stdin): {"objects": "<YAML stream>", "proxies": [{"name": ..., "namespace": ...,
// "region": ..., "zone": ..., "type": "sidecar"|"router", "labels": {...}}],
// "rootNamespace": "istio-system", "analyze": true}; rootNamespace (meshConfig.rootNamespace,
// default istio-system) and analyze (default true) are optional.
//
// Batch input: {"batch": [request, ...]} compiles every request in one process and prints
// {"batch": [report, ...]} in the same order; a request Istio rejects gets a report with
// "error" set instead of ending the program.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"istio.io/istio/pkg/log"
)

type request struct {
	Objects       string      `json:"objects"`
	Proxies       []proxySpec `json:"proxies"`
	RootNamespace string      `json:"rootNamespace"`
	Analyze       *bool       `json:"analyze"`
}

// input is either one request or, when Batch is present, several.
type input struct {
	request
	Batch *[]request `json:"batch"`
}

type report struct {
	Proxies  []proxyConfig     `json:"proxies"`
	Analysis []json.RawMessage `json:"analysis"`
	// Error is set in batch mode when Istio rejected this request's input.
	Error string `json:"error,omitempty"`
}

type batchReport struct {
	Batch []report `json:"batch"`
}

const defaultRootNamespace = "istio-system"

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
	var req input
	if err := json.NewDecoder(in).Decode(&req); err != nil {
		return fmt.Errorf("reading the request: %w", err)
	}
	if req.Batch == nil {
		rep, err := handle(req.request)
		if err != nil {
			return err
		}
		return json.NewEncoder(out).Encode(rep)
	}
	reports := make([]report, 0, len(*req.Batch))
	for i, one := range *req.Batch {
		rep, err := handle(one)
		if err != nil {
			rep = report{Proxies: []proxyConfig{}, Analysis: []json.RawMessage{}, Error: fmt.Sprintf("request %d: %v", i, err)}
		}
		reports = append(reports, rep)
	}
	return json.NewEncoder(out).Encode(batchReport{Batch: reports})
}

func handle(req request) (report, error) {
	root := req.RootNamespace
	if root == "" {
		root = defaultRootNamespace
	}
	objects, err := splitObjects(req.Objects)
	if err != nil {
		return report{}, err
	}
	proxies, err := compile(objects, req.Proxies, root)
	if err != nil {
		return report{}, err
	}
	analysis := []json.RawMessage{}
	if req.Analyze == nil || *req.Analyze {
		if analysis, err = analyze(req.Objects, root); err != nil {
			return report{}, err
		}
	}
	return report{Proxies: proxies, Analysis: analysis}, nil
}
