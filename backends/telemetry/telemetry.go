package telemetry

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// The environment variables this package reads itself (the SDK reads the
// rest, see the package doc).
const (
	EnvEndpoint        = "OTEL_EXPORTER_OTLP_ENDPOINT"
	EnvTracesEndpoint  = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	EnvProtocol        = "OTEL_EXPORTER_OTLP_PROTOCOL"
	EnvTracesProtocol  = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	EnvSDKDisabled     = "OTEL_SDK_DISABLED"
	ProtocolHTTP       = "http/protobuf"
	ProtocolGRPC       = "grpc"
	defaultProtocol    = ProtocolHTTP
	serviceNameAttrKey = "service.name"
)

// ErrConfig is wrapped by every error of a bad tracing setting; the
// message names the variable.
var ErrConfig = errors.New("telemetry: bad config")

// Enabled reports whether tracing is on: enabled (the config's
// otel.enabled) or an OTLP endpoint variable set, unless OTEL_SDK_DISABLED
// is "true".
func Enabled(enabled bool, getenv func(string) string) bool {
	if strings.EqualFold(strings.TrimSpace(getenv(EnvSDKDisabled)), "true") {
		return false
	}
	return enabled || getenv(EnvEndpoint) != "" || getenv(EnvTracesEndpoint) != ""
}

// Protocol returns the OTLP protocol the environment asks for:
// OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL,
// else http/protobuf. Anything but http/protobuf and grpc is an error
// naming the variable (http/json has no Go exporter).
func Protocol(getenv func(string) string) (string, error) {
	key := EnvTracesProtocol
	v := strings.TrimSpace(getenv(key))
	if v == "" {
		key = EnvProtocol
		v = strings.TrimSpace(getenv(key))
	}
	switch v {
	case "":
		return defaultProtocol, nil
	case ProtocolHTTP, ProtocolGRPC:
		return v, nil
	}
	return "", fmt.Errorf("%w: %s=%q: want %q or %q", ErrConfig, key, v, ProtocolHTTP, ProtocolGRPC)
}

// Setup returns a tracer provider exporting over OTLP when tracing is on
// (see Enabled), or nil when it is off. service is the service name used
// when OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES name none. The
// caller owns the provider: Shutdown flushes the spans still queued.
func Setup(ctx context.Context, enabled bool, service string, getenv func(string) string) (*sdktrace.TracerProvider, error) {
	if !Enabled(enabled, getenv) {
		return nil, nil
	}
	proto, err := Protocol(getenv)
	if err != nil {
		return nil, err
	}
	var exp *otlptrace.Exporter
	switch proto {
	case ProtocolGRPC:
		exp, err = otlptracegrpc.New(ctx)
	default:
		exp, err = otlptracehttp.New(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: OTLP %s exporter: %v", ErrConfig, proto, err)
	}
	// Later detectors win: the default name, then the environment's.
	res, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithAttributes(attribute.String(serviceNameAttrKey, service)),
		resource.WithFromEnv(),
	)
	if err != nil {
		_ = exp.Shutdown(ctx)
		return nil, fmt.Errorf("%w: %s: %v", ErrConfig, "OTEL_RESOURCE_ATTRIBUTES", err)
	}
	// The sampler (OTEL_TRACES_SAMPLER, default parentbased_always_on)
	// and the batch processor's OTEL_BSP_* are read by the SDK.
	return sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(res),
	), nil
}
