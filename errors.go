package quantix

import (
	"errors"
)

// ExitConfig is the exit status of a command whose configuration (or data) needs an
// operator: sysexits.h EX_CONFIG. Init prints a fatal marker with the command's last
// stderr line and retries it slowly instead of restarting it at once.
const ExitConfig = 78

// ErrConfig is wrapped by every error a restart cannot fix: a bad configuration,
// data the service refuses to touch. The commands exit with ExitConfig on it.
var ErrConfig = errors.New("configuration error")

// ConfigError marks err as a configuration error without adding to its message:
// errors.Is(ConfigError(err), ErrConfig) holds and the console shows err's own text.
// It returns nil for a nil err.
func ConfigError(err error) error {
	if err == nil {
		return nil
	}
	return configError{err}
}

type configError struct{ err error }

func (e configError) Error() string        { return e.err.Error() }
func (e configError) Unwrap() error        { return e.err }
func (e configError) Is(target error) bool { return target == ErrConfig }
