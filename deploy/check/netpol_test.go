package check

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// NetworkPolicies add up: a port one selecting policy leaves closed (or
// opens to named peers) is still open to all when another selecting
// policy opens it to everyone.
func TestPortRestrictedAddsUpPolicies(t *testing.T) {
	pod := labels.Set{"app.kubernetes.io/name": "phxgate"}
	c := corev1.Container{Ports: []corev1.ContainerPort{{Name: "api", ContainerPort: 4001}}}
	port := intstr.FromString("api")
	policy := func(from []networkingv1.NetworkPolicyPeer) *networkingv1.NetworkPolicy {
		return &networkingv1.NetworkPolicy{Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: pod},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				Ports: []networkingv1.NetworkPolicyPort{{Port: &port}},
				From:  from,
			}},
		}}
	}
	games := []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "game"}}}}
	for _, tc := range []struct {
		name    string
		netpols map[string]*networkingv1.NetworkPolicy
		want    bool
	}{
		{"one policy, named peers", map[string]*networkingv1.NetworkPolicy{"games": policy(games)}, true},
		{"one policy, open to all", map[string]*networkingv1.NetworkPolicy{"all": policy(nil)}, false},
		{"named peers plus open to all", map[string]*networkingv1.NetworkPolicy{"games": policy(games), "all": policy(nil)}, false},
		{"no policy", map[string]*networkingv1.NetworkPolicy{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := portRestricted(t, manifests{netpols: tc.netpols}, c, pod, 4001); got != tc.want {
				t.Errorf("portRestricted = %v, want %v", got, tc.want)
			}
		})
	}
}
