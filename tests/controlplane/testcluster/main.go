// Command testcluster starts a real Kubernetes control plane for the integration tests, the
// way envtest does: etcd, kube-apiserver (RBAC, static tokens, TLS from its own CA),
// kube-controller-manager, kube-scheduler and KWOK (which plays the kubelet for fake nodes),
// on free loopback ports. It installs the Istio CRDs, writes kubeconfigs, prints one JSON
// line describing the cluster and serves until SIGINT/SIGTERM, then stops every process.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Functions are the remediation functions; each gets a user and group
// mesh-remediation-<function>, as an EKS access entry maps its role.
var functions = []string{"latency-restart", "error-rollback", "db-circuit-break", "region-failover"}

type manifests []string

func (m *manifests) String() string     { return strings.Join(*m, ",") }
func (m *manifests) Set(v string) error { *m = append(*m, v); return nil }

// clusterInfo is what the harness prints and writes to <dir>/cluster.json.
type clusterInfo struct {
	Server string `json:"server"`
	// Kubeconfig is the admin's (system:masters).
	Kubeconfig string `json:"kubeconfig"`
	// FunctionKubeconfigs maps a function to a kubeconfig with its group's token.
	FunctionKubeconfigs map[string]string `json:"function_kubeconfigs"`
	CAFile              string            `json:"ca_file"`
	Etcd                string            `json:"etcd"`
	Pid                 int               `json:"pid"`
	StartupSeconds      float64           `json:"startup_seconds"`
}

func main() {
	binDir := flag.String("bin", "", "directory holding etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok")
	dir := flag.String("dir", "", "working directory (certificates, etcd data, logs, kubeconfigs); created")
	var applies manifests
	flag.Var(&applies, "apply", "YAML file or directory to apply after start (repeatable; CRDs wait until Established)")
	flag.Parse()
	if *binDir == "" || *dir == "" {
		fmt.Fprintln(os.Stderr, "testcluster: --bin and --dir are required")
		os.Exit(2)
	}
	began := time.Now()
	cluster, err := upWithRetries(*binDir, *dir, applies)
	if err != nil {
		os.Exit(1)
	}
	cluster.info.StartupSeconds = time.Since(began).Seconds()
	out, _ := json.Marshal(cluster.info)
	if err := os.WriteFile(filepath.Join(*dir, "cluster.json"), out, 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "testcluster: %v\n", err)
		cluster.down()
		os.Exit(1)
	}
	fmt.Println(string(out))

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	failed := cluster.watch()
	select {
	case <-signals:
	case name := <-failed:
		fmt.Fprintf(os.Stderr, "testcluster: %s exited; see %s\n", name, filepath.Join(*dir, name+".log"))
		cluster.down()
		os.Exit(1)
	}
	cluster.down()
}

// startAttempts bounds the starts of a control plane. A port the kernel handed out as free
// can be taken by another process's outgoing connection before the component binds it (many
// clusters and clients share loopback in a test run); a fresh start picks fresh ports.
const startAttempts = 3

// upWithRetries starts the control plane, starting afresh after a failed attempt; every
// failure is reported on stderr.
func upWithRetries(binDir, dir string, applies []string) (*cluster, error) {
	var err error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		var c *cluster
		c, err = up(binDir, dir, applies)
		if err == nil {
			return c, nil
		}
		fmt.Fprintf(os.Stderr, "testcluster: start %d of %d failed: %v (logs in %s)\n", attempt, startAttempts, err, dir)
		if c != nil {
			c.down()
		}
		// Keep the failed attempt's logs for a look; the next attempt writes its own.
		logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
		for _, log := range logs {
			if !strings.Contains(filepath.Base(log), ".attempt") {
				_ = os.Rename(log, strings.TrimSuffix(log, ".log")+fmt.Sprintf(".attempt%d.log", attempt))
			}
		}
		if rmErr := os.RemoveAll(filepath.Join(dir, "etcd-data")); rmErr != nil {
			return nil, rmErr
		}
	}
	return nil, err
}

// cluster is a running control plane.
type cluster struct {
	procs []*process
	info  clusterInfo
}

// watch reports the name of the first process that exits on its own.
func (c *cluster) watch() <-chan string {
	failed := make(chan string, len(c.procs))
	for _, p := range c.procs {
		go func(p *process) {
			<-p.done
			failed <- p.name
		}(p)
	}
	return failed
}

// down stops the processes in reverse order of start.
func (c *cluster) down() {
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].stop(10 * time.Second)
	}
}

