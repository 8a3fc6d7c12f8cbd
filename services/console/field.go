package console

import (
	"strings"

	tea "github.com/charmbracelet/bubbletea"
)

// field is a one-line text input; the cursor is always at its end (serial
// terminals make anything fancier fragile).
type field struct {
	value  string
	max    int
	secret bool
}

func (f *field) key(k tea.KeyMsg) bool {
	switch k.Type {
	case tea.KeyBackspace, tea.KeyCtrlH:
		if f.value != "" {
			f.value = f.value[:len(f.value)-1]
		}
		return true
	case tea.KeyCtrlU:
		f.value = ""
		return true
	case tea.KeyRunes, tea.KeySpace:
		for _, r := range k.Runes {
			if r < 0x20 || r > 0x7e || len(f.value) >= f.max {
				continue
			}
			f.value += string(r)
		}
		if k.Type == tea.KeySpace && len(f.value) < f.max {
			f.value += " "
		}
		return true
	}
	return false
}

func (f field) render(focused bool) string {
	v := f.value
	if f.secret {
		v = strings.Repeat("*", len(v))
	}
	if focused {
		return "[" + v + "_]"
	}
	return "[" + v + "]"
}
