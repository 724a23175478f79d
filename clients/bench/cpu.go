package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat.
// The kernel fixes it at 100 for user space on every architecture Go
// supports on Linux, whatever CONFIG_HZ is.
const clockTicks = 100

// procCPU returns the CPU time (user + system) process pid has used so
// far, in seconds, from /proc/PID/stat (10 ms resolution). Threads are
// included; children are not.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return parseProcStat(b)
}

// parseProcStat reads utime and stime (fields 14 and 15) from the text of
// /proc/PID/stat. The command name (field 2) is in parentheses and may
// hold spaces or parentheses itself, so fields are counted after the last
// ')'.
func parseProcStat(b []byte) (float64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("bench: /proc stat: no command field")
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state), so field k is f[k-3].
	if len(f) < 13 {
		return 0, fmt.Errorf("bench: /proc stat: %d fields", len(f)+2)
	}
	ut, err1 := strconv.ParseUint(string(f[11]), 10, 64)
	st, err2 := strconv.ParseUint(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bench: /proc stat: bad utime/stime %q %q", f[11], f[12])
	}
	return float64(ut+st) / clockTicks, nil
}

// machineCPU returns the time all CPUs together have spent busy and idle
// since boot, in seconds, from /proc/stat: the whole machine, whoever ran.
func machineCPU() (busy, idle float64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	return parseMachineStat(b)
}

// parseMachineStat reads the first line of /proc/stat, "cpu user nice
// system idle iowait irq softirq steal …" in clock ticks. Busy is user,
// nice, system, irq, softirq and steal (guest time is inside user); idle
// is idle and iowait.
func parseMachineStat(b []byte) (busy, idle float64, err error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := bytes.Fields(line)
	if len(f) < 9 || string(f[0]) != "cpu" {
		return 0, 0, fmt.Errorf("bench: /proc/stat: no cpu line")
	}
	var v [8]uint64
	for i := range v {
		if v[i], err = strconv.ParseUint(string(f[i+1]), 10, 64); err != nil {
			return 0, 0, fmt.Errorf("bench: /proc/stat: %q: %w", f[i+1], err)
		}
	}
	user, nice, system, idl, iowait, irq, softirq, steal := v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]
	return float64(user+nice+system+irq+softirq+steal) / clockTicks, float64(idl+iowait) / clockTicks, nil
}
