module gomemlimit.io/cluster/pause

go 1.26.0
