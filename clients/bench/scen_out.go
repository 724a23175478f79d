package main

import (
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// Output of the churn, actions and resume scenarios: a progress bar while
// running, a summary on stdout, and with -out a directory of
// result.json, summary.md, latency_over_time.png and
// latency_histogram.png.

// Output file names.
const (
	outResult    = "result.json"
	outSummary   = "summary.md"
	outOverTime  = "latency_over_time.png"
	outHistogram = "latency_histogram.png"
	// barRedraw is how often the progress bar is redrawn on a terminal.
	barRedraw = 200 * time.Millisecond
	barWidth  = 30
)

// progressBar draws a bar on a terminal (redrawn in place), or plain
// lines every interval elsewhere (a pipe, a CI log).
type progressBar struct {
	w     io.Writer
	tty   bool
	every time.Duration
	name  string
	start time.Time
}

func newProgressBar(w io.Writer, every time.Duration, name string, start time.Time) *progressBar {
	b := &progressBar{w: w, every: every, name: name, start: start}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			b.tty = true
		}
	}
	return b
}

// run draws state until stop is called (stop is idempotent and draws a
// last time). A negative interval draws nothing.
func (b *progressBar) run(state func() (float64, string)) (stop func()) {
	if b.every < 0 {
		return func() {}
	}
	period := b.every
	if b.tty {
		period = barRedraw
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				b.draw(state())
			}
		}
	})
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			wg.Wait()
			b.draw(state())
			if b.tty {
				fmt.Fprintln(b.w)
			}
		})
	}
}

func (b *progressBar) draw(frac float64, text string) {
	frac = min(max(frac, 0), 1)
	el := time.Since(b.start).Seconds()
	if !b.tty {
		fmt.Fprintf(b.w, "%6.1fs %s %3.0f%% %s\n", el, b.name, 100*frac, text)
		return
	}
	n := int(frac * barWidth)
	fmt.Fprintf(b.w, "\r\033[K%s [%s%s] %3.0f%% %5.1fs %s", b.name, strings.Repeat("#", n), strings.Repeat(".", barWidth-n), 100*frac, el, text)
}

// summaryRows are the figures of a result, as label and value.
func summaryRows(r scenResult) [][2]string {
	rows := [][2]string{
		{"scenario", r.Scenario},
		{"command", "`" + r.Command + "`"},
		{"started", r.Started.Format(time.RFC3339)},
		{"processes", fmt.Sprint(r.Processes)},
	}
	add := func(k, f string, a ...any) { rows = append(rows, [2]string{k, fmt.Sprintf(f, a...)}) }
	lat := func(k string, l latencyUs, n uint64) {
		add(k, "p50 %s, p90 %s, p99 %s, p999 %s, max %s (n=%d)", fmtUs(l.P50us), fmtUs(r.P90us), fmtUs(l.P99us), fmtUs(l.P999us), fmtUs(l.MaxUs), n)
	}
	switch r.Scenario {
	case scenChurn:
		add("cycles", "%d planned, %d started, %d ok, %d failed", r.Planned, r.Attempts, r.OK, r.Attempts-r.OK)
		add("rate", "%.1f cycles/s achieved of %g/s target, over %.2f s", r.Achieved, r.Target, r.WindowSec)
		lat("connect+join latency", r.latencyUs, r.Latency.N)
	case scenActions:
		add("clients", "%d joined, %d failed", r.Clients, r.Failed)
		add("pushes", "%d planned, %d sent, %d ok, %d no reply", r.Planned, r.Attempts, r.OK, r.NoReply)
		add("rate", "%.1f pushes/s answered ok, of %g/s target, over %.2f s", r.Achieved, r.Target, r.WindowSec)
		lat("reply latency", r.latencyUs, r.Latency.N)
	case scenResume:
		add("clients", "%d joined, %d failed; %d complete, %d incomplete", r.Clients, r.Failed, r.Complete, r.Incomplete)
		add("publisher", "%d sent, %d ok, %d refused%s to %d rooms at %g/s", r.PubSent, r.PubOK, r.PubErrors, parenCounts(r.PubReasons), r.Rooms, r.Target)
		add("deliveries", "%d in order; missing %d, skipped %d, duplicates %d, epoch changes %d", r.OK, r.Missing, r.Gaps, r.Dups, r.EpochChanges)
		add("storms", "%d storms (summed over processes), %d reconnects: %d recovered, %d not", r.Storms, r.Reconnects, r.Recovered, r.NotRecovered)
		lat("publish→receive latency", r.latencyUs, r.Latency.N)
		add("rejoin latency", "p50 %s, p99 %s, max %s (n=%d)", fmtUs(r.RejoinUs.P50us), fmtUs(r.RejoinUs.P99us), fmtUs(r.RejoinUs.MaxUs), r.Rejoin.N)
	}
	if len(r.Errors) > 0 {
		add("errors by kind", "%s", fmtCounts(r.Errors))
	} else {
		add("errors by kind", "none")
	}
	if r.Pass {
		add("verdict", "pass")
	} else {
		add("verdict", "FAIL: %s", strings.Join(r.Faults, "; "))
	}
	return rows
}

// parenCounts is " (a=1 b=2)", or "" for none.
func parenCounts(m map[string]int64) string {
	if len(m) == 0 {
		return ""
	}
	return " (" + fmtCounts(m) + ")"
}

// printScen writes the human summary.
func printScen(w io.Writer, r scenResult) {
	for _, row := range summaryRows(r) {
		if row[0] == "command" {
			continue
		}
		fmt.Fprintf(w, "%-24s %s\n", row[0]+":", row[1])
	}
}

