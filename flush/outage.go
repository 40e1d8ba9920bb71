package flush

import (
	"log/slog"
	"time"
)

// outageLogEvery is how often a destage outage (every attempt failing) is
// logged again, with counts, after its first failure.
const outageLogEvery = time.Minute

// outage follows a run of failed destage attempts for the log: the first
// failure is logged at once, then a reminder at most every outageLogEvery
// with how many attempts failed since it began, and the recovery once an
// attempt succeeds. It is owned by the scheduler goroutine.
type outage struct {
	failures      int       // attempts failed since the outage began (0: none)
	start, logged time.Time // when it began; when it was last logged
}

// failed records a failed attempt at now.
func (o *outage) failed(log *slog.Logger, now time.Time, err error) {
	o.failures++
	if o.failures == 1 {
		o.start, o.logged = now, now
		log.Warn("destage failed: the blocks stay dirty; retrying with back-off", "err", err)
		return
	}
	if now.Sub(o.logged) >= outageLogEvery {
		o.logged = now
		log.Warn("destage still failing: the blocks stay dirty; retrying with back-off",
			"failed_attempts", o.failures, "for", now.Sub(o.start).Round(time.Second), "err", err)
	}
}

// succeeded ends the outage, if any, at now.
func (o *outage) succeeded(log *slog.Logger, now time.Time) {
	if o.failures == 0 {
		return
	}
	log.Info("destage recovered", "failed_attempts", o.failures, "after", now.Sub(o.start))
	*o = outage{}
}
