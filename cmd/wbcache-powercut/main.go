// Command wbcache-powercut pulls power cuts under a real wbcache daemon.
//
//	wbcache-powercut fs [--seed N] [--keep-prob P] [--cut-window N] [--lying-fsync] DIR MOUNTPOINT
//	wbcache-powercut run --wbcache PATH [options]
//
// "fs" serves the regular files of DIR at MOUNTPOINT through FUSE, with the
// kernel page cache above it, and holds every write that no fsync of its
// file has covered in memory, per 512-byte sector. SIGUSR1 is the power
// cut: each unsynced sector is kept (written to DIR) or dropped at random,
// DIR is synced, and from then on writes and fsyncs succeed but are lost
// while reads serve the state as of the cut. SIGUSR2 arms the cut instead:
// it comes in a random one of the next --cut-window write, fsync or
// fallocate requests, which is lost with the power. SIGTERM or SIGINT unmounts
// and exits; without a cut before, that is a clean shutdown and the
// unsynced writes are applied first. A new "fs" on DIR serves exactly what
// survived.
//
// "run" formats a cache and a backing file on such a filesystem, then
// repeats rounds of: start the filesystem and `wbcache mount` on its files,
// check every block of the disk against what was written and synced
// before, write with several O_DIRECT writers that fsync now and then,
// kill -9 the daemon, cut the power. See "wbcache-powercut run --help".
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "fs":
		err = fsMain(os.Args[2:])
	case "run":
		err = runMain(os.Args[2:])
	case "-h", "--help", "help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "wbcache-powercut: unknown command %q\n", os.Args[1])
		usage()
	}
	if err != nil {
		if ec, ok := err.(exitCode); ok {
			os.Exit(int(ec))
		}
		fmt.Fprintf(os.Stderr, "wbcache-powercut: %v\n", err)
		os.Exit(1)
	}
}

// exitCode ends the program with that status, having said why already.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  wbcache-powercut fs [--seed N] [--keep-prob P] [--cut-window N] [--lying-fsync] DIR MOUNTPOINT
  wbcache-powercut run --wbcache PATH [options]   (run --help lists them)
`)
	os.Exit(2)
}

// Lines "fs" prints on stdout for the program that runs it.
const (
	fsReadyPrefix   = "wbcache-powercut: serving "
	fsArmedPrefix   = "wbcache-powercut: armed: "
	fsCutPrefix     = "wbcache-powercut: power cut: "
	fsStoppedPrefix = "wbcache-powercut: stopped"
)

// printCut reports a power cut on stdout (the line the runner waits for).
func printCut(cs cutStats, err error) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "wbcache-powercut fs: %v\n", err)
	}
	detail := ""
	if cs.at != "" {
		detail += " in " + cs.at
	}
	if len(cs.perFile) > 0 {
		detail += " (kept/dropped: " + strings.Join(cs.perFile, ", ") + ")"
	}
	fmt.Printf("%s%d files, %d sectors kept, %d dropped%s\n", fsCutPrefix, cs.files, cs.kept, cs.dropped, detail)
}

func fsMain(args []string) error {
	fl := flag.NewFlagSet("fs", flag.ContinueOnError)
	seed := fl.Uint64("seed", uint64(time.Now().UnixNano()), "seed of the power cut's choices")
	keepProb := fl.Float64("keep-prob", 0.5, "chance that the power cut keeps an unsynced sector")
	lying := fl.Bool("lying-fsync", false, "make fsync succeed without making anything durable (a broken disk, to check the checker)")
	window := fl.Int64("cut-window", 2000, "SIGUSR2 arms a power cut at a random one of the next this many write, fsync and fallocate requests")
	fl.Usage = func() {
		fmt.Fprintln(fl.Output(), "usage: wbcache-powercut fs [--seed N] [--keep-prob P] [--cut-window N] [--lying-fsync] DIR MOUNTPOINT")
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		return exitCode(2)
	}
	if fl.NArg() != 2 {
		fl.Usage()
		return exitCode(2)
	}
	dir, mnt := fl.Arg(0), fl.Arg(1)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	logf := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "wbcache-powercut fs: "+format+"\n", a...)
	}
	p := newPCFS(dir, *seed, *keepProb, logf)
	p.lying = *lying
	p.onCut = printCut
	armRng := rand.New(rand.NewPCG(*seed, 0xa7))

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGTERM, syscall.SIGINT)
	srv, err := mountPCFS(p, mnt)
	if err != nil {
		return fmt.Errorf("mounting %s: %w", mnt, err)
	}
	var st unix.Stat_t
	dev := "?"
	if unix.Stat(mnt, &st) == nil {
		dev = fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	}
	fmt.Printf("%s%s at %s (dev %s, seed %d)\n", fsReadyPrefix, dir, mnt, dev, *seed)

	served := make(chan struct{})
	go func() {
		srv.Wait()
		close(served)
	}()
	for {
		select {
		case sig := <-sigs:
			switch sig {
			case syscall.SIGUSR1:
				printCut(p.powerCut())
				continue
			case syscall.SIGUSR2:
				n := 1 + armRng.Int64N(max(*window, 1))
				p.arm(n)
				fmt.Printf("%scut at request %d from now\n", fsArmedPrefix, n)
				continue
			}
			if err := srv.Unmount(); err != nil {
				logf("unmount %s: %v; detaching it", mnt, err)
				_ = unix.Unmount(mnt, unix.MNT_DETACH)
				select {
				case <-served:
				case <-time.After(10 * time.Second):
					logf("%s still in use 10 s after the detach; exiting anyway", mnt)
				}
			}
		case <-served:
			logf("%s was unmounted from outside", mnt)
		}
		break
	}
	n, err := p.flushAll()
	if err != nil {
		logf("%v", err)
	}
	if p.isCut {
		fmt.Printf("%s after the power cut\n", fsStoppedPrefix)
	} else {
		fmt.Printf("%s cleanly: %d unsynced sectors applied\n", fsStoppedPrefix, n)
	}
	if err != nil {
		return exitCode(1)
	}
	return nil
}
