module auditgate/c2sp-verify

go 1.19

// The reference implementation of signed notes, pinned to the version Debian packages as
// golang-golang-x-mod-dev (installed by scripts/c2sp-verify), read from where Debian puts it.
require golang.org/x/mod v0.7.0

replace golang.org/x/mod => /usr/share/gocode/src/golang.org/x/mod
