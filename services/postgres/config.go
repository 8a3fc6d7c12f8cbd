package postgres

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"strings"
	"time"

	"github.com/quantix/quantix"
)

// configErrorf is an error a restart cannot fix (quantix.ErrConfig: a bad
// configuration, a data folder from another PostgreSQL major version, a disk holding
// foreign data), its message as formatted: qx-postgres exits quantix.ExitConfig.
func configErrorf(format string, args ...any) error {
	return quantix.ConfigError(fmt.Errorf(format, args...))
}

// DefaultConfigFile is the optional configuration file on QUANTIX-CFG.
const DefaultConfigFile = "/quantix/vdc/postgres.toml"

// Defaults of the appliance. The images ship PostgreSQL 15 at DefaultBinDir.
const (
	DefaultBinDir                = "/usr/lib/postgresql/15/bin"
	DefaultDataDir               = quantix.DataDir + "/postgresql"
	DefaultSuperuserPasswordFile = quantix.DataDir + "/postgresql-superuser.password"
	DefaultSocketDir             = "/var/run/postgresql"
	DefaultPort                  = 5432
	DefaultOSUser                = "postgres"
	// Role and Database are what the vDC connects as and to.
	Role     = "quantix"
	Database = "quantix_vdc"
	// Superuser is the bootstrap superuser initdb creates.
	Superuser = "postgres"
)

// Config is the service configuration: DefaultConfig, then postgres.toml, then flags.
type Config struct {
	// BinDir holds postgres, initdb and pg_controldata.
	BinDir string `toml:"bin_dir"`
	// DataRoot is where QUANTIX-DATA is mounted. When it is not the mount point of a
	// persistent device, the database lives in RAM and a warning marker says so.
	DataRoot string `toml:"data_root"`
	// DataDir is the cluster folder (PGDATA); default data_root/postgresql.
	DataDir string `toml:"data_dir"`
	// SocketDir is the unix socket folder (unix_socket_directories).
	SocketDir string `toml:"socket_dir"`
	// Port is the TCP port on 127.0.0.1 and ::1 (and the socket's name).
	Port int `toml:"port"`
	// Secrets is secrets.toml, where the quantix role's password is kept.
	Secrets string `toml:"secrets"`
	// SuperuserPasswordFile holds the password of the superuser "postgres" (0600,
	// root). It sits beside the cluster on QUANTIX-DATA so the two travel together;
	// default data_root/postgresql-superuser.password.
	SuperuserPasswordFile string `toml:"superuser_password_file"`
	// OSUser is the system user the server runs as (looked up in /etc/passwd).
	OSUser string `toml:"os_user"`
	// StartTimeout bounds the wait for the server to accept connections (crash
	// recovery included).
	StartTimeout quantix.Duration `toml:"start_timeout"`
	// StopTimeout bounds a fast shutdown; past it the server is stopped immediately
	// (and the next start runs crash recovery).
	StopTimeout quantix.Duration `toml:"stop_timeout"`
	// DiskConfig says how QUANTIX-DATA is found and whether a blank device may be
	// formatted; its keys (data_device, format_blank_data, mkfs) are top-level keys.
	DiskConfig
	// Trial is the boot's A/B trial state (set by qx-postgres from the kernel
	// command line and the image configuration, not from the file).
	Trial Trial `toml:"-"`

	// MountInfo is read to decide whether DataRoot is persistent (a test seam for
	// hardware; default /proc/self/mountinfo).
	MountInfo string `toml:"-"`
	// Stdout receives the console markers, Stderr the server's own log.
	Stdout io.Writer `toml:"-"`
	Stderr io.Writer `toml:"-"`
}

// DiskConfig says where QUANTIX-DATA may come from.
type DiskConfig struct {
	// Device is a block device explicitly given for QUANTIX-DATA (e.g. "/dev/vdb").
	// It is formatted only when it is blank and FormatBlank is set.
	Device string `toml:"data_device"`
	// FormatBlank allows formatting Device as ext4 labelled QUANTIX-DATA when it is
	// entirely blank (zeros at its start and end).
	FormatBlank bool `toml:"format_blank_data"`
	// SysBlock and DevDir are where block devices are listed and opened (test seams
	// for hardware; defaults /sys/class/block and /dev).
	SysBlock string `toml:"-"`
	DevDir   string `toml:"-"`
	// Mkfs is the mkfs.ext4 program (default: found in PATH, /sbin, /usr/sbin).
	Mkfs string `toml:"mkfs"`
	// Mount lets the service mount QUANTIX-DATA at data_root itself when init has
	// not (the appliance case: a blank disk is formatted on first boot, after init
	// scanned for labels). Off, an unmounted QUANTIX-DATA is a configuration error.
	Mount bool `toml:"mount_data"`
}

