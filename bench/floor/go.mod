module gomemlimit-operator/bench/floor

go 1.26
