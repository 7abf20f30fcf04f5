#!/bin/sh
# Build the example without the Go module proxy, against Debian's Go packages
# (apt-get install golang-go golang-google-grpc-dev golang-google-protobuf-dev
# golang-google-genproto-dev), as Debian builds Go software: GOPATH mode, with the
# example linked into a scratch GOPATH beside /usr/share/gocode.
#   examples/go/build-offline.sh [OUTPUT]   (default: examples/go/conveyor-example)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-$here/conveyor-example}")
gopath=$(mktemp -d)
trap 'rm -rf "$gopath"' EXIT
mkdir -p "$gopath/src/conveyor/examples"
ln -s "$here" "$gopath/src/conveyor/examples/go"
cd "$gopath/src/conveyor/examples/go"
GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" go build -o "$out" .
