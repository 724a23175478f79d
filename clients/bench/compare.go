package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
)

// compareMain prints two broadcast -json results side by side with the
// ratio A/B of the costs (CPU per delivery and latencies).
func compareMain(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return fmt.Errorf("%w: compare takes two files with a broadcast -json line each", ErrConfig)
	}
	var rs [2]broadcastResult
	for i, name := range fs.Args() {
		r, err := readResult(name)
		if err != nil {
			return err
		}
		rs[i] = r
	}
	printCompare(stdout, rs[0], rs[1])
	return nil
}

// readResult reads the last JSON object line of a file (the -json line
// comes after the human summary).
func readResult(name string) (broadcastResult, error) {
	f, err := os.Open(name)
	if err != nil {
		return broadcastResult{}, err
	}
	defer f.Close()
	var last []byte
	sc := lineScanner(f)
	for sc.Scan() {
		if b := sc.Bytes(); len(b) > 0 && b[0] == '{' {
			last = append(last[:0], b...)
		}
	}
	if err := sc.Err(); err != nil {
		return broadcastResult{}, err
	}
	if last == nil {
		return broadcastResult{}, errors.New("bench: " + name + ": no JSON result line")
	}
	var r broadcastResult
	if err := json.Unmarshal(last, &r); err != nil {
		return broadcastResult{}, fmt.Errorf("bench: %s: %w", name, err)
	}
	return r, nil
}

// printCompare writes the table.
func printCompare(w io.Writer, a, b broadcastResult) {
	na, nb := a.Server, b.Server
	if na == "" {
		na = "A"
	}
	if nb == "" {
		nb = "B"
	}
	ratio := func(x, y float64) string {
		if y == 0 {
			return "-"
		}
		return strconv.FormatFloat(x/y, 'f', 2, 64)
	}
	i := func(v int64) string { return strconv.FormatInt(v, 10) }
	f := func(v float64, prec int) string { return strconv.FormatFloat(v, 'f', prec, 64) }
	rows := [][4]string{
		{"subscribers joined", strconv.Itoa(a.Subs), strconv.Itoa(b.Subs), ""},
		{"publishes sent", i(a.Sent), i(b.Sent), ""},
		{"  ok / error / no reply", fmt.Sprintf("%d/%d/%d", a.OK, a.Errors, a.NoReply), fmt.Sprintf("%d/%d/%d", b.OK, b.Errors, b.NoReply), ""},
		{"deliveries expected", i(a.Expected), i(b.Expected), ""},
		{"delivered", i(a.Delivered), i(b.Delivered), ""},
		{"missing", i(a.Missing), i(b.Missing), ""},
		{"duplicates", i(a.Dups), i(b.Dups), ""},
		{"subscribers closed", i(a.Closed), i(b.Closed), ""},
		{"window s", f(a.WindowSec, 2), f(b.WindowSec, 2), ""},
		{"server CPU s", f(a.ServerCPU, 2), f(b.ServerCPU, 2), ratio(a.ServerCPU, b.ServerCPU)},
		{"server idle CPU %", f(a.ServerIdlePct, 1), f(b.ServerIdlePct, 1), ""},
		{"CPU µs/delivery", f(a.ServerCPUPerDeliveryUs, 3), f(b.ServerCPUPerDeliveryUs, 3), ratio(a.ServerCPUPerDeliveryUs, b.ServerCPUPerDeliveryUs)},
		{"latency p50", fmtUs(a.P50us), fmtUs(b.P50us), ratio(a.P50us, b.P50us)},
		{"latency p99", fmtUs(a.P99us), fmtUs(b.P99us), ratio(a.P99us, b.P99us)},
		{"latency p999", fmtUs(a.P999us), fmtUs(b.P999us), ratio(a.P999us, b.P999us)},
		{"latency max", fmtUs(a.MaxUs), fmtUs(b.MaxUs), ratio(a.MaxUs, b.MaxUs)},
		{"push reply p50", fmtUs(a.ReplyP50), fmtUs(b.ReplyP50), ratio(a.ReplyP50, b.ReplyP50)},
		{"client CPU s", f(a.ClientCPU, 2), f(b.ClientCPU, 2), ""},
		{"publisher worst lag", fmtUs(a.PubLagMaxUs), fmtUs(b.PubLagMaxUs), ""},
	}
	fmt.Fprintf(w, "%-26s %14s %14s %12s\n", "", na, nb, na+"/"+nb)
	for _, r := range rows {
		fmt.Fprintf(w, "%-26s %14s %14s %12s\n", r[0], r[1], r[2], r[3])
	}
	if !a.Complete || !b.Complete {
		fmt.Fprintf(w, "(incomplete drain: %s %v, %s %v)\n", na, a.Complete, nb, b.Complete)
	}
}
