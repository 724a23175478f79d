package auth

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	verify      *prometheus.CounterVec
	jwksRefresh *prometheus.CounterVec
	jwksKeys    prometheus.Gauge
}

// newMetrics registers the auth metrics on reg (nil: not registered, still
// counted, which keeps tests and embedders simple).
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		verify: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phxgate_auth_verifications_total",
			Help: "Token verifications by result (ok or the refusal reason).",
		}, []string{"result"}),
		jwksRefresh: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phxgate_auth_jwks_refreshes_total",
			Help: "JWKS refresh attempts by result (ok, error, throttled).",
		}, []string{"result"}),
		jwksKeys: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "phxgate_auth_jwks_keys",
			Help: "Usable signing keys in the cached JWKS.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.verify, m.jwksRefresh, m.jwksKeys} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
