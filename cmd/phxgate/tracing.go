package main

import (
	"context"
	"log/slog"
	"os"

	"github.com/phxgate/phxgate/backends/telemetry"
	"github.com/phxgate/phxgate/gateway"
)

// flushTimeout bounds the export of the spans still queued at exit; it
// is part of gateway.ShutdownOverrun.
const flushTimeout = gateway.TraceFlushTimeout

// tracing returns the gateway's options: the logger, and when tracing is
// on (otel.enabled or an OTLP endpoint variable) the tracer provider, with
// log lines inside a traced call carrying its trace_id and span_id. flush
// exports what is queued; call it on exit.
func tracing(cfg gateway.Config, logger *slog.Logger) (opts []gateway.Option, flush func(), err error) {
	tp, err := telemetry.Setup(context.Background(), cfg.Otel.Enabled, "phxgate", os.Getenv)
	if err != nil || tp == nil {
		return []gateway.Option{gateway.WithLogger(logger)}, func() {}, err
	}
	logger = slog.New(telemetry.LogHandler(logger.Handler()))
	slog.SetDefault(logger)
	flush = func() {
		ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
		defer cancel()
		if err := tp.Shutdown(ctx); err != nil {
			logger.Warn("flushing traces failed", "err", err)
		}
	}
	return []gateway.Option{gateway.WithLogger(logger), gateway.WithTracerProvider(tp)}, flush, nil
}
