package channels

import (
	"errors"
	"time"
)

const waitLong = 5 * time.Second

func errorsAs(err error, target any) bool { return errors.As(err, target) }
func errorsIs(err, target error) bool     { return errors.Is(err, target) }
