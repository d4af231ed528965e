package main

// The tiles mode: a log served as C2SP tlog tiles, checked with golang.org/x/mod/sumdb/tlog.
//
//	c2sp-verify tiles VKEY_FILE SOURCE [OLD_CHECKPOINT_FILE]
//
// It verifies SOURCE/checkpoint with the verifier key, then:
//   - recomputes the checkpoint's root from the hash tiles through tlog.TileHashReader and
//     tlog.TreeHash;
//   - rebuilds the whole tree from the leaves of every level-0 tile (tlog.StoredHashesForRecordHash)
//     and checks its root against the checkpoint, and every hash of every higher tile against it.
//     This is needed on top of the TileHashReader: the version Debian packages (and the tlog_tiles
//     crate ported from it) authenticates only as many of the tiles it reads as the tree-hash
//     plan has subtrees, so a forged full tile read after the tiles of that plan can pass it;
//   - reads every entry bundle the tree needs and checks that each entry hashes
//     (tlog.RecordHash: SHA-256(0x00 || entry)) to its leaf in the authenticated level-0 tiles,
//     and that each bundle holds exactly the entries the checkpoint's size calls for. In place
//     of an entry a bundle may hold one of auditgate's two marks (its leaf is still checked as
//     part of the tree): {"prunedBy":S}, an entry removed by retention in the prune recorded by
//     the audit.pruned entry S, and {"oversizedBytes":N}, an entry too long for a bundle. A
//     prune mark is accepted only when S is an audit.pruned entry served in the bundles (so
//     checked against its leaf) and the positions marked with S are exactly the ones its
//     metadata claims: within firstSeq..lastSeq, as many as its count, and hashing to its
//     seqsSha256 (SHA-256 over the sequence numbers as 8-byte big-endian). Marks are judged
//     after every bundle is read, since a record comes after what it pruned. So an entry
//     deleted and passed off as pruned is refused, as auditgate verify refuses it. An oversized
//     mark cannot be checked from the tiles; those positions are listed to be fetched, with
//     their proofs, from the admin API. Anything else, an empty entry included, must hash to
//     its leaf;
//   - proves and checks inclusion (tlog.ProveRecord / tlog.CheckRecord) of a spread of entries,
//     the first and the last among them;
//   - with OLD_CHECKPOINT_FILE (an earlier checkpoint of the same log, verified with the same
//     key), proves and checks that the new tree extends it (tlog.ProveTree / tlog.CheckTree).
//
// It prints "ok ORIGIN SIZE ROOT" and a line per check and exits 0, or prints what failed and
// exits 1; 2 on bad usage or an unreadable key.

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// tileHeight is the height of C2SP tlog tiles: 256 hashes a tile.
const tileHeight = 8

// inclusionSamples is how many entries get an inclusion proof besides the first and the last.
const inclusionSamples = 64

