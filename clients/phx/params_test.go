package phx

import (
	"math"
	"testing"
)

func TestEncodeParams(t *testing.T) {
	tests := []struct {
		name   string
		params map[string]any
		want   string
	}{
		{"protocol doc example", map[string]any{"token": "abc", "user": map[string]any{"id": 1}}, "token=abc&user%5Bid%5D=1"},
		{"encodeURIComponent set", map[string]any{"k": "a b&c=d/é?~*'()!-_."}, "k=a%20b%26c%3Dd%2F%C3%A9%3F~*'()!-_."},
		{"key is encoded too", map[string]any{"a b": "1"}, "a%20b=1"},
		{"null dropped leaving its separator", map[string]any{"a": nil, "b": 1}, "&b=1"},
		{"array", map[string]any{"ids": []any{1, "x"}}, "ids%5B0%5D=1&ids%5B1%5D=x"},
		{"deep nesting", map[string]any{"a": map[string]any{"b": map[string]any{"c": true}}}, "a%5Bb%5D%5Bc%5D=true"},
		{"integer keys first", map[string]any{"b": 1, "10": 2, "2": 3, "a": 4}, "2=3&10=2&a=4&b=1"},
		{"numbers as JS", map[string]any{"f": 1.5, "i": int64(-3), "g": 1e21, "z": 0.0}, "f=1.5&g=1e%2B21&i=-3&z=0"},
		{"string slice", map[string]any{"s": []string{"p", "q"}}, "s%5B0%5D=p&s%5B1%5D=q"},
		{"empty", map[string]any{}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := EncodeParams(tc.params); got != tc.want {
				t.Fatalf("EncodeParams = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestEndpointURL(t *testing.T) {
	tests := []struct {
		name     string
		endpoint string
		params   map[string]any
		vsn      string
		want     string
	}{
		{"no params", "ws://h/socket/websocket", nil, "2.0.0", "ws://h/socket/websocket?vsn=2.0.0"},
		{"params", "ws://h/socket/websocket", map[string]any{"token": "t"}, "1.0.0", "ws://h/socket/websocket?token=t&vsn=1.0.0"},
		{"existing query", "ws://h/s?x=1", map[string]any{"token": "t"}, "2.0.0", "ws://h/s?x=1&token=t&vsn=2.0.0"},
		{"only null param", "ws://h/s", map[string]any{"a": nil}, "2.0.0", "ws://h/s?&vsn=2.0.0"},
		// The rest were printed by phoenix.js 1.8.16 Socket.endPointURL()
		// for the same params (JS insertion order chosen to match ours).
		{"js nested", "ws://h/socket/websocket", map[string]any{"token": "abc", "user": map[string]any{"id": 1}}, "2.0.0",
			"ws://h/socket/websocket?token=abc&user%5Bid%5D=1&vsn=2.0.0"},
		{"js escaping", "ws://h/socket/websocket", map[string]any{"k": "a b&c=d/é?~*()!-_."}, "2.0.0",
			"ws://h/socket/websocket?k=a%20b%26c%3Dd%2F%C3%A9%3F~*()!-_.&vsn=2.0.0"},
		{"js null", "ws://h/socket/websocket", map[string]any{"a": nil, "b": 1}, "2.0.0", "ws://h/socket/websocket?&b=1&vsn=2.0.0"},
		{"js array", "ws://h/socket/websocket", map[string]any{"ids": []any{1, "x"}}, "2.0.0",
			"ws://h/socket/websocket?ids%5B0%5D=1&ids%5B1%5D=x&vsn=2.0.0"},
		{"js numbers", "ws://h/socket/websocket", map[string]any{"f": 1.5, "g": 1e21, "i": -3, "z": 0}, "2.0.0",
			"ws://h/socket/websocket?f=1.5&g=1e%2B21&i=-3&z=0&vsn=2.0.0"},
		{"js integer keys", "ws://h/socket/websocket", map[string]any{"2": 3, "10": 2, "a": 4, "b": 1}, "2.0.0",
			"ws://h/socket/websocket?2=3&10=2&a=4&b=1&vsn=2.0.0"},
		{"js empty", "ws://h/socket/websocket", map[string]any{}, "2.0.0", "ws://h/socket/websocket?vsn=2.0.0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := EndpointURL(tc.endpoint, tc.params, tc.vsn); got != tc.want {
				t.Fatalf("EndpointURL = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestJSNumber(t *testing.T) {
	tests := []struct {
		in   float64
		want string
	}{
		{1, "1"}, {-2.25, "-2.25"}, {1e21, "1e+21"}, {1.5e-8, "1.5e-8"}, {123456789012, "123456789012"},
		{math.NaN(), "NaN"}, {math.Inf(1), "Infinity"},
	}
	for _, tc := range tests {
		if got := jsNumber(tc.in); got != tc.want {
			t.Errorf("jsNumber(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	recon := []int{10, 50, 100, 150, 200, 250, 500, 1000, 2000, 5000, 5000}
	for i, ms := range recon {
		if got := ReconnectBackoff(i + 1); got.Milliseconds() != int64(ms) {
			t.Errorf("ReconnectBackoff(%d) = %v, want %dms", i+1, got, ms)
		}
	}
	rejoin := []int{1000, 2000, 5000, 10000, 10000}
	for i, ms := range rejoin {
		if got := RejoinBackoff(i + 1); got.Milliseconds() != int64(ms) {
			t.Errorf("RejoinBackoff(%d) = %v, want %dms", i+1, got, ms)
		}
	}
}
