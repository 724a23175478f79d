package auth

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

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
	// Every result known in advance starts at zero.
	for _, err := range []error{nil, ErrTokenMissing, ErrTokenTooLarge, ErrTokenMalformed, ErrUnknownKID,
		ErrJWKSUnavailable, ErrTokenExpired, ErrTokenNotYetValid, ErrTokenAudience, ErrTokenIssuer,
		ErrNoSubject, ErrSubjectTooLong, ErrTokenInvalid, errors.ErrUnsupported} {
		m.verify.WithLabelValues(Reason(err))
	}
	for _, r := range []string{"ok", "error", "throttled"} {
		m.jwksRefresh.WithLabelValues(r)
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
