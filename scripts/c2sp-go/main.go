// Command c2sp-verify checks a C2SP checkpoint (c2sp.org/tlog-checkpoint), a signed note
// (c2sp.org/signed-note), against a verifier key, with Go's reference implementation of signed
// notes (golang.org/x/mod/sumdb/note) rather than auditgate's own code; and, in its tiles mode,
// a whole log served as tlog tiles (c2sp.org/tlog-tiles) with Go's reference transparency-log
// code (golang.org/x/mod/sumdb/tlog).
//
//	c2sp-verify VKEY_FILE CHECKPOINT_FILE
//	c2sp-verify tiles VKEY_FILE SOURCE [OLD_CHECKPOINT_FILE]
//	c2sp-verify proof VKEY_FILE PROOF_FILE
//
// The first form prints "ok ORIGIN SIZE ROOT" (ROOT as the checkpoint's base64) and exits 0; on a
// note the key did not sign, a bad signature or a text that is not a checkpoint it prints the
// reason and exits 1; on bad usage or unreadable files it exits 2.
//
// The tiles form reads SOURCE/checkpoint and SOURCE/tile/..., where SOURCE is the URL prefix of
// a log (http://127.0.0.1:9090/tlog, with the bearer token from $AUDITGATE_TOKEN when set) or a
// directory written by `auditgate tiles --out`. See tiles.go for what it checks. The proof form
// checks one entry's C2SP tlog proof (c2sp.org/tlog-proof); see proof.go.
package main

import (
	"encoding/base64"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

func main() {
	if len(os.Args) >= 2 && os.Args[1] == "tiles" {
		verifyTiles(os.Args[2:])
		return
	}
	if len(os.Args) >= 2 && os.Args[1] == "proof" {
		verifyProof(os.Args[2:])
		return
	}
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: c2sp-verify VKEY_FILE CHECKPOINT_FILE")
		fmt.Fprintln(os.Stderr, "       c2sp-verify tiles VKEY_FILE SOURCE [OLD_CHECKPOINT_FILE]")
		fmt.Fprintln(os.Stderr, "       c2sp-verify proof VKEY_FILE PROOF_FILE")
		os.Exit(2)
	}
	vkey, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	message, err := os.ReadFile(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	verifier, err := note.NewVerifier(strings.TrimSpace(string(vkey)))
	if err != nil {
		fail("verifier key: %v", err)
	}
	opened, err := note.Open(message, note.VerifierList(verifier))
	if err != nil {
		fail("note: %v", err)
	}
	origin, size, root, err := parseCheckpoint(opened.Text)
	if err != nil {
		fail("checkpoint: %v", err)
	}
	// The tlog-checkpoint spec says the key name should be the origin; auditgate makes it so.
	if origin != verifier.Name() {
		fail("checkpoint: origin %q is not the key name %q", origin, verifier.Name())
	}
	fmt.Printf("ok %s %d %s\n", origin, size, root)
}

// parseCheckpoint reads the three lines every checkpoint starts with: origin, tree size in
// decimal without leading zeros, and the standard base64 of a 32-byte root hash.
func parseCheckpoint(text string) (string, uint64, string, error) {
	if !strings.HasSuffix(text, "\n") {
		return "", 0, "", fmt.Errorf("the text does not end in a newline")
	}
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) < 3 {
		return "", 0, "", fmt.Errorf("fewer than three lines")
	}
	origin, sizeText, rootText := lines[0], lines[1], lines[2]
	if origin == "" {
		return "", 0, "", fmt.Errorf("empty origin")
	}
	size, err := strconv.ParseUint(sizeText, 10, 64)
	if err != nil || (len(sizeText) > 1 && sizeText[0] == '0') || strings.HasPrefix(sizeText, "+") {
		return "", 0, "", fmt.Errorf("tree size %q is not a decimal number", sizeText)
	}
	root, err := base64.StdEncoding.DecodeString(rootText)
	if err != nil || len(root) != 32 {
		return "", 0, "", fmt.Errorf("root hash %q is not the base64 of 32 bytes", rootText)
	}
	return origin, size, rootText, nil
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}
