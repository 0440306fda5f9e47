package main

import (
	"encoding/json"
	"fmt"
	"sort"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"istio.io/istio/pilot/pkg/config/kube/crd"
	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/test/xds"
	"istio.io/istio/pkg/config/mesh"
)

type proxySpec struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	Region    string            `json:"region"`
	Zone      string            `json:"zone"`
	Type      string            `json:"type"`
	Labels    map[string]string `json:"labels"`
}

type proxyConfig struct {
	Name     string                   `json:"name"`
	Routes   []routeEntry             `json:"routes"`
	Clusters map[string]clusterConfig `json:"clusters"`
}

// routeEntry is one Envoy route: where a request that matches it goes.
type routeEntry struct {
	RouteConfig string          `json:"route_config"`
	VirtualHost string          `json:"virtual_host"`
	Domains     []string        `json:"domains"`
	Name        string          `json:"name"`
	Match       json.RawMessage `json:"match"`
	// Clusters the route sends to, with their weights; empty for a redirect or direct response.
	Clusters []weightedCluster `json:"clusters"`
}

type weightedCluster struct {
	Name   string `json:"name"`
	Weight uint32 `json:"weight"`
}

type clusterConfig struct {
	ConnectTimeout   string          `json:"connect_timeout,omitempty"`
	LbPolicy         string          `json:"lb_policy"`
	CircuitBreakers  json.RawMessage `json:"circuit_breakers,omitempty"`
	OutlierDetection json.RawMessage `json:"outlier_detection,omitempty"`
	CommonLbConfig   json.RawMessage `json:"common_lb_config,omitempty"`
	Localities       []localityGroup `json:"localities"`
}

// localityGroup is one locality's endpoints as the proxy sees them: Istio's locality load
// balancing shows as priorities (failover) or locality weights (distribute).
type localityGroup struct {
	Region    string          `json:"region"`
	Zone      string          `json:"zone"`
	Priority  uint32          `json:"priority"`
	Weight    uint32          `json:"weight"`
	Endpoints []endpointEntry `json:"endpoints"`
}

type endpointEntry struct {
	Address string `json:"address"`
	Port    uint32 `json:"port"`
	Health  string `json:"health"`
}

// compile runs Istio's config compiler on the objects, with rootNamespace as the mesh's root
// configuration namespace, and returns each requested proxy's configuration. A failure inside
// Istio's fake discovery server (input it rejects) is returned as an error.
func compile(objects meshObjects, specs []proxySpec, rootNamespace string) (out []proxyConfig, err error) {
	t := &failer{}
	defer func() {
		t.close()
		if r := recover(); r != nil {
			f, ok := r.(failure)
			if !ok {
				panic(r)
			}
			out, err = nil, fmt.Errorf("Istio rejected the input: %s", string(f))
		}
	}()
	configs, _, err := crd.ParseInputs(objects.istioConfig)
	if err != nil {
		return nil, fmt.Errorf("reading the Istio configuration: %w", err)
	}
	for i := range configs {
		// istiod's Kubernetes config client stamps every object with the cluster's DNS domain,
		// which short host names expand with; the config parser leaves it empty.
		configs[i].Domain = "cluster.local"
	}
	meshConfig := mesh.DefaultMeshConfig()
	meshConfig.RootNamespace = rootNamespace
	server := xds.NewFakeDiscoveryServer(t, xds.FakeOptions{
		Configs:                configs,
		KubernetesObjectString: objects.kubeObjects,
		MeshConfig:             meshConfig,
	})
	out = make([]proxyConfig, 0, len(specs))
	for i, spec := range specs {
		proxy, err := newProxy(spec, i)
		if err != nil {
			return nil, err
		}
		proxy = server.SetupProxy(proxy)
		out = append(out, proxyConfig{
			Name:     spec.Name,
			Routes:   routesOf(server, proxy),
			Clusters: clustersOf(server, proxy),
		})
	}
	return out, nil
}

func newProxy(spec proxySpec, index int) (*model.Proxy, error) {
	if spec.Name == "" || spec.Namespace == "" {
		return nil, fmt.Errorf("proxy %d: name and namespace are required", index)
	}
	proxyType := model.SidecarProxy
	switch spec.Type {
	case "", "sidecar":
	case "router":
		proxyType = model.Router
	default:
		return nil, fmt.Errorf("proxy %q: type must be sidecar or router, not %q", spec.Name, spec.Type)
	}
	return &model.Proxy{
		Type:            proxyType,
		ID:              spec.Name + "." + spec.Namespace,
		ConfigNamespace: spec.Namespace,
		Labels:          spec.Labels,
		Locality:        &core.Locality{Region: spec.Region, Zone: spec.Zone},
		// Distinct addresses outside every pod range, so no proxy is taken for a workload.
		IPAddresses: []string{fmt.Sprintf("192.168.%d.%d", index/250, index%250+1)},
		Metadata:    &model.NodeMetadata{Namespace: spec.Namespace, Labels: spec.Labels},
	}, nil
}