// markdownSummary is summary.md.
func markdownSummary(r scenResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# phxgate-bench %s\n\n| figure | value |\n|---|---|\n", r.Scenario)
	for _, row := range summaryRows(r) {
		fmt.Fprintf(&b, "| %s | %s |\n", row[0], strings.ReplaceAll(row[1], "|", "\\|"))
	}
	fmt.Fprintf(&b, "\n![latency over time](%s)\n\n![latency histogram](%s)\n", outOverTime, outHistogram)
	if len(r.Points) > 0 {
		b.WriteString("\n| t (s) | n | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|\n")
		for _, p := range r.Points {
			fmt.Fprintf(&b, "| %.1f | %d | %s | %s | %s | %s |\n", p.T, p.N, fmtUs(p.P50us), fmtUs(p.P90us), fmtUs(p.P99us), fmtUs(p.MaxUs))
		}
	}
	return b.String()
}

// writeScenOutputs writes the output directory.
func writeScenOutputs(dir string, r scenResult) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, outResult), append(b, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, outSummary), []byte(markdownSummary(r)), 0o644); err != nil {
		return err
	}
	if err := plotOverTime(filepath.Join(dir, outOverTime), r); err != nil {
		return fmt.Errorf("bench: %s: %w", outOverTime, err)
	}
	if err := plotHistogram(filepath.Join(dir, outHistogram), r); err != nil {
		return fmt.Errorf("bench: %s: %w", outHistogram, err)
	}
	return nil
}

// latencyTitle names the scenario's latency.
func latencyTitle(s string) string {
	switch s {
	case scenChurn:
		return "connect+join latency"
	case scenActions:
		return "push→reply latency"
	}
	return "publish→receive latency"
}

// minPlotMs keeps values on a log axis positive.
const minPlotMs = 1e-3

func plotOverTime(path string, r scenResult) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s: %s over time", r.Scenario, latencyTitle(r.Scenario))
	p.X.Label.Text = "seconds from start"
	p.Y.Label.Text = "ms"
	p.Add(plotter.NewGrid())
	if len(r.Points) > 0 {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = logTicks125{}
		colors := []color.Color{
			color.RGBA{R: 31, G: 119, B: 180, A: 255}, color.RGBA{R: 44, G: 160, B: 44, A: 255},
			color.RGBA{R: 255, G: 127, B: 14, A: 255}, color.RGBA{R: 214, G: 39, B: 40, A: 255},
		}
		for i, s := range []struct {
			name string
			v    func(seriesPoint) float64
		}{
			{"p50", func(q seriesPoint) float64 { return q.P50us }},
			{"p90", func(q seriesPoint) float64 { return q.P90us }},
			{"p99", func(q seriesPoint) float64 { return q.P99us }},
			{"max", func(q seriesPoint) float64 { return q.MaxUs }},
		} {
			xys := make(plotter.XYs, len(r.Points))
			for j, q := range r.Points {
				xys[j] = plotter.XY{X: q.T, Y: math.Max(s.v(q)/1e3, minPlotMs)}
			}
			l, err := plotter.NewLine(xys)
			if err != nil {
				return err
			}
			l.Color = colors[i]
			l.Width = vg.Points(1.5)
			p.Add(l)
			p.Legend.Add(s.name, l)
		}
		p.Legend.Top = true
	}
	return p.Save(20*vg.Centimeter, 12*vg.Centimeter, path)
}

// logTicks125 labels a log axis at 1, 2 and 5 times each power of ten
// (plot.LogTicks labels only the powers, too few over a decade or two).
type logTicks125 struct{}

func (logTicks125) Ticks(lo, hi float64) []plot.Tick {
	var out []plot.Tick
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		for _, m := range []float64{1, 2, 5} {
			if v := m * math.Pow(10, e); v >= lo && v <= hi {
				out = append(out, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', -1, 64)})
			}
		}
	}
	if len(out) < 2 {
		return plot.LogTicks{Prec: -1}.Ticks(lo, hi)
	}
	return out
}

// histPerOctave is the histogram plot's bins per power of two.
const histPerOctave = 8

func plotHistogram(path string, r scenResult) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s: %s (n=%d)", r.Scenario, latencyTitle(r.Scenario), r.Latency.N)
	p.X.Label.Text = "ms (log scale)"
	p.Y.Label.Text = "count"
	p.Add(plotter.NewGrid())
	// Regroup the log-linear buckets into histPerOctave bins per octave.
	bins := map[int]float64{}
	for _, c := range r.Latency.Counts {
		lower, width := histBounds(int(c[0]))
		ms := math.Max(float64(lower)+float64(width)/2, 1) / 1e6
		bins[int(math.Floor(math.Log2(ms)*histPerOctave))] += float64(c[1])
	}
	if len(bins) > 0 {
		keys := make([]int, 0, len(bins))
		for k := range bins {
			keys = append(keys, k)
		}
		sort.Ints(keys)
		h := &plotter.Histogram{FillColor: color.RGBA{R: 31, G: 119, B: 180, A: 200}, LineStyle: plotter.DefaultLineStyle}
		for k := keys[0]; k <= keys[len(keys)-1]; k++ {
			h.Bins = append(h.Bins, plotter.HistogramBin{
				Min: math.Exp2(float64(k) / histPerOctave), Max: math.Exp2(float64(k+1) / histPerOctave), Weight: bins[k],
			})
		}
		p.Add(h)
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = logTicks125{}
	}
	return p.Save(20*vg.Centimeter, 12*vg.Centimeter, path)
}