func verifyTiles(args []string) {
	if len(args) != 2 && len(args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: c2sp-verify tiles VKEY_FILE SOURCE [OLD_CHECKPOINT_FILE]")
		os.Exit(2)
	}
	vkey, err := os.ReadFile(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	verifier, err := note.NewVerifier(strings.TrimSpace(string(vkey)))
	if err != nil {
		fail("verifier key: %v", err)
	}
	source := newSource(args[1])
	checkpoint, err := source.read("checkpoint")
	if err != nil {
		fail("checkpoint: %v", err)
	}
	origin, size, root := openCheckpoint(verifier, checkpoint, "checkpoint")
	tree := tlog.Tree{N: int64(size), Hash: root}
	fmt.Printf("ok %s %d %s\n", origin, size, base64.StdEncoding.EncodeToString(root[:]))

	// An earlier checkpoint is compared first: a log rolled back to an older copy, or showing
	// another history of the same size (a split view), is refused as such before any tile is
	// read; the consistency proof comes after the tiles are checked.
	var old *earlierCheckpoint
	if len(args) == 3 {
		text, err := os.ReadFile(args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		oldOrigin, oldSize, oldRoot := openCheckpoint(verifier, text, "old checkpoint")
		if oldOrigin != origin {
			fail("old checkpoint: origin %q is not %q", oldOrigin, origin)
		}
		if oldSize > size {
			fail("consistency: rolled back: the checkpoint's size %d is smaller than the earlier checkpoint's %d", size, oldSize)
		}
		if oldSize == size && oldRoot != root {
			fail("consistency: split view: two checkpoints of size %d with different roots (%v, earlier %v)", size, root, oldRoot)
		}
		old = &earlierCheckpoint{size: oldSize, root: oldRoot}
	}

	hashes := tlog.TileHashReader(tree, source)
	if size > 0 {
		recomputed, err := tlog.TreeHash(tree.N, hashes)
		if err != nil {
			fail("tiles: %v", err)
		}
		if recomputed != root {
			fail("tiles: the tiles fold to root %v, not the checkpoint's %v", recomputed, root)
		}
	}
	leaves := rebuildTree(source, tree)
	fmt.Printf("root recomputed from the hash tiles, and from every leaf; every tile agrees\n")

	bundles := checkBundles(source, leaves, tree.N)
	pruned := judgePrunes(bundles, tree.N)
	fmt.Printf("entries: %d hash to their leaves; %d pruned, %d too long for a bundle\n", bundles.checked, pruned, len(bundles.oversized))
	for _, record := range bundles.recordOrder {
		claim := bundles.records[record]
		fmt.Printf("pruned by entry %d: %d entries in %d..%d, as its record claims\n", record, claim.Count, claim.FirstSeq, claim.LastSeq)
	}
	for _, oversized := range bundles.oversized {
		fmt.Printf("entry %d is %d bytes, too long for a bundle: its leaf is checked; fetch it and its proof from the admin API\n", oversized.seq, oversized.length)
	}

	proved := checkInclusion(hashes, tree)
	fmt.Printf("inclusion proofs: %d checked\n", proved)

	if old != nil {
		proof, err := tlog.ProveTree(tree.N, int64(old.size), hashes)
		if err != nil {
			fail("consistency: %v", err)
		}
		if err := tlog.CheckTree(proof, tree.N, root, int64(old.size), old.root); err != nil {
			fail("consistency: size %d does not extend size %d: %v", size, old.size, err)
		}
		fmt.Printf("consistent: size %d extends size %d\n", size, old.size)
	}
}

// earlierCheckpoint is the size and root of a checkpoint the log must extend.
type earlierCheckpoint struct {
	size uint64
	root tlog.Hash
}

// openCheckpoint verifies a signed checkpoint and returns its origin, size and root.
func openCheckpoint(verifier note.Verifier, message []byte, what string) (string, uint64, tlog.Hash) {
	opened, err := note.Open(message, note.VerifierList(verifier))
	if err != nil {
		fail("%s: %v", what, err)
	}
	origin, size, rootText, err := parseCheckpoint(opened.Text)
	if err != nil {
		fail("%s: %v", what, err)
	}
	if origin != verifier.Name() {
		fail("%s: origin %q is not the key name %q", what, origin, verifier.Name())
	}
	var root tlog.Hash
	decoded, _ := base64.StdEncoding.DecodeString(rootText)
	copy(root[:], decoded)
	return origin, size, root
}

// rebuildTree recomputes the tree from the leaf hashes of every level-0 tile, checks its root
// against the checkpoint and every hash of every higher tile against it, and returns a reader
// of its (now authenticated) hashes.
func rebuildTree(source *source, tree tlog.Tree) tlog.HashReader {
	var stored []tlog.Hash
	memory := tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		hashes := make([]tlog.Hash, len(indexes))
		for i, index := range indexes {
			if index < 0 || index >= int64(len(stored)) {
				return nil, fmt.Errorf("hash %d is not in the tree", index)
			}
			hashes[i] = stored[index]
		}
		return hashes, nil
	})
	for start := int64(0); start < tree.N; start += 1 << tileHeight {
		tile := tileOfLevel(0, start>>tileHeight, tree.N)
		data, err := source.ReadTiles([]tlog.Tile{tile})
		if err != nil {
			fail("tiles: %v", err)
		}
		for i := 0; i < tile.W; i++ {
			var leaf tlog.Hash
			copy(leaf[:], data[0][i*tlog.HashSize:])
			more, err := tlog.StoredHashesForRecordHash(start+int64(i), leaf, memory)
			if err != nil {
				fail("tiles: %v", err)
			}
			stored = append(stored, more...)
		}
	}
	if tree.N > 0 {
		root, err := tlog.TreeHash(tree.N, memory)
		if err != nil {
			fail("tiles: %v", err)
		}
		if root != tree.Hash {
			fail("tiles: the leaves of the level-0 tiles fold to root %v, not the checkpoint's %v", root, tree.Hash)
		}
	}
	for level := 1; tree.N>>(uint(level)*tileHeight) > 0; level++ {
		width := tree.N >> (uint(level) * tileHeight)
		for n := int64(0); n<<tileHeight < width; n++ {
			tile := tileOfLevel(level, n, width)
			data, err := source.ReadTiles([]tlog.Tile{tile})
			if err != nil {
				fail("tiles: %v", err)
			}
			for i := 0; i < tile.W; i++ {
				want := stored[tlog.StoredHashIndex(level*tileHeight, n<<tileHeight+int64(i))]
				if string(data[0][i*tlog.HashSize:(i+1)*tlog.HashSize]) != string(want[:]) {
					fail("tiles: %s disagrees with the checkpoint at hash %d", tilePath(fmt.Sprint(level), n, tile.W), i)
				}
			}
		}
	}
	return memory
}

