// Command wbcache formats, serves and manages a wbcache write-back block
// cache: an SSD cache file in front of an HDD backing file or block
// device, served as the single virtual file MOUNTPOINT/disk through FUSE.
//
// Subcommands (each has its own --help):
//
//	format   write an empty cache onto the cache device
//	mount    serve MOUNTPOINT/disk in the foreground until SIGTERM/SIGINT or umount
//	status   show a mounted cache's state
//	list     list the caches running on this host
//	stop     stop the daemon serving a mount point and wait for it
//	flush    write every dirty block back to the backing device
//	mode     show or switch the cache mode of a mounted cache
//	set      change policy knobs of a mounted cache
//	check    check an unmounted cache device offline
//	detach   write every dirty block back offline and release the backing device
//	rescue   write back every verifiable dirty block of a damaged cache
//	demo     run a self-checking demonstration in a temporary directory
//	version  show the version this binary was built from
//
// Exit codes: 0 ok, 1 runtime error, 2 usage error, 3 check found problems
// (rescue: blocks it could not save), 4 check found degraded redundancy only.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

// Exit codes.
const (
	exitOK       = 0
	exitError    = 1
	exitUsage    = 2
	exitProblems = 3
	exitDegraded = 4
)

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(args []string, out io.Writer) error
}

var commands []command

func init() {
	commands = []command{
		{"format", "write an empty cache onto a cache device", runFormat},
		{"mount", "serve MOUNTPOINT/disk in the foreground", runMount},
		{"status", "show the state of a mounted cache", runStatus},
		{"list", "list the caches running on this host", runList},
		{"stop", "stop the daemon serving a mount point and wait for it", runStop},
		{"flush", "write every dirty block back to the backing device", runFlush},
		{"mode", "show or switch the cache mode of a mounted cache", runMode},
		{"set", "change policy settings of a mounted cache", runSet},
		{"check", "check an unmounted cache offline", runCheck},
		{"detach", "write back everything offline and release the backing device", runDetach},
		{"rescue", "write back every verifiable dirty block of a damaged cache", runRescue},
		{"demo", "run a self-checking demo (needs root and /dev/fuse)", runDemo},
		{"version", "show the version this binary was built from", runVersion},
		{"help", "show help for wbcache or a subcommand", runHelp},
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes the command line args and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		mainUsage(stderr)
		return exitUsage
	}
	name := args[0]
	switch name {
	case "-h", "--help", "-help":
		mainUsage(stdout)
		return exitOK
	case "--version", "-version":
		name = "version"
	}
	cmd := lookup(name)
	if cmd == nil {
		fmt.Fprintf(stderr, "wbcache: unknown command %q\n\n", name)
		mainUsage(stderr)
		return exitUsage
	}
	err := cmd.run(args[1:], stdout)
	return report(stderr, err)
}

func lookup(name string) *command {
	for i := range commands {
		if commands[i].name == name {
			return &commands[i]
		}
	}
	return nil
}

// report prints err (if any) and maps it to an exit code.
func report(stderr io.Writer, err error) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "wbcache %s: %v\n", ue.cmd, ue.err)
		fmt.Fprintf(stderr, "Run 'wbcache %s --help' for usage.\n", ue.cmd)
		return exitUsage
	}
	var ce *codeError
	if errors.As(err, &ce) {
		if ce.err != nil {
			fmt.Fprintf(stderr, "wbcache: %v\n", ce.err)
		}
		return ce.code
	}
	fmt.Fprintf(stderr, "wbcache: %v\n", err)
	return exitError
}

// usageError is a mistake on the command line (exit 2).
type usageError struct {
	cmd string
	err error
}

func (e *usageError) Error() string { return e.cmd + ": " + e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(cmd, format string, args ...any) error {
	return &usageError{cmd: cmd, err: fmt.Errorf(format, args...)}
}

// codeError carries a specific exit code; err may be nil when the output
// already said everything.
type codeError struct {
	code int
	err  error
}

func (e *codeError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}
func (e *codeError) Unwrap() error { return e.err }

func mainUsage(w io.Writer) {
	fmt.Fprint(w, `wbcache: a persistent write-back block cache (SSD file in front of an HDD),
served as one virtual block file, MOUNTPOINT/disk, through FUSE.

Usage:
  wbcache COMMAND [options] [arguments]

Commands:
`)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
Typical use:
  wbcache format --cache /ssd/cache.img --cache-size 16G --backing /dev/sdb
  wbcache mount  --cache /ssd/cache.img --backing /dev/sdb /mnt/wbc &
  losetup --find --show --direct-io=on /mnt/wbc/disk    # a block device on top
  wbcache status /mnt/wbc
  wbcache stop   /mnt/wbc                               # or SIGTERM; 'wbcache list' shows them all

Sizes take K, M, G or T suffixes (KiB units) or plain bytes; durations use
Go syntax (30s, 2m, 1h30m).
Exit codes: 0 ok, 1 runtime error, 2 usage error, 3 check found problems,
4 check found degraded redundancy (a superblock or checkpoint copy bad).
Run 'wbcache COMMAND --help' for a command's options.
`)
}

func runHelp(args []string, out io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		mainUsage(out)
		return nil
	}
	if len(args) > 1 {
		return usagef("help", "too many arguments: want at most one command name")
	}
	c := lookup(args[0])
	if c == nil || c.name == "help" {
		if c != nil {
			mainUsage(out)
			return nil
		}
		return usagef("help", "unknown command %q", args[0])
	}
	return c.run([]string{"--help"}, out)
}
