package backends

import "fmt"

// CheckSpec reports whether New accepts spec, with the error New would
// return, without building anything (no connection, no goroutine), so a
// configuration can be checked before anything starts.
func CheckSpec(spec string) error {
	switch {
	case spec == SpecEcho, spec == SpecBench:
		return nil
	case isGRPCSpec(spec):
		_, err := ParseGRPCSpec(spec)
		return err
	case isWebhookSpec(spec):
		_, err := ParseWebhookSpec(spec)
		return err
	}
	return fmt.Errorf("%w: %q", ErrUnknownBackend, spec)
}
