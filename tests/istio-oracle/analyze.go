package main

import (
	"encoding/json"
	"fmt"
	"strings"

	"istio.io/istio/pkg/config/analysis/analyzers"
	"istio.io/istio/pkg/config/analysis/local"
)

// analyze runs the analyzers `istioctl analyze` runs on files: every analyzer, with the default
// resources Istio would provide in a cluster.
func analyze(objects string) ([]json.RawMessage, error) {
	sa := local.NewSourceAnalyzer(analyzers.AllCombined(), "", "istio-system", nil)
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