// tileOfLevel is tile n of a level holding `hashes` hashes: full, or partial at the right edge.
func tileOfLevel(level int, n int64, hashes int64) tlog.Tile {
	width := hashes - n<<tileHeight
	if width > 1<<tileHeight {
		width = 1 << tileHeight
	}
	return tlog.Tile{H: tileHeight, L: level, N: n, W: int(width)}
}

// pruneClaim is what an audit.pruned entry's metadata says it pruned.
type pruneClaim struct {
	FirstSeq   uint64 `json:"firstSeq"`
	LastSeq    uint64 `json:"lastSeq"`
	Count      uint64 `json:"count"`
	SeqsSha256 string `json:"seqsSha256"`
}

// oversizedEntry is a position whose bundle marks its entry as too long to hold.
type oversizedEntry struct {
	seq    int64
	length uint64
}

// bundleFindings is what the bundles of a tree hold besides entries that hash to their leaves.
type bundleFindings struct {
	checked int64
	// records are the audit.pruned entries served (and checked) in the bundles, by sequence
	// number; recordOrder lists them ascending.
	records     map[int64]pruneClaim
	recordOrder []int64
	// marks are the positions (sequence numbers, ascending) marked as pruned, by the record
	// each names.
	marks     map[int64][]int64
	oversized []oversizedEntry
}

// The two marks, in the one spelling auditgate writes (a decimal without leading zeros).
var (
	prunedMark    = regexp.MustCompile(`^\{"prunedBy":(0|[1-9][0-9]*)\}$`)
	oversizedMark = regexp.MustCompile(`^\{"oversizedBytes":(0|[1-9][0-9]*)\}$`)
)

// checkBundles reads every entry bundle of a tree of n entries and checks each entry against
// its authenticated leaf hash, collecting the prune records and the marks for judgePrunes.
func checkBundles(source *source, hashes tlog.HashReader, n int64) *bundleFindings {
	found := &bundleFindings{records: map[int64]pruneClaim{}, marks: map[int64][]int64{}}
	for start := int64(0); start < n; start += 1 << tileHeight {
		width := n - start
		if width > 1<<tileHeight {
			width = 1 << tileHeight
		}
		path := tilePath("entries", start>>tileHeight, int(width))
		bundle, err := source.read(path)
		if err != nil {
			fail("entries: %v", err)
		}
		entries, err := splitBundle(bundle)
		if err != nil {
			fail("entries: %s: %v", path, err)
		}
		if int64(len(entries)) != width {
			fail("entries: %s holds %d entries; the checkpoint's size needs %d", path, len(entries), width)
		}
		indexes := make([]int64, width)
		for i := range indexes {
			indexes[i] = tlog.StoredHashIndex(0, start+int64(i))
		}
		leaves, err := hashes.ReadHashes(indexes)
		if err != nil {
			fail("entries: the level-0 tiles of %s: %v", path, err)
		}
		for i, entry := range entries {
			seq := start + int64(i) + 1
			if tlog.RecordHash(entry) == leaves[i] {
				found.checked++
				notePruneRecord(found, seq, entry, path)
				continue
			}
			if match := prunedMark.FindSubmatch(entry); match != nil {
				record, err := strconv.ParseInt(string(match[1]), 10, 64)
				if err != nil {
					fail("entries: entry %d in %s is marked as pruned by %s, which is no sequence number", seq, path, match[1])
				}
				found.marks[record] = append(found.marks[record], seq)
				continue
			}
			if match := oversizedMark.FindSubmatch(entry); match != nil {
				length, err := strconv.ParseUint(string(match[1]), 10, 64)
				if err != nil || length <= 65535 {
					fail("entries: entry %d in %s is marked as %s bytes long, which a bundle could hold", seq, path, match[1])
				}
				found.oversized = append(found.oversized, oversizedEntry{seq: seq, length: length})
				continue
			}
			fail("entries: entry %d (sequence number %d) in %s does not hash to its leaf, and is no mark", seq-1, seq, path)
		}
	}
	return found
}

