package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
)

const versionAbout = `
Prints the module version this binary was built from ("(devel)" for a
build from a source tree rather than 'go install MODULE@VERSION'), the
version control revision and time when the build recorded them (with
"modified" for uncommitted changes), and the Go version and platform.`

func runVersion(args []string, out io.Writer) error {
	f := newFlags("version", "wbcache version", versionAbout, out)
	_, err := f.parseArgs(args)
	if err != nil {
		return err
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		info = nil
	}
	_, err = io.WriteString(out, versionText(info))
	return err
}

// versionText renders build information; info is nil when the binary
// carries none.
func versionText(info *debug.BuildInfo) string {
	platform := runtime.GOOS + "/" + runtime.GOARCH
	if info == nil {
		return fmt.Sprintf("wbcache (unknown version: the binary carries no build information)\n  go:       %s %s\n", runtime.Version(), platform)
	}
	var b strings.Builder
	version := info.Main.Version
	if version == "" {
		version = "(devel)"
	}
	fmt.Fprintf(&b, "wbcache %s\n", version)
	if info.Main.Path != "" {
		fmt.Fprintf(&b, "  module:   %s\n", info.Main.Path)
	}
	vcs := map[string]string{}
	for _, s := range info.Settings {
		vcs[s.Key] = s.Value
	}
	if rev := vcs["vcs.revision"]; rev != "" {
		fmt.Fprintf(&b, "  revision: %s", rev)
		if t := vcs["vcs.time"]; t != "" {
			fmt.Fprintf(&b, " (%s)", t)
		}
		if vcs["vcs.modified"] == "true" {
			b.WriteString(", modified")
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "  go:       %s %s\n", info.GoVersion, platform)
	return b.String()
}