func up(binDir, dir string, applies []string) (*cluster, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	c := &cluster{info: clusterInfo{Pid: os.Getpid(), FunctionKubeconfigs: map[string]string{}}}
	certs, err := newPKI(dir)
	if err != nil {
		return nil, err
	}
	c.info.CAFile = certs.CAFile
	tokens, err := writeTokens(dir)
	if err != nil {
		return nil, err
	}

	etcdClient, etcdPeer := mustPort(), mustPort()
	c.info.Etcd = fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	etcd, err := start(dir, binDir, "etcd",
		"--name=default", "--data-dir="+filepath.Join(dir, "etcd-data"),
		"--listen-client-urls="+c.info.Etcd, "--advertise-client-urls="+c.info.Etcd,
		fmt.Sprintf("--listen-peer-urls=http://127.0.0.1:%d", etcdPeer),
		fmt.Sprintf("--initial-advertise-peer-urls=http://127.0.0.1:%d", etcdPeer),
		fmt.Sprintf("--initial-cluster=default=http://127.0.0.1:%d", etcdPeer),
		"--unsafe-no-fsync=true", "--log-level=warn")
	if err != nil {
		return c, err
	}
	c.procs = append(c.procs, etcd)
	if err := waitHTTP(c.info.Etcd+"/health", nil, etcd, 30*time.Second); err != nil {
		return c, fmt.Errorf("etcd: %w", err)
	}

	// Picked only now, so the window in which another process can take it is short.
	apiPort := mustPort()
	c.info.Server = fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	apiserver, err := start(dir, binDir, "kube-apiserver",
		"--etcd-servers="+c.info.Etcd,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", apiPort),
		"--tls-cert-file="+certs.CertFile, "--tls-private-key-file="+certs.KeyFile,
		"--client-ca-file="+certs.CAFile,
		"--token-auth-file="+filepath.Join(dir, "tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+certs.SAPublicFile,
		"--service-account-signing-key-file="+certs.SAPrivateFile,
		// Room for the Services of every test and every generated mesh at once.
		"--service-cluster-ip-range=10.0.0.0/16",
		"--profiling=false",
		// Loopback cannot be the kubernetes Service endpoint; no in-cluster client needs it.
		"--endpoint-reconciler-type=none")
	if err != nil {
		return c, err
	}
	c.procs = append(c.procs, apiserver)
	if err := waitHTTP(c.info.Server+"/readyz", certs.caPEM, apiserver, 90*time.Second); err != nil {
		return c, fmt.Errorf("kube-apiserver: %w", err)
	}

	c.info.Kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := writeKubeconfig(c.info.Kubeconfig, c.info.Server, certs.caPEM, "admin", tokens["admin"]); err != nil {
		return c, err
	}
	for _, f := range functions {
		path := filepath.Join(dir, "mesh-remediation-"+f+".kubeconfig")
		if err := writeKubeconfig(path, c.info.Server, certs.caPEM, "mesh-remediation-"+f, tokens[f]); err != nil {
			return c, err
		}
		c.info.FunctionKubeconfigs[f] = path
	}

	stages, err := writeKwokStages(dir)
	if err != nil {
		return c, err
	}
	components := [][]string{
		{"kube-controller-manager", "--kubeconfig=" + c.info.Kubeconfig, "--leader-elect=false", "--secure-port=0",
			// A kubelet-less cluster: the controllers a Deployment rollout needs, and no node
			// lifecycle controller (KWOK's nodes send no heartbeats that it would trust).
			"--controllers=deployment-controller,replicaset-controller,garbage-collector-controller,namespace-controller,serviceaccount-controller",
			"--concurrent-deployment-syncs=10", "--concurrent-replicaset-syncs=10",
			// Its client's default 20 requests/s made 200 new Deployments wait a minute to be
			// observed (a storm's targets, the benchmark's); a local API server takes more.
			"--kube-api-qps=200", "--kube-api-burst=400"},
		{"kube-scheduler", "--kubeconfig=" + c.info.Kubeconfig, "--leader-elect=false", "--secure-port=0"},
		{"kwok", "--kubeconfig=" + c.info.Kubeconfig, "--manage-all-nodes=true", "--config=" + stages},
	}
	for _, argv := range components {
		p, err := start(dir, binDir, argv[0], argv[1:]...)
		if err != nil {
			return c, err
		}
		c.procs = append(c.procs, p)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := prepare(ctx, c.info.Kubeconfig, applies); err != nil {
		return c, err
	}
	for _, p := range c.procs {
		if p.exited() {
			return c, fmt.Errorf("%s exited during start", p.name)
		}
	}
	return c, nil
}

func mustPort() int {
	p, err := freePort()
	if err != nil {
		panic(err)
	}
	return p
}