// notePruneRecord keeps the claim of an authenticated entry at sequence number seq if it is an
// audit.pruned entry; one that says it is another position, or whose claim cannot be read,
// fails the check, since marks naming it could not be judged.
func notePruneRecord(found *bundleFindings, seq int64, entry []byte, path string) {
	var record struct {
		Action   string          `json:"action"`
		Seq      int64           `json:"seq"`
		Metadata json.RawMessage `json:"metadata"`
	}
	if err := json.Unmarshal(entry, &record); err != nil {
		fail("entries: entry %d in %s is not a JSON object: %v", seq, path, err)
	}
	if record.Action != "audit.pruned" {
		return
	}
	if record.Seq != seq {
		fail("entries: the audit.pruned entry at %d in %s says it is entry %d", seq, path, record.Seq)
	}
	var claim pruneClaim
	if err := json.Unmarshal(record.Metadata, &claim); err != nil {
		fail("entries: prune record %d in %s: its metadata is not a claim: %v", seq, path, err)
	}
	found.records[seq] = claim
	found.recordOrder = append(found.recordOrder, seq)
}

// judgePrunes accepts the prune marks of a tree of n entries only if each names an audit.pruned
// entry of the tree whose claim the marked positions match exactly, and every such record's
// positions are marked; it returns how many positions are pruned.
func judgePrunes(found *bundleFindings, n int64) int64 {
	var named []int64
	for record := range found.marks {
		named = append(named, record)
	}
	sort.Slice(named, func(i, j int) bool { return named[i] < named[j] })
	var pruned int64
	for _, record := range named {
		marked := found.marks[record]
		pruned += int64(len(marked))
		if _, ok := found.records[record]; ok {
			continue
		}
		if record > n {
			fail("pruned: entry %d is marked as pruned by entry %d, which this checkpoint (size %d) does not cover yet: fetch a newer checkpoint", marked[0], record, n)
		}
		fail("pruned: entry %d is marked as pruned by entry %d, which is not an audit.pruned entry", marked[0], record)
	}
	for _, record := range found.recordOrder {
		claim := found.records[record]
		marked := found.marks[record]
		for _, seq := range marked {
			if uint64(seq) < claim.FirstSeq || uint64(seq) > claim.LastSeq || seq >= record {
				fail("pruned: entry %d is marked as pruned by entry %d, whose record claims %d..%d", seq, record, claim.FirstSeq, claim.LastSeq)
			}
		}
		digest := sha256.New()
		for _, seq := range marked {
			var number [8]byte
			binary.BigEndian.PutUint64(number[:], uint64(seq))
			digest.Write(number[:])
		}
		if len(marked) == 0 || uint64(len(marked)) != claim.Count || !strings.EqualFold(hex.EncodeToString(digest.Sum(nil)), claim.SeqsSha256) {
			fail("pruned: prune record %d claims %d entries in %d..%d, but %d positions are marked as pruned by it (count or seqsSha256 differ): entries were deleted and passed off as pruned, or marks were changed", record, claim.Count, claim.FirstSeq, claim.LastSeq, len(marked))
		}
	}
	return pruned
}