// DefaultConfig returns the appliance defaults.
func DefaultConfig() Config {
	return Config{
		BinDir:       DefaultBinDir,
		DataRoot:     quantix.DataDir,
		SocketDir:    DefaultSocketDir,
		Port:         DefaultPort,
		Secrets:      quantix.VDCSecrets,
		OSUser:       DefaultOSUser,
		StartTimeout: quantix.Duration{Duration: 5 * time.Minute},
		StopTimeout:  quantix.Duration{Duration: 30 * time.Second},
		DiskConfig: DiskConfig{
			SysBlock: "/sys/class/block",
			DevDir:   "/dev",
		},
		MountInfo: "/proc/self/mountinfo",
	}
}

// LoadConfigFile decodes path strictly over cfg. A missing file is not an error when
// optional is set (the appliance runs on its defaults).
func LoadConfigFile(path string, cfg Config, optional bool) (Config, error) {
	err := quantix.DecodeTOMLFile(path, &cfg)
	if optional && errors.Is(err, fs.ErrNotExist) {
		return cfg, nil
	}
	if err != nil {
		return cfg, configErrorf("%w", err)
	}
	return cfg, nil
}

// withDerived fills the paths that default to places under DataRoot.
func (c Config) withDerived() Config {
	if c.DataDir == "" && c.DataRoot != "" {
		c.DataDir = filepath.Join(c.DataRoot, "postgresql")
	}
	if c.SuperuserPasswordFile == "" && c.DataRoot != "" {
		c.SuperuserPasswordFile = filepath.Join(c.DataRoot, "postgresql-superuser.password")
	}
	return c
}

// Validate checks the configuration; each error names the key.
func (c Config) Validate() error {
	c = c.withDerived()
	abs := []struct{ key, val string }{
		{"bin_dir", c.BinDir}, {"data_root", c.DataRoot}, {"data_dir", c.DataDir},
		{"socket_dir", c.SocketDir}, {"secrets", c.Secrets},
		{"superuser_password_file", c.SuperuserPasswordFile},
	}
	for _, a := range abs {
		if a.val == "" || !filepath.IsAbs(a.val) {
			return configErrorf("%s must be an absolute path, got %q", a.key, a.val)
		}
	}
	if c.Device != "" && !filepath.IsAbs(c.Device) {
		return configErrorf("data_device must be an absolute path, got %q", c.Device)
	}
	if filepath.Clean(c.DataDir) == filepath.Clean(c.DataRoot) {
		return configErrorf("data_dir %s must be a folder below data_root, not data_root itself (a mounted filesystem holds lost+found)", c.DataDir)
	}
	if strings.HasPrefix(filepath.Clean(c.SuperuserPasswordFile)+"/", filepath.Clean(c.DataDir)+"/") {
		return configErrorf("superuser_password_file %s must not be inside data_dir %s", c.SuperuserPasswordFile, c.DataDir)
	}
	if c.Port < 1 || c.Port > 65535 {
		return configErrorf("port %d is not in 1..65535", c.Port)
	}
	if c.OSUser == "" || c.OSUser == "root" {
		return configErrorf("os_user %q: PostgreSQL refuses to run as root; name an unprivileged user", c.OSUser)
	}
	if c.StartTimeout.Duration <= 0 || c.StopTimeout.Duration <= 0 {
		return configErrorf("start_timeout and stop_timeout must be positive")
	}
	// The socket path (dir + "/.s.PGSQL.<port>") must fit sun_path (108 bytes).
	if n := len(filepath.Join(c.SocketDir, fmt.Sprintf(".s.PGSQL.%d", c.Port))); n > 107 {
		return configErrorf("socket_dir %s is too long for a unix socket path (%d bytes, at most 107)", c.SocketDir, n)
	}
	return nil
}
