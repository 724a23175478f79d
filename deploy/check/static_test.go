package check

import (
	"debug/buildinfo"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestMakeBuildIsStatic runs `make build` and checks that the binaries it
// writes are what deploy/Dockerfile ships: static ELF files (no program
// interpreter, no dynamic section, no needed libraries) built with the
// Dockerfile's CGO_ENABLED=0 and -trimpath.
func TestMakeBuildIsStatic(t *testing.T) {
	root := repoRoot(t)
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatal("make is not installed")
	}
	cmd := exec.Command("make", "-s", "build")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}

	// The Dockerfile's build lines, one per binary it ships.
	dockerfile := string(readFile(t, deployPath(t, "Dockerfile")))
	if !regexp.MustCompile(`(?m)^ENV CGO_ENABLED=0$`).MatchString(dockerfile) {
		t.Error("Dockerfile: no ENV CGO_ENABLED=0 before its build")
	}
	for bin, pkg := range map[string]string{"phxgate": "./cmd/phxgate", "dice": "./backends/examples/dice"} {
		t.Run(bin, func(t *testing.T) {
			line := regexp.MustCompile(`go build (.*) -o /out/` + bin + ` ` + regexp.QuoteMeta(pkg)).FindStringSubmatch(dockerfile)
			if line == nil {
				t.Fatalf("Dockerfile: no `go build … -o /out/%s %s`", bin, pkg)
			}
			if strings.TrimSpace(line[1]) != "-trimpath" {
				t.Errorf("Dockerfile builds %s with %q; make build uses -trimpath only", bin, line[1])
			}
			assertStatic(t, filepath.Join(root, "bin", bin))
		})
	}
}

func assertStatic(t *testing.T, path string) {
	t.Helper()
	problems, err := staticProblems(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", path, p)
	}
}

// staticProblems lists what makes the binary at path not the static,
// cgo-free, -trimpath build the Dockerfile ships.
func staticProblems(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var problems []string
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_INTERP:
			problems = append(problems, "has a program interpreter (dynamically linked)")
		case elf.PT_DYNAMIC:
			problems = append(problems, "has a dynamic segment")
		}
	}
	if f.Section(".dynamic") != nil {
		problems = append(problems, "has a .dynamic section")
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		problems = append(problems, fmt.Sprintf("needs shared libraries %v (%v)", libs, err))
	}
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("build info: %w", err)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if settings["CGO_ENABLED"] != "0" {
		problems = append(problems, fmt.Sprintf("built with CGO_ENABLED=%q, want 0", settings["CGO_ENABLED"]))
	}
	if settings["-trimpath"] != "true" {
		problems = append(problems, "built without -trimpath")
	}
	return problems, nil
}

// TestStaticCheckCatchesDynamic shows assertStatic can fail: a binary
// linked against libc (cgo on, the system linker) is refused.
func TestStaticCheckCatchesDynamic(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("no C compiler to build a dynamically linked binary")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\n\n// #include <stdlib.h>\nimport \"C\"\n\nfunc main() { C.abs(1) }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "dyn")
	cmd := exec.Command("go", "build", "-o", bin, src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building a cgo binary: %v\n%s", err, out)
	}
	problems, err := staticProblems(bin)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) == 0 {
		t.Fatal("a dynamically linked cgo binary passed the static check")
	}
}
