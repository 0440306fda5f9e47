package main

import (
	"fmt"
	"os"
)

// failer is the test.Failer that Istio's fake discovery server wants: a failure there is a
// failure to compile the input, so it stops the compilation (a panic with a failure, which
// compile recovers and returns as an error).
type failer struct {
	cleanups []func()
}

func (f *failer) Fail()                          { f.Fatal("failed") }
func (f *failer) FailNow()                       { f.Fatal("failed") }
func (f *failer) Fatal(args ...any)              { f.exit(fmt.Sprint(args...)) }
func (f *failer) Fatalf(format string, a ...any) { f.exit(fmt.Sprintf(format, a...)) }
func (f *failer) Log(args ...any)                { fmt.Fprintln(os.Stderr, args...) }
func (f *failer) Logf(format string, a ...any)   { fmt.Fprintf(os.Stderr, format+"\n", a...) }
func (f *failer) Helper()                        {}
func (f *failer) Skip(args ...any)               { f.Fatal(args...) }
func (f *failer) Cleanup(fn func())              { f.cleanups = append(f.cleanups, fn) }

func (f *failer) TempDir() string {
	dir, err := os.MkdirTemp("", "istio-oracle")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func (f *failer) close() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
	f.cleanups = nil
}

// failure is what a failer panics with.
type failure string

func (f *failer) exit(msg string) {
	panic(failure(msg))
}
