package postgres

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/quantix/quantix"
)

// newPassword returns 32 random bytes as base64url: 43 characters, no quoting needed
// anywhere (TOML, libpq key/value strings, URLs).
func newPassword() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random password: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// scramIterations is PostgreSQL's default scram_iterations.
const scramIterations = 4096

// scramVerifier computes the SCRAM-SHA-256 verifier PostgreSQL stores for password
// (RFC 5802/7677, as libpq's PQencryptPasswordConn does), so the plain password never
// travels to the server or its logs. password must be ASCII (SASLprep is then the
// identity), which newPassword guarantees.
func scramVerifier(password string) (string, error) {
	if !printableASCII(password) {
		return "", errors.New("scram verifier: password must be printable ASCII")
	}
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("scram salt: %w", err)
	}
	return scramVerifierSalt(password, salt, scramIterations)
}

func printableASCII(s string) bool {
	for _, r := range s {
		if r < 0x20 || r > 0x7e {
			return false
		}
	}
	return true
}

func scramVerifierSalt(password string, salt []byte, iter int) (string, error) {
	salted, err := pbkdf2.Key(sha256.New, password, salt, iter, sha256.Size)
	if err != nil {
		return "", fmt.Errorf("scram: %w", err)
	}
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	clientKey := mac(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	serverKey := mac(salted, "Server Key")
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iter, b64(salt), b64(storedKey[:]), b64(serverKey)), nil
}

func quoteIdent(s string) string { return pgx.Identifier{s}.Sanitize() }

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// connConfig is a connection over the unix socket.
func (s *Service) connConfig(user, password, database string) (*pgx.ConnConfig, error) {
	// Key/value DSN values are quoted; the password is set afterwards so it is never
	// parsed. No PG* environment variables are consulted beyond what ParseConfig does
	// for unset keys, and every key that matters is set here.
	dsn := fmt.Sprintf("host='%s' port=%d user='%s' dbname='%s' sslmode=disable connect_timeout=5",
		dsnQuote(s.cfg.SocketDir), s.cfg.Port, dsnQuote(user), dsnQuote(database))
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("connection config: %w", err)
	}
	cfg.Password = password
	cfg.Fallbacks = nil
	return cfg, nil
}

func dsnQuote(s string) string {
	return strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s)
}

// errAuth is wrapped when the server rejects a password.
var errAuth = errors.New("authentication failed")

func isAuthError(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "28P01" || pgErr.Code == "28000")
}

