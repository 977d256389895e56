module gomemlimit.io/tests/goruntime

go 1.21
