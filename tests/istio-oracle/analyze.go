package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"istio.io/istio/pkg/config/analysis/analyzers"
	"istio.io/istio/pkg/config/analysis/local"
)

// analyze runs the analyzers `istioctl analyze` runs on files: every analyzer, with the default
// resources Istio would provide in a cluster and a mesh config whose root namespace is
// rootNamespace.
func analyze(objects, rootNamespace string) ([]json.RawMessage, error) {
	sa := local.NewSourceAnalyzer(analyzers.AllCombined(), "", "istio-system", nil)
	if rootNamespace != defaultRootNamespace {
		if err := useRootNamespace(sa, rootNamespace); err != nil {
			return nil, err
		}
	}
	if err := sa.AddDefaultResources(); err != nil {
		return nil, fmt.Errorf("adding Istio's default resources: %w", err)
	}
	if err := sa.AddReaderKubeSource([]local.ReaderSource{{Name: "request", Reader: strings.NewReader(objects)}}); err != nil {
		return nil, fmt.Errorf("reading the objects for analysis: %w", err)
	}
	cancel := make(chan struct{})
	result, err := sa.Analyze(cancel)
	if err != nil {
		return nil, fmt.Errorf("analyzing: %w", err)
	}
	messages := []json.RawMessage{}
	for _, m := range result.Messages {
		raw, err := m.MarshalJSON()
		if err != nil {
			return nil, err
		}
		messages = append(messages, raw)
	}
	return messages, nil
}

// useRootNamespace gives the analyzer a mesh config with rootNamespace (it reads mesh config
// from a file only).
func useRootNamespace(sa *local.IstiodAnalyzer, rootNamespace string) error {
	file, err := os.CreateTemp("", "istio-oracle-mesh-*.yaml")
	if err != nil {
		return err
	}
	defer func() { _ = os.Remove(file.Name()) }()
	if _, err := fmt.Fprintf(file, "rootNamespace: %q\n", rootNamespace); err != nil {
		_ = file.Close()
		return err
	}
	if err := file.Close(); err != nil {
		return err
	}
	if err := sa.AddFileKubeMeshConfig(file.Name()); err != nil {
		return fmt.Errorf("mesh config for the analyzer: %w", err)
	}
	return nil
}
