package quantix

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalidHostname is wrapped by every error ValidateHostname returns.
var ErrInvalidHostname = errors.New("invalid hostname")

// NormalizeHostname validates name by RFC 1123 (docs/design.md §4) and returns it in lower
// case, the form every comparison uses.
func NormalizeHostname(name string) (string, error) {
	if err := ValidateHostname(name); err != nil {
		return "", err
	}
	return strings.ToLower(name), nil
}

// ValidateHostname checks RFC 1123: letters, digits, hyphens and dots; labels of 1 to
// 63 characters that neither start nor end with a hyphen; at most 253 characters.
func ValidateHostname(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrInvalidHostname)
	case len(name) > 253:
		return fmt.Errorf("%w: %d characters, at most 253 allowed", ErrInvalidHostname, len(name))
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" {
			return fmt.Errorf("%w: %q has an empty label", ErrInvalidHostname, name)
		}
		if len(label) > 63 {
			return fmt.Errorf("%w: label %.20q... is %d characters, at most 63 allowed", ErrInvalidHostname, label, len(label))
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("%w: label %q starts or ends with a hyphen", ErrInvalidHostname, label)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("%w: %q contains %q; only letters, digits, hyphens and dots are allowed", ErrInvalidHostname, name, c)
			}
		}
	}
	return nil
}