func routesOf(server *xds.FakeDiscoveryServer, proxy *model.Proxy) []routeEntry {
	out := []routeEntry{}
	for _, rc := range server.Routes(proxy) {
		for _, vh := range rc.GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				entry := routeEntry{
					RouteConfig: rc.GetName(), VirtualHost: vh.GetName(), Domains: vh.GetDomains(),
					Name: r.GetName(), Match: protoJSON(r.GetMatch()), Clusters: []weightedCluster{},
				}
				action := r.GetRoute()
				if name := action.GetCluster(); name != "" {
					entry.Clusters = append(entry.Clusters, weightedCluster{Name: name, Weight: 100})
				}
				for _, wc := range action.GetWeightedClusters().GetClusters() {
					entry.Clusters = append(entry.Clusters, weightedCluster{Name: wc.GetName(), Weight: wc.GetWeight().GetValue()})
				}
				out = append(out, entry)
			}
		}
	}
	// Istio returns route configurations (and their virtual hosts) in no fixed order; the
	// order of routes within a virtual host (first match wins) is kept.
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].RouteConfig != out[j].RouteConfig {
			return out[i].RouteConfig < out[j].RouteConfig
		}
		return out[i].VirtualHost < out[j].VirtualHost
	})
	return out
}

func clustersOf(server *xds.FakeDiscoveryServer, proxy *model.Proxy) map[string]clusterConfig {
	assignments := map[string]*endpoint.ClusterLoadAssignment{}
	for _, cla := range server.Endpoints(proxy) {
		assignments[cla.GetClusterName()] = cla
	}
	out := map[string]clusterConfig{}
	for _, c := range server.Clusters(proxy) {
		cla := c.GetLoadAssignment()
		if c.GetType() == cluster.Cluster_EDS {
			cla = assignments[c.GetName()]
		}
		entry := clusterConfig{
			LbPolicy:         c.GetLbPolicy().String(),
			CircuitBreakers:  protoJSON(c.GetCircuitBreakers()),
			OutlierDetection: protoJSON(c.GetOutlierDetection()),
			CommonLbConfig:   protoJSON(c.GetCommonLbConfig()),
			Localities:       localitiesOf(cla),
		}
		if c.GetConnectTimeout() != nil {
			entry.ConnectTimeout = c.GetConnectTimeout().AsDuration().String()
		}
		out[c.GetName()] = entry
	}
	return out
}

func localitiesOf(cla *endpoint.ClusterLoadAssignment) []localityGroup {
	out := []localityGroup{}
	for _, group := range cla.GetEndpoints() {
		entry := localityGroup{
			Region: group.GetLocality().GetRegion(), Zone: group.GetLocality().GetZone(),
			Priority: group.GetPriority(), Weight: group.GetLoadBalancingWeight().GetValue(),
			Endpoints: []endpointEntry{},
		}
		for _, lb := range group.GetLbEndpoints() {
			socket := lb.GetEndpoint().GetAddress().GetSocketAddress()
			entry.Endpoints = append(entry.Endpoints, endpointEntry{
				Address: socket.GetAddress(), Port: socket.GetPortValue(), Health: lb.GetHealthStatus().String(),
			})
		}
		sort.Slice(entry.Endpoints, func(i, j int) bool { return entry.Endpoints[i].Address < entry.Endpoints[j].Address })
		out = append(out, entry)
	}
	// Envoy reads a locality's priority and weight, not its place in the list.
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Priority != b.Priority {
			return a.Priority < b.Priority
		}
		if a.Region != b.Region {
			return a.Region < b.Region
		}
		return a.Zone < b.Zone
	})
	return out
}

// protoJSON renders an Envoy message with its proto field names, or nothing when it is unset.
func protoJSON(m proto.Message) json.RawMessage {
	if m == nil || !m.ProtoReflect().IsValid() {
		return nil
	}
	raw, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return json.RawMessage(fmt.Sprintf("%q", err.Error()))
	}
	return raw
}
