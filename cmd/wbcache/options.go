package main

import (
	"flag"
	"fmt"
	"strings"
)

// The flag package names options with one dash ("-cache-size") in its
// errors; wbcache documents and prints them with two. These helpers make
// the errors about options say what the help says.

// optionValue wraps a flag's value so that a value it refuses is reported
// as "--name VALUE: why".
type optionValue struct {
	flag.Value
	name string
	f    *cmdFlags
}

func (v *optionValue) Set(s string) error {
	err := v.Value.Set(s)
	switch {
	case err != nil && v.IsBoolFlag():
		v.f.badValue = fmt.Errorf("--%s=%s: want true or false", v.name, s)
	case err != nil:
		v.f.badValue = fmt.Errorf("--%s %q: %w", v.name, s, err)
	}
	return err
}

// IsBoolFlag keeps boolean options usable without a value.
func (v *optionValue) IsBoolFlag() bool {
	b, ok := v.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// wrapValues wraps every flag's value once.
func (f *cmdFlags) wrapValues() {
	if f.wrapped {
		return
	}
	f.wrapped = true
	f.VisitAll(func(fl *flag.Flag) {
		fl.Value = &optionValue{Value: fl.Value, name: fl.Name, f: f}
	})
}

// unwrapped is fl with its own value, for flag.UnquoteUsage, which names
// the argument after the value's type.
func unwrapped(fl *flag.Flag) *flag.Flag {
	v, ok := fl.Value.(*optionValue)
	if !ok {
		return fl
	}
	c := *fl
	c.Value = v.Value
	return &c
}

// checkOptions refuses an unknown option, or one missing its value, in
// args before the flag package does so in its own words.
func (f *cmdFlags) checkOptions(args []string) error {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return nil
		}
		if len(a) < 2 || a[0] != '-' {
			continue
		}
		name, _, hasValue := strings.Cut(strings.TrimPrefix(a[1:], "-"), "=")
		if name == "h" || name == "help" {
			continue
		}
		fl := f.Lookup(name)
		if fl == nil {
			return fmt.Errorf("unknown option --%s", name)
		}
		if hasValue {
			continue
		}
		if v, ok := fl.Value.(interface{ IsBoolFlag() bool }); ok && v.IsBoolFlag() {
			continue
		}
		if i+1 == len(args) {
			return fmt.Errorf("option --%s needs a value", name)
		}
		i++ // its value
	}
	return nil
}
