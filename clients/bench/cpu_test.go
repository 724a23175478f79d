package main

import "testing"

func TestParseMachineStat(t *testing.T) {
	tests := []struct {
		name       string
		text       string
		busy, idle float64
		ok         bool
	}{
		// user nice system idle iowait irq softirq steal guest guest_nice
		{"two cpus", "cpu  400 10 200 1000 50 5 30 5 100 0\ncpu0 200 5 100 500 25 3 15 2 50 0\n", 6.5, 10.5, true},
		{"no steal column", "cpu  1 2 3 4 5 6 7\n", 0, 0, false},
		{"per-cpu line first", "cpu0 1 2 3 4 5 6 7 8\n", 0, 0, false},
		{"not a number", "cpu  1 2 x 4 5 6 7 8\n", 0, 0, false},
		{"empty", "", 0, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			busy, idle, err := parseMachineStat([]byte(tc.text))
			if (err == nil) != tc.ok || busy != tc.busy || idle != tc.idle {
				t.Fatalf("= %v, %v, %v; want %v, %v, ok=%v", busy, idle, err, tc.busy, tc.idle, tc.ok)
			}
		})
	}
	// The real file parses, and the machine has been up a while.
	if busy, idle, err := machineCPU(); err != nil || busy+idle <= 0 {
		t.Fatalf("machineCPU() = %v, %v, %v", busy, idle, err)
	}
}
