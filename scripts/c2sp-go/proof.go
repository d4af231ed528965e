package main

// The proof mode: one entry's offline proof in the C2SP tlog-proof form
// (c2sp.org/tlog-proof), checked with golang.org/x/mod/sumdb/note and sumdb/tlog.
//
//	c2sp-verify proof VKEY_FILE PROOF_FILE
//
// The file is read by hand, as the spec lays it out: the line "c2sp.org/tlog-proof@v1", an
// optional "extra <base64>" line, "index <decimal>", the inclusion proof one base64 hash a line,
// an empty line, and the checkpoint, a signed note. Then the spec's verification steps, each done
// by Go's code:
//  1. the leaf hash: auditgate's extra data is the entry's canonical bytes, so the leaf is
//     tlog.RecordHash(extra), SHA-256(0x00 || extra);
//  2. the checkpoint is opened with note.Open and the verifier key, and its origin must be the
//     key's name;
//  3. witness cosignatures are not checked here (note.Open ignores signatures by unknown keys);
//  4. tlog.CheckRecord checks the inclusion proof from the leaf at the index to the
//     checkpoint's root.
//
// It prints "ok ORIGIN SIZE INDEX" and exits 0, or prints what failed and exits 1; 2 on bad
// usage or unreadable files.

import (
	"encoding/base64"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

const proofHeader = "c2sp.org/tlog-proof@v1"

func verifyProof(args []string) {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: c2sp-verify proof VKEY_FILE PROOF_FILE")
		os.Exit(2)
	}
	vkey, err := os.ReadFile(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	text, err := os.ReadFile(args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	verifier, err := note.NewVerifier(strings.TrimSpace(string(vkey)))
	if err != nil {
		fail("verifier key: %v", err)
	}

	body, checkpoint, found := strings.Cut(string(text), "\n\n")
	if !found {
		fail("proof: no empty line before the checkpoint")
	}
	lines := strings.Split(body, "\n")
	if lines[0] != proofHeader {
		fail("proof: the first line is not %s", proofHeader)
	}
	lines = lines[1:]
	var extra []byte
	haveExtra := false
	if len(lines) > 0 && strings.HasPrefix(lines[0], "extra ") {
		extra, err = base64.StdEncoding.DecodeString(strings.TrimPrefix(lines[0], "extra "))
		if err != nil {
			fail("proof: extra: %v", err)
		}
		haveExtra = true
		lines = lines[1:]
	}
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "index ") {
		fail("proof: no index line")
	}
	indexText := strings.TrimPrefix(lines[0], "index ")
	index, err := strconv.ParseInt(indexText, 10, 64)
	if err != nil || index < 0 || (len(indexText) > 1 && indexText[0] == '0') || strings.HasPrefix(indexText, "+") {
		fail("proof: index %q is not a decimal number", indexText)
	}
	var proof tlog.RecordProof
	for _, line := range lines[1:] {
		hash, err := base64.StdEncoding.DecodeString(line)
		if err != nil || len(hash) != len(tlog.Hash{}) {
			fail("proof: %q is not the base64 of a 32-byte hash", line)
		}
		var h tlog.Hash
		copy(h[:], hash)
		proof = append(proof, h)
	}
	if !haveExtra {
		fail("proof: no extra line, so no entry to hash")
	}

	opened, err := note.Open([]byte(checkpoint), note.VerifierList(verifier))
	if err != nil {
		fail("checkpoint: %v", err)
	}
	origin, size, rootText, err := parseCheckpoint(opened.Text)
	if err != nil {
		fail("checkpoint: %v", err)
	}
	if origin != verifier.Name() {
		fail("checkpoint: origin %q is not the key name %q", origin, verifier.Name())
	}
	rootBytes, _ := base64.StdEncoding.DecodeString(rootText)
	var root tlog.Hash
	copy(root[:], rootBytes)
	if size > 1<<62 || index >= int64(size) {
		fail("proof: index %d is outside the tree of size %d", index, size)
	}
	if err := tlog.CheckRecord(proof, int64(size), root, index, tlog.RecordHash(extra)); err != nil {
		fail("inclusion: %v", err)
	}
	fmt.Printf("ok %s %d %d\n", origin, size, index)
}
