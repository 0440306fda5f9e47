package main

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	nodefast "sigs.k8s.io/kwok/kustomize/stage/node/fast"
	podfast "sigs.k8s.io/kwok/kustomize/stage/pod/fast"
)

// writeTokens writes the API server's static token file: an admin in system:masters (setup
// and the control-plane components) and one user per function in its group.
func writeTokens(dir string) (map[string]string, error) {
	tokens := map[string]string{}
	var lines []string
	add := func(key, user, groups string) error {
		raw := make([]byte, 24)
		if _, err := rand.Read(raw); err != nil {
			return err
		}
		tokens[key] = hex.EncodeToString(raw)
		lines = append(lines, fmt.Sprintf("%s,%s,%s,\"%s\"", tokens[key], user, user, groups))
		return nil
	}
	if err := add("admin", "admin", "system:masters"); err != nil {
		return nil, err
	}
	for _, f := range functions {
		if err := add(f, "mesh-remediation-"+f, "mesh-remediation-"+f); err != nil {
			return nil, err
		}
	}
	return tokens, os.WriteFile(filepath.Join(dir, "tokens.csv"), []byte(strings.Join(lines, "\n")+"\n"), 0o600)
}

// writeKubeconfig writes a kubeconfig that verifies the server against the cluster's CA.
func writeKubeconfig(path, server string, caPEM []byte, user, token string) error {
	content := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: testcluster
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    token: %s
contexts:
- name: %s
  context: {cluster: testcluster, user: %s, namespace: default}
current-context: %s
`, server, base64.StdEncoding.EncodeToString(caPEM), user, token, user, user, user)
	return os.WriteFile(path, []byte(content), 0o600)
}

// waitHTTP polls url until it answers 200 (verifying TLS against caPEM when given).
func waitHTTP(url string, caPEM []byte, p *process, timeout time.Duration) error {
	client := &http.Client{Timeout: 2 * time.Second}
	if caPEM != nil {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(caPEM)
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	}
	deadline := time.Now().Add(timeout)
	last := "no answer"
	for time.Now().Before(deadline) {
		if p.exited() {
			return fmt.Errorf("exited before %s answered", url)
		}
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %s: %s", url, timeout, last)
}

// podReadyDelay is how long KWOK's kubelet stand-in takes to make a scheduled Pod Ready
// (plus up to podReadyJitter), so a restart really rolls out over time.
const (
	podReadyDelay  = "1500"
	podReadyJitter = "1000"
)

// writeKwokStages writes KWOK's own fast stages (node initialize; pod ready, complete and
// delete), with a kubelet-like delay before a Pod becomes Ready.
func writeKwokStages(dir string) (string, error) {
	ready := strings.Replace(podfast.DefaultPodReady, "\n  next:\n",
		"\n  delay:\n    durationMilliseconds: "+podReadyDelay+
			"\n    jitterDurationMilliseconds: "+podReadyJitter+"\n  next:\n", 1)
	if ready == podfast.DefaultPodReady {
		return "", fmt.Errorf("KWOK's pod-ready stage changed shape; cannot add the delay")
	}
	docs := []string{nodefast.DefaultNodeInit, ready, podfast.DefaultPodComplete, podfast.DefaultPodDelete}
	path := filepath.Join(dir, "kwok-stages.yaml")
	return path, os.WriteFile(path, []byte(strings.Join(docs, "\n---\n")), 0o644)
}
