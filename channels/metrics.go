package channels

import (
	"github.com/phxgate/phxgate/backends"
	"github.com/prometheus/client_golang/prometheus"
)

// Join results (label "result" of phxgate_channels_joins_total).
const (
	joinOK         = "ok"
	joinError      = "error"
	joinUnmatched  = "unmatched"
	joinTooMany    = "too_many"
	joinCrashed    = "crashed"
	joinDuplicate  = "duplicate"
	joinOverloaded = "overloaded"
	joinBackend    = "backend_error"
	// joinUnauthorized: the join token was invalid or the topics claim
	// does not allow the topic; the backend was not called.
	joinUnauthorized = "unauthorized"
	// joinRateLimited: over the player's join rate.
	joinRateLimited = "rate_limited"
	// joinTooLong: the topic or join_ref is over its byte limit.
	joinTooLong = "too_long"
)

// What the output budget sheds (label "what" of phxgate_overload_shed_total).
const (
	shedPush      = "push"
	shedBroadcast = "broadcast"
)

type metrics struct {
	channels            prometheus.Gauge
	joins               *prometheus.CounterVec
	messagesIn          *prometheus.CounterVec
	broadcasts          prometheus.Counter
	fanout              prometheus.Counter
	backendCalls        *prometheus.CounterVec
	backendDuration     *prometheus.HistogramVec
	replayed            prometheus.Counter
	overloaded          *prometheus.CounterVec
	droppedFrames       *prometheus.CounterVec
	resumeOverflow      prometheus.Counter
	publishErrors       prometheus.Counter
	floodCloses         prometheus.Counter
	shed                *prometheus.CounterVec
	backendPanics       prometheus.Counter
	replyBroadcastsLost prometheus.Counter
	leaves              *prometheus.CounterVec
	leavesLost          prometheus.Counter
	callDurationJoin    prometheus.Observer
	callDurationIn      prometheus.Observer
	callDurationLv      prometheus.Observer
	// Topic continuity (pubsub.Sequencer) and resumes.
	seqDuplicates  prometheus.Counter
	seqGaps        prometheus.Counter
	seqFilled      prometheus.Counter
	seqLost        prometheus.Counter
	resumes        *prometheus.CounterVec
	deliveryLag    prometheus.Histogram
	ownWaitTimeout prometheus.Counter
	// presenceRefreshes counts topics whose presence_state was sent again
	// after a broker resync.
	presenceRefreshes prometheus.Counter
	// presenceTooLarge counts presence_states not sent: larger than
	// Config.PresenceStreamBytes, or the budget stayed spent.
	presenceTooLarge prometheus.Counter
	// presenceStreams counts presence_states sent in pieces (one per
	// channel), presencePieces the pieces sent as presence_diff, and
	// presenceStreamBytes is what their snapshots hold (the budget).
	presenceStreams prometheus.Counter
	// presenceBusy counts joins ended with phx_error because every read of
	// their topic's presence_state was overtaken (stateAttempts);
	// presenceRefreshRetries counts refreshes put off to later (retried)
	// and those abandoned after refreshRetries tries (given_up).
	presenceBusy           prometheus.Counter
	presenceRefreshRetries *prometheus.CounterVec
	presencePieces         prometheus.Counter
	presenceStreamBytes    prometheus.Gauge
}