// waitReady connects as the superuser until the server accepts connections, the
// postmaster exits (exited is closed) or StartTimeout passes.
func (s *Service) waitReady(ctx context.Context, superPW string, exited <-chan struct{}) (*pgx.Conn, error) {
	cfg, err := s.connConfig(Superuser, superPW, "postgres")
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(s.cfg.StartTimeout.Duration)
	var last error
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := pgx.ConnectConfig(cctx, cfg)
		cancel()
		if err == nil {
			return conn, nil
		}
		if isAuthError(err) {
			return nil, configErrorf("%w: superuser %s: the password in %s does not match the cluster: delete that file and restart qx-postgres to reset it: %w",
				errAuth, Superuser, s.cfg.SuperuserPasswordFile, err)
		}
		last = err
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("server did not accept connections within %s: %w", s.cfg.StartTimeout.Duration, last)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-exited:
			return nil, fmt.Errorf("postgres exited while starting (last connection error: %v)", last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ensureDatabase makes sure the role quantix can log in with the password kept in
// secrets.toml and owns the database quantix_vdc. It is idempotent: on a first boot
// it creates both, later it repairs what an interrupted boot or a lost secrets.toml
// left behind. Other fields of secrets.toml are kept.
func (s *Service) ensureDatabase(ctx context.Context, su *pgx.Conn) error {
	secrets, err := quantix.LoadVDCSecrets(s.cfg.Secrets)
	if err != nil {
		return configErrorf("%w", err)
	}
	pw := secrets.DatabasePassword
	if !printableASCII(pw) {
		return configErrorf("%s: database_password must be printable ASCII (the appliance writes 43 base64url characters)", s.cfg.Secrets)
	}
	generated := false
	if pw == "" {
		if pw, err = newPassword(); err != nil {
			return err
		}
		// Stored before the role gets it: a crash in between leaves a stored
		// password that the login check below sets on the role next time.
		secrets.DatabasePassword = pw
		if err := quantix.SaveVDCSecrets(s.cfg.Secrets, secrets); err != nil {
			return fmt.Errorf("store database password: %w", err)
		}
		generated = true
	}

	var canLogin bool
	err = su.QueryRow(ctx, "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", Role).Scan(&canLogin)
	roleExists := err == nil
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("look up role %s: %w", Role, err)
	}
	switch {
	case !roleExists:
		if err := s.setRolePassword(ctx, su, "CREATE", pw); err != nil {
			return err
		}
		s.log.Info("created role", "role", Role)
	case generated:
		if err := s.setRolePassword(ctx, su, "ALTER", pw); err != nil {
			return err
		}
		s.log.Warn("secrets.toml had no database_password: gave the existing role a new password and stored it",
			"role", Role, "secrets", s.cfg.Secrets)
	case !canLogin:
		if _, err := su.Exec(ctx, "ALTER ROLE "+quoteIdent(Role)+" LOGIN"); err != nil {
			return fmt.Errorf("alter role %s login: %w", Role, err)
		}
		s.log.Warn("role could not log in: allowed it", "role", Role)
	}

	var owner string
	err = su.QueryRow(ctx, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", Database).Scan(&owner)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		// template0 and C: the cluster's UTF8/C defaults, independent of template1 edits.
		_, err := su.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s OWNER %s ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
			quoteIdent(Database), quoteIdent(Role)))
		if err != nil {
			return fmt.Errorf("create database %s: %w", Database, err)
		}
		s.log.Info("created database", "database", Database, "owner", Role)
	case err != nil:
		return fmt.Errorf("look up database %s: %w", Database, err)
	case owner != Role:
		if _, err := su.Exec(ctx, fmt.Sprintf("ALTER DATABASE %s OWNER TO %s", quoteIdent(Database), quoteIdent(Role))); err != nil {
			return fmt.Errorf("alter database %s owner: %w", Database, err)
		}
		s.log.Warn("database had another owner: changed", "database", Database, "was", owner, "now", Role)
	}

	// Only the owner (and the superuser) may connect; repeated on every boot so an
	// interrupted first boot cannot leave the database open to other roles.
	if _, err := su.Exec(ctx, fmt.Sprintf("REVOKE ALL ON DATABASE %s FROM PUBLIC", quoteIdent(Database))); err != nil {
		return fmt.Errorf("revoke public access to %s: %w", Database, err)
	}

	// The proof that the vDC can connect: log in as it would, with SCRAM.
	err = s.checkLogin(ctx, pw)
	if isAuthError(err) {
		s.log.Warn("the role's password did not match secrets.toml: set it to the stored one",
			"role", Role, "secrets", s.cfg.Secrets)
		if err := s.setRolePassword(ctx, su, "ALTER", pw); err != nil {
			return err
		}
		err = s.checkLogin(ctx, pw)
	}
	if err != nil {
		return fmt.Errorf("log in as %s to %s: %w", Role, Database, err)
	}
	return nil
}

func (s *Service) setRolePassword(ctx context.Context, su *pgx.Conn, verb, pw string) error {
	verifier, err := scramVerifier(pw)
	if err != nil {
		return err
	}
	if _, err := su.Exec(ctx, fmt.Sprintf("%s ROLE %s LOGIN PASSWORD %s", verb, quoteIdent(Role), quoteLiteral(verifier))); err != nil {
		return fmt.Errorf("%s role %s: %w", strings.ToLower(verb), Role, err)
	}
	return nil
}

func (s *Service) checkLogin(ctx context.Context, pw string) error {
	cfg, err := s.connConfig(Role, pw, Database)
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// DatabaseURL is the URL the vDC uses (qx-vdc --database-url), over the unix socket.
func DatabaseURL(socketDir string, port int, password string) string {
	return "postgres://" + Role + ":" + password + "@/" + Database +
		"?host=" + socketDir + "&port=" + strconv.Itoa(port) + "&sslmode=disable"
}
