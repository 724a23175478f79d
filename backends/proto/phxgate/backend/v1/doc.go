// Package backendv1 is the Go code generated from backend.proto, the
// contract between phxgate and game backends: the GameBackend service a
// game serves (Join, HandleIn, Leave) and the Gateway service phxgate
// serves to games. Regenerate with `make proto`; never edit the .pb.go
// files by hand.
package backendv1
