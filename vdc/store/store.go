// Package store is the vDC's PostgreSQL layer (pgx/pgxpool): the node registry with
// its atomic registration upsert, heartbeats, liveness phases, node history, join
// tokens and the VM / storage-pool inventory.
//
// Every liveness decision uses PostgreSQL's clock (now()), never the vDC's. Secrets
// (node secrets, join tokens) are stored as SHA-256 digests: they are 256-bit random
// values, so a fast unsalted hash is enough (nothing to brute-force), and digests are
// compared in constant time in Go.
package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/quantix/quantix"

	"github.com/quantix/quantix/vdc/migrations"
)

// Sentinel errors callers branch on.
var (
	ErrNotFound     = errors.New("not found")
	ErrUnauthorized = errors.New("unauthorized")
)

// TakeoverError refuses a registration that would take over another machine's
// hostname (docs/design.md §4 rule 4).
type TakeoverError struct {
	NodeID   string
	Hostname string
}

func (e *TakeoverError) Error() string {
	return fmt.Sprintf("hostname %s is registered to node %s on another machine (different machine_id and node_secret); "+
		"delete node %s first (DELETE /api/v1/nodes/%s) if this machine replaces it", e.Hostname, e.NodeID, e.NodeID, e.NodeID)
}

// Config configures Open.
type Config struct {
	DatabaseURL string
	MaxConns    int32 // pool size; 0 means 16
	// Timeout bounds connecting and unacknowledged writes to the server
	// (DefaultDatabaseTimeout when 0).
	Timeout time.Duration
	// StaticJoinTokens are accepted without limit (labs, tests: qx-vdc --join-token).
	StaticJoinTokens []string
}

// Store is the vDC's database.
type Store struct {
	pool         *pgxpool.Pool
	log          *slog.Logger
	staticTokens [][32]byte
	// cluster is the cluster state as SyncCluster last read it.
	cluster atomic.Pointer[ClusterState]
	// timeout is Config.Timeout: the batcher's deadline for one statement.
	timeout time.Duration
	// lastReset is when Unavailable last reset the pool (unix nanoseconds).
	lastReset atomic.Int64

	// secrets caches node id -> secret digest for heartbeat authentication (one
	// query per node per process instead of one per heartbeat). Registration and
	// deletion keep it current; a stale entry is re-read before refusing.
	secrets sync.Map
	// osHashes caches node id -> os_hash as the database last returned it: a
	// heartbeat whose NodeOS has that hash sends the hash alone.
	osHashes sync.Map
}

// Open connects to PostgreSQL. The URL must carry a password: the vDC never relies
// on trust authentication.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*Store, error) {
	pc, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("database_url: %w", err)
	}
	if pc.ConnConfig.Password == "" {
		return nil, fmt.Errorf("database_url: no password: the vDC connects with password (scram-sha-256) authentication only")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultDatabaseTimeout
	}
	pc.ConnConfig.ConnectTimeout = cfg.Timeout
	pc.ConnConfig.DialFunc = dialer(cfg.Timeout)
	// A statement the server itself cannot finish in time (a lock, a commit
	// waiting for a synchronous standby that is gone) fails instead of hanging
	// the request; Migrate lifts it for its own connection.
	// A vDC frozen or cut off inside a transaction must not hold row locks for
	// the others: the server ends such a transaction after the same time.
	for _, param := range []string{"statement_timeout", "idle_in_transaction_session_timeout"} {
		if _, set := pc.ConnConfig.RuntimeParams[param]; !set {
			pc.ConnConfig.RuntimeParams[param] = strconv.FormatInt(cfg.Timeout.Milliseconds(), 10)
		}
	}
	pc.MaxConns = cfg.MaxConns
	if pc.MaxConns == 0 {
		pc.MaxConns = 16
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", redact(pc), err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{pool: pool, log: log, timeout: cfg.Timeout}
	for _, t := range cfg.StaticJoinTokens {
		s.staticTokens = append(s.staticTokens, sha256.Sum256([]byte(quantix.SecretOfJoinToken(t))))
	}
	return s, nil
}

func redact(pc *pgxpool.Config) string {
	return fmt.Sprintf("postgres://%s@%s:%d/%s", pc.ConnConfig.User, pc.ConnConfig.Host, pc.ConnConfig.Port, pc.ConnConfig.Database)
}

// NewEpoch returns a random epoch (a UUID).
func NewEpoch() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// Close closes the pool.
func (s *Store) Close() { s.pool.Close() }

// Pool exposes the pool (tests and the load command read tables directly).
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Migrate applies the pending embedded migrations.
func (s *Store) Migrate(ctx context.Context) (int, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("migrate: %w", err)
	}
	defer conn.Release()
	// Migrations may take longer than a request's statement (a large table).
	if _, err := conn.Exec(ctx, "SET statement_timeout = 0"); err != nil {
		return 0, fmt.Errorf("migrate: %w", err)
	}
	defer conn.Exec(context.Background(), "RESET statement_timeout")
	return migrations.Up(ctx, conn.Conn(), s.log)
}

// CheckReady says whether the database answers and its schema is the one this
// binary expects (/readyz).
func (s *Store) CheckReady(ctx context.Context) error {
	st, err := migrations.ReadStatus(ctx, s.pool)
	if err != nil {
		return err
	}
	if st.Pending() != 0 {
		return fmt.Errorf("schema version %d, want %d: run qx-vdc migrate up", st.Current, st.Latest)
	}
	return nil
}

// Now is the database clock.
func (s *Store) Now(ctx context.Context) (time.Time, error) {
	var t time.Time
	err := s.pool.QueryRow(ctx, "SELECT now()").Scan(&t)
	return t, err
}

// HashSecret is the digest stored for a node secret, join token or admin token.
func HashSecret(secret string) [32]byte { return sha256.Sum256([]byte(secret)) }

// SameDigest compares two digests in constant time.
func SameDigest(a, b []byte) bool { return subtle.ConstantTimeCompare(a, b) == 1 }

func (s *Store) staticTokenOK(token string) bool {
	h := HashSecret(token)
	ok := false
	for _, st := range s.staticTokens {
		// No early exit: the time taken does not depend on which token matched.
		if SameDigest(h[:], st[:]) {
			ok = true
		}
	}
	return ok
}

func isNoRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }

// NewSecret returns 32 random bytes as hex: join tokens, admin tokens.
func NewSecret() string {
	var b [32]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
