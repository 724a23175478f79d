// Package telemetry sets up OpenTelemetry tracing for phxgate and the
// example games: whether it is on, the OTLP exporter the standard
// OTEL_EXPORTER_OTLP_* variables ask for, the resource (service name), and
// the W3C trace context carried to and from backends.
//
// What the SDK already reads from the environment is left to it:
// OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT, _INSECURE …
// (the exporters), OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG (the
// tracer provider), OTEL_BSP_* (the batch span processor),
// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (resource.WithFromEnv).
// This package only decides whether tracing is on and which protocol the
// exporter speaks (OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL), since the Go SDK
// leaves that choice to the program.
//
// Everything here is safe for concurrent use. Setup installs nothing
// globally: callers pass the provider it returns to what they trace.
package telemetry
