//go:build !linux

package main

import (
	"context"
	"errors"
)

// errNoEpoll: the subscribers' readers are built on epoll.
var errNoEpoll = errors.New("bench: the broadcast scenario needs Linux (epoll)")

type subGroup struct{}

func startSubGroup(context.Context, groupSpec) (*subGroup, error) { return nil, errNoEpoll }

func (*subGroup) progress() groupProgress                { return groupProgress{Err: errNoEpoll.Error()} }
func (*subGroup) finish(finishSpec) (groupResult, error) { return groupResult{}, errNoEpoll }
func (*subGroup) close()                                 {}
