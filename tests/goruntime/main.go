// Command goruntime prints the memory limit the Go runtime read from GOMEMLIMIT.
//
// tests/unit/test_go_runtime.py builds it once per session and runs it with
// every GOMEMLIMIT value the tests produce: an accepted value prints its byte
// count (math.MaxInt64 means no limit); a value Go rejects never reaches main,
// because the runtime dies at start with "malformed GOMEMLIMIT" and exit 2.
package main

import (
	"fmt"
	"runtime/debug"
)

func main() {
	fmt.Println(debug.SetMemoryLimit(-1))
}