// checkInclusion proves and checks the inclusion of the first, the last and a spread of
// entries between them, from the authenticated tiles.
func checkInclusion(hashes tlog.HashReader, tree tlog.Tree) int {
	if tree.N == 0 {
		return 0
	}
	chosen := map[int64]bool{0: true, tree.N - 1: true}
	for i := int64(1); i <= inclusionSamples; i++ {
		chosen[tree.N*i/(inclusionSamples+1)] = true
	}
	for index := range chosen {
		leaf, err := hashes.ReadHashes([]int64{tlog.StoredHashIndex(0, index)})
		if err != nil {
			fail("inclusion: %v", err)
		}
		proof, err := tlog.ProveRecord(tree.N, index, hashes)
		if err != nil {
			fail("inclusion of entry %d: %v", index, err)
		}
		if err := tlog.CheckRecord(proof, tree.N, tree.Hash, index, leaf[0]); err != nil {
			fail("inclusion of entry %d: %v", index, err)
		}
	}
	return len(chosen)
}

// splitBundle splits an entry bundle into its big-endian uint16 length-prefixed entries.
func splitBundle(bundle []byte) ([][]byte, error) {
	var entries [][]byte
	for len(bundle) > 0 {
		if len(bundle) < 2 {
			return nil, fmt.Errorf("a length is cut short")
		}
		length := int(binary.BigEndian.Uint16(bundle))
		bundle = bundle[2:]
		if len(bundle) < length {
			return nil, fmt.Errorf("an entry is cut short (%d of %d bytes)", len(bundle), length)
		}
		entries = append(entries, bundle[:length])
		bundle = bundle[length:]
	}
	return entries, nil
}

// tilePath is the C2SP path of a tile: tile/<level>/<N> or tile/entries/<N>, with .p/<W> for a
// partial one. (tlog.Tile.Path is the Go checksum database's form, with the height in it.)
func tilePath(level string, n int64, width int) string {
	index := fmt.Sprintf("%03d", n%1000)
	for n >= 1000 {
		n /= 1000
		index = fmt.Sprintf("x%03d/%s", n%1000, index)
	}
	path := "tile/" + level + "/" + index
	if width != 1<<tileHeight {
		path += fmt.Sprintf(".p/%d", width)
	}
	return path
}

// source reads a log's files from a URL prefix or a directory; it is the tlog.TileReader the
// hash reader authenticates. Tiles are kept once read, since the hash reader asks for the tiles
// on the path to the root again with every read.
type source struct {
	base   string
	remote bool
	token  string
	client *http.Client
	mu     sync.Mutex
	cache  map[string][]byte
}

func newSource(base string) *source {
	remote := strings.HasPrefix(base, "http://") || strings.HasPrefix(base, "https://")
	return &source{
		base:   strings.TrimSuffix(base, "/"),
		remote: remote,
		token:  os.Getenv("AUDITGATE_TOKEN"),
		client: &http.Client{Timeout: 30 * time.Second},
		cache:  map[string][]byte{},
	}
}

func (s *source) read(path string) ([]byte, error) {
	if !s.remote {
		return os.ReadFile(filepath.Join(s.base, filepath.FromSlash(path)))
	}
	request, err := http.NewRequest("GET", s.base+"/"+path, nil)
	if err != nil {
		return nil, err
	}
	if s.token != "" {
		request.Header.Set("Authorization", "Bearer "+s.token)
	}
	response, err := s.client.Do(request)
	if err != nil {
		return nil, err
	}
	defer response.Body.Close()
	body, err := io.ReadAll(io.LimitReader(response.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if response.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", request.URL, response.Status)
	}
	return body, nil
}

func (s *source) Height() int { return tileHeight }

func (s *source) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	data := make([][]byte, len(tiles))
	for i, tile := range tiles {
		path := tilePath(fmt.Sprint(tile.L), tile.N, tile.W)
		s.mu.Lock()
		cached, ok := s.cache[path]
		s.mu.Unlock()
		if !ok {
			read, err := s.read(path)
			if err != nil {
				return nil, err
			}
			if len(read) != tile.W*tlog.HashSize {
				return nil, fmt.Errorf("%s is %d bytes, not %d hashes", path, len(read), tile.W)
			}
			cached = read
			s.mu.Lock()
			s.cache[path] = cached
			s.mu.Unlock()
		}
		data[i] = cached
	}
	return data, nil
}

func (s *source) SaveTiles(tiles []tlog.Tile, data [][]byte) {}