// Resume results (phxgate_resumes_total{result}).
const (
	resumeRecovered = "recovered"
	resumeStale     = "stale"     // position older than history, or another epoch
	resumeTooMany   = "too_many"  // more than MaxReplay events missed
	resumeTooLarge  = "too_large" // more than ReplayBytes missed
	resumeBad       = "bad_position"
)

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		channels: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "phxgate_channels_joined", Help: "Channels joined (or joining) on this node.",
		}),
		joins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phxgate_channels_joins_total", Help: "Join requests by result.",
		}, []string{"result"}),
		messagesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phxgate_messages_in_total", Help: "Client messages by kind (heartbeat, join, leave, event, stale, malformed).",
		}, []string{"kind"}),
		broadcasts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_pubsub_broadcasts_total", Help: "Live events delivered to local topic hubs.",
		}),
		fanout: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_broadcast_fanout_total", Help: "Broadcast frames sent to subscribers.",
		}),
		backendCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phxgate_backend_calls_total", Help: "Backend calls by operation and result.",
		}, []string{"op", "result"}),
		backendDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "phxgate_backend_call_duration_seconds", Help: "Backend call latency.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"op"}),
		replayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_replayed_events_total", Help: "Events replayed to resuming joins.",
		}),
		overloaded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phxgate_backend_overloaded_total", Help: "Calls refused with backend_overloaded, by the limit hit (pool, channel).",
		}, []string{"limit"}),
		droppedFrames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phxgate_dropped_frames_total", Help: "Frames that could not be encoded for a socket (binary on V1, string over 255 bytes in a binary frame).",
		}, []string{"reason"}),
		resumeOverflow: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_resume_buffer_overflows_total", Help: "Resuming joins that overflowed ResumeBuffer and were ended with phx_error.",
		}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_publish_errors_total", Help: "Backend broadcasts the broker failed to publish.",
		}),
		floodCloses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_channel_flood_closes_total", Help: "Sockets closed (1013) for queueing more than ChannelQueueHard messages on one channel.",
		}),
		shed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phxgate_overload_shed_total", Help: "Client pushes and broadcasts refused while the node's output budget was spent (output_budget_bytes), by what was refused (push, broadcast).",
		}, []string{"what"}),
	}
	m.backendPanics = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "phxgate_backend_panics_total", Help: "Backend calls that panicked (recovered: a crashed join, or the channel ended with phx_error).",
	})
	m.replyBroadcastsLost = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "phxgate_reply_broadcasts_lost_total", Help: "Broadcasts in a backend's reply that could not be published (broker failing past the call's deadline, or the output budget spent); the channel ends with phx_error.",
	})
	m.leaves = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "phxgate_leaves_total", Help: "Leave calls the backend answered, by reason (one per joined channel).",
	}, []string{"reason"})
	m.leavesLost = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "phxgate_leaves_lost_total", Help: "Leaves the backend never got: the call failed (down past its deadline), or shutdown ran out of drain window before it ran.",
	})
	for _, r := range []backends.LeaveReason{backends.LeaveLeft, backends.LeaveDisconnected, backends.LeaveKicked,
		backends.LeaveTimedOut, backends.LeaveDrained, backends.LeaveCrashed, backends.LeaveDuplicate, backends.LeaveExpired} {
		m.leaves.WithLabelValues(string(r))
	}
	m.seqDuplicates = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "phxgate_pubsub_duplicates_dropped_total", Help: "Live events dropped as already delivered to this node's topic hub (after a gap fill or a broker resync).",
	})
	m.seqGaps = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "phxgate_pubsub_gap_fills_total", Help: "Gaps in a topic's live offsets, and broker resyncs, filled (or tried) from history.",
	})
	m.seqFilled = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "phxgate_pubsub_filled_events_total", Help: "Events delivered from history to fill gaps.",
	})
	m.seqLost = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "phxgate_pubsub_continuity_losses_total", Help: "Gaps that could not be filled (epoch change, history gone, broker error): the topic's channels holding positions end with phx_error and rejoin.",
	})
	m.resumes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "phxgate_resumes_total", Help: "Joins that resumed from a position, by result (recovered, stale, too_many, too_large, bad_position).",
	}, []string{"result"})
	for _, r := range []string{resumeRecovered, resumeStale, resumeTooMany, resumeTooLarge, resumeBad} {
		m.resumes.WithLabelValues(r)
	}
	m.deliveryLag = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "phxgate_pubsub_delivery_latency_seconds", Help: "From an event's publish (on any node) to its being queued on this node's sockets for writing; one sample per event and poller lane with subscribers.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
	})
	m.ownWaitTimeout = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "phxgate_pubsub_own_delivery_timeouts_total", Help: "Replies sent before the sender's own broadcast came back from the broker (waited 1 s).",
	})
	m.presenceTooLarge = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "phxgate_presence_state_too_large_total", Help: "presence_states not sent: larger than channels.presence_stream_bytes, or that budget stayed spent past channels.presence_stream_wait (a join's channel ends with phx_error; a refresh is put off, see phxgate_presence_state_refresh_retries_total).",
	})
	m.presenceStreams = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "phxgate_presence_state_streams_total", Help: "presence_states sent in pieces (larger than an eighth of write_queue_max_bytes, at most 64 KiB), one per channel.",
	})
	m.presencePieces = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "phxgate_presence_state_pieces_total", Help: "Pieces of presence_states sent as presence_diff after the first piece.",
	})
	m.presenceStreamBytes = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "phxgate_presence_stream_bytes", Help: "Bytes of presence_state snapshots held until their pieces are sent (bounded by channels.presence_stream_bytes).",
	})
	m.presenceBusy = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "phxgate_presence_state_overtaken_total", Help: "Joins ended with phx_error (the client rejoins) because a presence_diff or a refresh came during each of their reads of the topic's presence_state.",
	})
	m.presenceRefreshRetries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "phxgate_presence_state_refresh_retries_total", Help: "presence_state refreshes put off (no room in channels.presence_stream_bytes, a store error, or a presence_diff during each read), by outcome: retried later, or given_up after the last try.",
	}, []string{"outcome"})
	for _, o := range []string{refreshRetried, refreshGivenUp} {
		m.presenceRefreshRetries.WithLabelValues(o)
	}
	m.presenceRefreshes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "phxgate_presence_state_refreshes_total", Help: "Topics whose channels got presence_state again after the broker resynced them (presence diffs have no history).",
	})
	m.shed.WithLabelValues(shedPush)
	m.shed.WithLabelValues(shedBroadcast)
	// Every label value known in advance starts at zero, so a fresh
	// node's dashboards and rate() see every line.
	for _, r := range []string{joinOK, joinError, joinUnmatched, joinTooMany, joinCrashed, joinDuplicate,
		joinOverloaded, joinBackend, joinUnauthorized, joinRateLimited, joinTooLong} {
		m.joins.WithLabelValues(r)
	}
	for _, k := range []string{"heartbeat", "join", "leave", "event", "stale", "malformed"} {
		m.messagesIn.WithLabelValues(k)
	}
	for _, op := range []string{opJoin, opHandleIn, opLeave} {
		for _, r := range []string{"ok", "overloaded", "unavailable", "timeout", "backend_error", "error"} {
			m.backendCalls.WithLabelValues(op, r)
		}
	}
	for _, l := range []string{"pool", "channel"} {
		m.overloaded.WithLabelValues(l)
	}
	for _, r := range []string{"binary_on_v1", "string_too_long", "encode"} {
		m.droppedFrames.WithLabelValues(r)
	}
	m.callDurationJoin = m.backendDuration.WithLabelValues("join")
	m.callDurationIn = m.backendDuration.WithLabelValues("handle_in")
	m.callDurationLv = m.backendDuration.WithLabelValues("leave")
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{
		m.channels, m.joins, m.messagesIn, m.broadcasts, m.fanout, m.backendCalls,
		m.backendDuration, m.replayed, m.overloaded, m.droppedFrames, m.resumeOverflow, m.publishErrors,
		m.floodCloses, m.shed, m.backendPanics, m.replyBroadcastsLost, m.leaves, m.leavesLost,
		m.seqDuplicates, m.seqGaps, m.seqFilled, m.seqLost, m.resumes, m.deliveryLag, m.ownWaitTimeout, m.presenceRefreshes, m.presenceTooLarge,
		m.presenceStreams, m.presencePieces, m.presenceStreamBytes, m.presenceBusy, m.presenceRefreshRetries,
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
