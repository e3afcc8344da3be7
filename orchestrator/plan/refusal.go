package plan

import (
	"errors"
	"fmt"
)

// Refusal is a reason not to start an upgrade: the Ready=False condition carries its
// reason and message, and nothing changes.
type Refusal struct {
	Reason  string
	Message string
}

func (e *Refusal) Error() string { return e.Message }

// Refused returns a Refusal with a formatted message.
func Refused(reason, format string, args ...any) error {
	return &Refusal{Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// RefusalReason returns the reason (as the Ready condition would carry it) of an
// error that is the orchestrator refusing an upgrade, and false for other errors.
func RefusalReason(err error) (string, bool) {
	var r *Refusal
	if errors.As(err, &r) {
		return r.Reason, true
	}
	return "", false
}
