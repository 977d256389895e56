// pause is the real node's sandbox ("pause") image: it holds a pod's namespaces and waits
// for SIGTERM or SIGINT, as registry.k8s.io/pause does. Built static by tests/cluster/realnode.py.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
