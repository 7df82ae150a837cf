package main

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// table renders rows in a box, patronictl-style, with an optional title
// in the top border.
type table struct {
	title  string
	header []string
	rows   [][]string
	right  map[int]bool // right-aligned columns (numbers)
}

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

func (t *table) render(w io.Writer) {
	widths := make([]int, len(t.header))
	for i, h := range t.header {
		widths[i] = utf8.RuneCountInString(h)
	}
	for _, r := range t.rows {
		for i, c := range r {
			if n := utf8.RuneCountInString(c); n > widths[i] {
				widths[i] = n
			}
		}
	}
	sep := func() string {
		var b strings.Builder
		b.WriteString("+")
		for _, wd := range widths {
			b.WriteString(strings.Repeat("-", wd+2) + "+")
		}
		return b.String()
	}
	line := func(cells []string) string {
		var b strings.Builder
		b.WriteString("|")
		for i, c := range cells {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c))
			if t.right[i] {
				b.WriteString(" " + pad + c + " |")
			} else {
				b.WriteString(" " + c + pad + " |")
			}
		}
		return b.String()
	}
	top := sep()
	if t.title != "" {
		title := "+ " + t.title + " "
		if utf8.RuneCountInString(title) < utf8.RuneCountInString(top) {
			top = title + string([]rune(top)[utf8.RuneCountInString(title):])
		} else {
			top = title
		}
	}
	fmt.Fprintln(w, top)
	fmt.Fprintln(w, line(t.header))
	fmt.Fprintln(w, sep())
	for _, r := range t.rows {
		fmt.Fprintln(w, line(r))
	}
	fmt.Fprintln(w, sep())
}
