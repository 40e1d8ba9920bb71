package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// cmdFlags is a subcommand's flag set with its help text. Flags and
// positional arguments may be interleaved ("status MOUNTPOINT --json").
type cmdFlags struct {
	*flag.FlagSet
	name     string
	synopsis string // "wbcache status MOUNTPOINT [--json]"
	about    string // paragraphs after the option list
	out      io.Writer
	args     map[string]string // flag name -> argument placeholder, overriding UnquoteUsage
	wrapped  bool              // the flags' values are optionValues
	badValue error             // the last value an optionValue refused
}

func newFlags(name, synopsis, about string, out io.Writer) *cmdFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return &cmdFlags{FlagSet: fs, name: name, synopsis: synopsis, about: about, out: out, args: map[string]string{}}
}

// usage writes the help text.
func (f *cmdFlags) usage(w io.Writer) {
	fmt.Fprintf(w, "Usage:\n  %s\n", f.synopsis)
	has := false
	f.VisitAll(func(*flag.Flag) { has = true })
	if has {
		fmt.Fprintf(w, "\nOptions:\n")
		f.VisitAll(func(fl *flag.Flag) {
			name, use := flag.UnquoteUsage(unwrapped(fl))
			if a, ok := f.args[fl.Name]; ok {
				name = a
			}
			arg := "--" + fl.Name
			if name != "" {
				arg += " " + name
			}
			fmt.Fprintf(w, "  %-26s %s", arg, use)
			if fl.DefValue != "" && fl.DefValue != "false" && fl.DefValue != "0" {
				fmt.Fprintf(w, " (default %s)", fl.DefValue)
			}
			fmt.Fprintln(w)
		})
	}
	if f.about != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(f.about))
	}
	fmt.Fprintln(w, "\n  -h, --help                 show this help")
}

// parse parses args and returns the positional arguments. --help prints the
// usage to the command's output and returns flag.ErrHelp; a bad flag
// returns a usageError.
func (f *cmdFlags) parse(args []string) ([]string, error) {
	f.wrapValues()
	if err := f.checkOptions(args); err != nil {
		return nil, &usageError{cmd: f.name, err: err}
	}
	var pos []string
	for {
		f.badValue = nil
		err := f.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			f.usage(f.out)
			return nil, flag.ErrHelp
		}
		if f.badValue != nil {
			err = f.badValue
		}
		if err != nil {
			return nil, &usageError{cmd: f.name, err: err}
		}
		rest := f.Args()
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// given reports whether the flag name was set on the command line.
func (f *cmdFlags) given(name string) bool {
	set := false
	f.Visit(func(fl *flag.Flag) {
		if fl.Name == name {
			set = true
		}
	})
	return set
}

// wantArgs checks the number of positional arguments.
func (f *cmdFlags) wantArgs(pos []string, names ...string) error {
	if len(pos) < len(names) {
		return usagef(f.name, "missing %s", strings.Join(names[len(pos):], " and "))
	}
	if len(pos) > len(names) {
		return usagef(f.name, "unexpected argument %q", pos[len(names)])
	}
	return nil
}

// parseArgs parses args and checks that the positional arguments are
// exactly names.
func (f *cmdFlags) parseArgs(args []string, names ...string) ([]string, error) {
	pos, err := f.parse(args)
	if err != nil {
		return nil, err
	}
	return pos, f.wantArgs(pos, names...)
}

// parseDevices parses the options of a command that works on a cache and
// its backing device (both required) and takes the positional arguments
// names.
func (f *cmdFlags) parseDevices(args []string, cachePath, backingPath *string, names ...string) ([]string, error) {
	pos, err := f.parseArgs(args, names...)
	if err != nil {
		return nil, err
	}
	if *cachePath == "" || *backingPath == "" {
		return nil, usagef(f.name, "--cache and --backing are required")
	}
	return pos, nil
}

// sizeFlag is a flag.Value holding a byte count.
type sizeFlag struct{ n int64 }

func (s *sizeFlag) String() string {
	if s == nil || s.n == 0 {
		return ""
	}
	return formatSizeExact(s.n)
}

func (s *sizeFlag) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	s.n = n
	return nil
}

// parseSize parses a byte count: plain bytes, or a whole number with a K,
// M, G or T suffix (KiB units; "KiB", "MiB"... are accepted too).
func parseSize(s string) (int64, error) {
	orig := s
	s = strings.TrimSpace(s)
	shift := 0
	upper := strings.ToUpper(s)
	for _, suf := range []struct {
		name  string
		shift int
	}{{"KIB", 10}, {"MIB", 20}, {"GIB", 30}, {"TIB", 40}, {"K", 10}, {"M", 20}, {"G", 30}, {"T", 40}, {"B", 0}} {
		if strings.HasSuffix(upper, suf.name) {
			s = s[:len(s)-len(suf.name)]
			shift = suf.shift
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q: want bytes or a whole number with a K, M, G or T suffix (KiB units), e.g. 64M", orig)
	}
	if shift > 0 && n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("invalid size %q: too large", orig)
	}
	return n << shift, nil
}

// formatSize renders a byte count for humans ("64.0 MiB", "512 B").
func formatSize(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	f := float64(n)
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB", "PiB"} {
		f /= unit
		if math.Abs(f) < unit || u == "PiB" {
			return fmt.Sprintf("%.1f %s", f, u)
		}
	}
	return fmt.Sprintf("%d B", n)
}

// formatSizeExact renders a byte count in the largest unit that divides it
// ("64M", "4096"), in the syntax parseSize accepts.
func formatSizeExact(n int64) string {
	if n == 0 {
		return "0"
	}
	for _, u := range []struct {
		s     string
		shift uint
	}{{"T", 40}, {"G", 30}, {"M", 20}, {"K", 10}} {
		if n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.s
		}
	}
	return strconv.FormatInt(n, 10)
}

// formatAge renders seconds as a short duration ("0s", "12s", "3m4s").
func formatAge(sec float64) string {
	return (time.Duration(sec * float64(time.Second))).Round(time.Second).String()
}

// percent is 100*a/b, 0 when b is 0.
func percent(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}
