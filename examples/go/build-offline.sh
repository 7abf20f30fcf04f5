#!/bin/sh
# Build the example without the Go module proxy, against Debian's Go packages
# (apt-get install golang-go golang-google-grpc-dev golang-google-protobuf-dev
# golang-google-genproto-dev), as Debian builds Go software: GOPATH mode, with the
# example linked into a scratch GOPATH beside /usr/share/gocode.
#   examples/go/build-offline.sh [OUTPUT]   (default: examples/go/conveyor-example)
set -eu
# golang-github-golang-protobuf-1-3-dev (which golang-google-grpc-dev may pull in instead)
# predates protobuf's APIv2: the program would build, then panic marshalling a request.
if [ ! -f /usr/share/gocode/src/github.com/golang/protobuf/proto/registry.go ]; then
	echo "build-offline.sh: needs golang-github-golang-protobuf-1-5-dev (found none, or 1.3)" >&2
	exit 1
fi
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-$here/conveyor-example}")
gopath=$(mktemp -d)
trap 'rm -rf "$gopath"' EXIT
mkdir -p "$gopath/src/conveyor/examples"
ln -s "$here" "$gopath/src/conveyor/examples/go"
cd "$gopath/src/conveyor/examples/go"
GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" go build -o "$out" .
