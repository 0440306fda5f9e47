package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// meshObjects is the input split the way Istio reads it: Istio configuration goes to the config
// store, Kubernetes objects to the service registry.
type meshObjects struct {
	istioConfig string
	kubeObjects string
}

func splitObjects(stream string) (meshObjects, error) {
	var istio, kube []string
	var services []corev1.Service
	var pods []corev1.Pod
	decoder := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(stream), 4096)
	for {
		var raw runtime.RawExtension
		if err := decoder.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return meshObjects{}, fmt.Errorf("parsing the objects: %w", err)
		}
		if len(raw.Raw) == 0 {
			continue
		}
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal(raw.Raw, &meta); err != nil {
			return meshObjects{}, err
		}
		doc, err := yaml.JSONToYAML(raw.Raw)
		if err != nil {
			return meshObjects{}, err
		}
		switch {
		case strings.HasPrefix(meta.APIVersion, "networking.istio.io/"),
			strings.HasPrefix(meta.APIVersion, "security.istio.io/"):
			istio = append(istio, string(doc))
			continue
		case meta.Kind == "Service":
			var s corev1.Service
			if err := yaml.Unmarshal(raw.Raw, &s); err != nil {
				return meshObjects{}, fmt.Errorf("parsing a Service: %w", err)
			}
			services = append(services, s)
		case meta.Kind == "Pod":
			var p corev1.Pod
			if err := yaml.Unmarshal(raw.Raw, &p); err != nil {
				return meshObjects{}, fmt.Errorf("parsing a Pod: %w", err)
			}
			pods = append(pods, p)
		}
		kube = append(kube, string(doc))
	}
	slices, err := endpointSlices(services, pods)
	if err != nil {
		return meshObjects{}, err
	}
	kube = append(kube, slices...)
	return meshObjects{istioConfig: strings.Join(istio, "\n---\n"), kubeObjects: strings.Join(kube, "\n---\n")}, nil
}

// endpointSlices does what the EndpointSlice controller does in a cluster (nothing runs it in
// Istio's fake registry): one slice per selector Service with every Running pod that has an IP.
// Readiness follows the pod's Ready condition, as in Kubernetes.
func endpointSlices(services []corev1.Service, pods []corev1.Pod) ([]string, error) {
	var out []string
	for _, svc := range services {
		if len(svc.Spec.Selector) == 0 {
			continue
		}
		selector := labels.SelectorFromSet(svc.Spec.Selector)
		slice := discoveryv1.EndpointSlice{
			TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
			ObjectMeta: metav1.ObjectMeta{
				Name:      svc.Name + "-oracle",
				Namespace: svc.Namespace,
				Labels:    map[string]string{discoveryv1.LabelServiceName: svc.Name},
			},
			AddressType: discoveryv1.AddressTypeIPv4,
		}
		for _, port := range svc.Spec.Ports {
			name, protocol := port.Name, port.Protocol
			if protocol == "" {
				protocol = corev1.ProtocolTCP
			}
			target := port.Port
			if port.TargetPort.IntVal != 0 {
				target = port.TargetPort.IntVal
			}
			slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{Name: &name, Port: &target, Protocol: &protocol})
		}
		for i := range pods {
			pod := &pods[i]
			if pod.Namespace != svc.Namespace || pod.Status.PodIP == "" || !selector.Matches(labels.Set(pod.Labels)) {
				continue
			}
			ready := podReady(pod)
			endpoint := discoveryv1.Endpoint{
				Addresses:  []string{pod.Status.PodIP},
				Conditions: discoveryv1.EndpointConditions{Ready: &ready},
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Name: pod.Name, Namespace: pod.Namespace},
			}
			if pod.Spec.NodeName != "" {
				endpoint.NodeName = &pod.Spec.NodeName
			}
			slice.Endpoints = append(slice.Endpoints, endpoint)
		}
		doc, err := yaml.Marshal(slice)
		if err != nil {
			return nil, err
		}
		out = append(out, string(doc))
	}
	return out, nil
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
