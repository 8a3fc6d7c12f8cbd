package api

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/upgrade"
	"github.com/quantix/quantix/vdc/store"
)

// This file serves the upgrades of docs/design.md §16 delivered by the vDC: the
// release library (an upload is verified before anything is kept), the files of a
// release for nodes, and rolling upgrade jobs (the store's driver runs them).
//
// An upload is multipart/form-data, one part per file of the bundle folder (the
// part's filename is the file's name). Multipart rather than one tar stream: curl
// sends a bundle with four -F arguments and no tar step, a browser form can send
// it too, and mime/multipart reads it part by part, so each file streams to disk
// as it arrives.

// bundleFile says whether name is one of a bundle's four files.
func bundleFile(name string) bool {
	return name == quantix.BundleSums || name == quantix.BundleSignature ||
		strings.HasSuffix(name, ".iso") || strings.HasSuffix(name, ".manifest.json")
}

// uploadRelease streams a bundle into a fresh folder under data_dir, verifies it
// against the vDC's trusted keys and keeps it only if it passes.
func (a *API) uploadRelease(w http.ResponseWriter, r *http.Request) {
	if err := checkParams(r.URL.Query()); err != nil {
		a.fail(w, r, err)
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "multipart/form-data" {
		a.fail(w, r, badRequest("Content-Type %q: send the bundle as multipart/form-data, one part per file "+
			"(curl -F f=@quantix-os.iso -F f=@quantix-os.manifest.json -F f=@SHA256SUMS -F f=@SHA256SUMS.sig)", r.Header.Get("Content-Type")))
		return
	}
	if r.ContentLength > a.cfg.MaxImageBytes {
		a.fail(w, r, a.tooBig(r.ContentLength))
		return
	}
	if err := liftDeadlines(w); err != nil {
		a.fail(w, r, fmt.Errorf("release upload: %w", err))
		return
	}
	rel := quantix.Release{ID: store.NewEpoch()}
	root := filepath.Join(a.cfg.DataDir, "releases")
	if err := os.MkdirAll(root, 0o700); err != nil {
		a.fail(w, r, fmt.Errorf("release upload: %w", err))
		return
	}
	tmp := filepath.Join(root, ".upload-"+rel.ID)
	final := filepath.Join(a.cfg.DataDir, store.ReleaseDir(rel.ID))
	err := a.receiveBundle(w, r, tmp, &rel)
	if err == nil {
		err = a.verifyBundle(tmp, &rel)
	}
	var known *quantix.Release
	if err == nil {
		known, err = a.knownRelease(r, rel)
	}
	if err == nil && known != nil {
		// Uploaded through another vDC of this database: keep the files here too.
		final = filepath.Join(a.cfg.DataDir, store.ReleaseDir(known.ID))
	}
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		os.RemoveAll(tmp)
		a.fail(w, r, err)
		return
	}
	if known != nil {
		a.log.Info("release files stored on this vDC too", "id", known.ID, "image", known.Image, "version", known.Version)
		writeJSON(w, http.StatusOK, known)
		return
	}
	stored, err := a.cfg.Store.AddRelease(r.Context(), rel)
	if err != nil {
		os.RemoveAll(final)
		a.fail(w, r, err)
		return
	}
	a.log.Info("release uploaded", "id", stored.ID, "image", stored.Image, "version", stored.Version, "signed_by", stored.SignedBy)
	writeJSON(w, http.StatusCreated, stored)
}

// knownRelease returns the stored release of rel's image and version when this
// vDC lacks its files (uploaded through another vDC, each has its own data_dir)
// and rel is the same bundle; nil when there is none. The same release with its
// files here, or another bundle of that version, is a conflict.
func (a *API) knownRelease(r *http.Request, rel quantix.Release) (*quantix.Release, error) {
	old, err := a.cfg.Store.ReleaseOf(r.Context(), rel.Image, rel.Version)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	sums := map[string]string{}
	for _, f := range old.Files {
		sums[f.Name] = f.SHA256
	}
	for _, f := range rel.Files {
		if sums[f.Name] != f.SHA256 {
			return nil, &httpError{http.StatusConflict, fmt.Sprintf("release %s %s (%s) is stored with other files (%s differs): delete it first to replace it",
				old.Image, old.Version, old.ID, f.Name)}
		}
	}
	if _, err := os.Stat(filepath.Join(a.cfg.DataDir, store.ReleaseDir(old.ID))); err == nil {
		return nil, &httpError{http.StatusConflict, fmt.Sprintf("release %s %s is uploaded already (%s)", old.Image, old.Version, old.ID)}
	}
	return &old, nil
}

// receiveBundle writes each part into dir (synced), recording name, size and sha256.
func (a *API) receiveBundle(w http.ResponseWriter, r *http.Request, dir string, rel *quantix.Release) error {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("release %s: %w", rel.ID, err)
	}
	r.Body = http.MaxBytesReader(w, r.Body, a.cfg.MaxImageBytes)
	mr, err := r.MultipartReader()
	if err != nil {
		return badRequest("release upload: %v", err)
	}
	var total int64
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return a.tooBig(total + 1)
		}
		if err != nil {
			return badRequest("release upload broke off after %d bytes: %v", total, err)
		}
		name := p.FileName()
		switch {
		case name == "":
			return badRequest("part %q has no filename: send each file of the bundle as a file part", p.FormName())
		case name != filepath.Base(name) || strings.ContainsAny(name, `/\`) || !bundleFile(name):
			return badRequest("file %q is not part of a release bundle (want <image>.iso, <image>.manifest.json, %s and %s)",
				name, quantix.BundleSums, quantix.BundleSignature)
		}
		for _, f := range rel.Files {
			if f.Name == name {
				return badRequest("file %s is sent twice", name)
			}
		}
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("release %s: %w", rel.ID, err)
		}
		h := sha256.New()
		n, err := io.Copy(io.MultiWriter(f, h), p)
		total += n
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		switch {
		case errors.As(err, &mbe):
			return a.tooBig(total + 1)
		case err != nil:
			return badRequest("release upload broke off in %s after %d bytes: %v", name, n, err)
		}
		rel.Files = append(rel.Files, quantix.ReleaseFile{Name: name, SizeBytes: n, SHA256: hex.EncodeToString(h.Sum(nil))})
	}
	if len(rel.Files) != 4 {
		names := make([]string, len(rel.Files))
		for i, f := range rel.Files {
			names[i] = f.Name
		}
		return badRequest("release upload holds %d files (%s): a bundle is <image>.iso, <image>.manifest.json, %s and %s",
			len(rel.Files), strings.Join(names, ", "), quantix.BundleSums, quantix.BundleSignature)
	}
	return nil
}

// trustedKeys reads the keys of trusted_keys_files; a file that does not exist
// adds none (the site's own keys are optional).
func (a *API) trustedKeys() ([]quantix.PublicKey, error) {
	var keys []quantix.PublicKey
	for _, p := range a.cfg.TrustedKeysFiles {
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("trusted release keys: %w", err)
		}
		ks, err := quantix.ParsePublicKeys(b)
		if err != nil {
			return nil, fmt.Errorf("trusted release keys %s: %w", p, err)
		}
		keys = append(keys, ks...)
	}
	return keys, nil
}

// verifyBundle checks the received folder with upgrade.Verify, for the image its
// manifest names (a vDC keeps bundles of both images), and fills in rel.
func (a *API) verifyBundle(dir string, rel *quantix.Release) error {
	keys, err := a.trustedKeys()
	if err != nil {
		return err
	}
	// Verify checks the image against the signed manifest; it is read here only
	// to pick the rules (an unreadable one fails Verify as damaged).
	image := quantix.ImageQuantixOS
	for _, f := range rel.Files {
		if strings.HasSuffix(f.Name, ".manifest.json") {
			var man struct {
				Image string `json:"image"`
			}
			if b, err := os.ReadFile(filepath.Join(dir, f.Name)); err == nil && json.Unmarshal(b, &man) == nil && man.Image != "" {
				image = man.Image
			}
		}
	}
	if image != quantix.ImageQuantixOS && image != quantix.ImageQvDC {
		return unprocessable("release refused: bundle is for image %q, want %s or %s", image, quantix.ImageQuantixOS, quantix.ImageQvDC)
	}
	// Force: the vDC keeps any version; the rules of a rolling upgrade judge it
	// against the nodes, and each node's init against itself.
	b, err := upgrade.Verify(dir, keys, upgrade.Rules{Image: image, Force: true})
	if err != nil {
		return unprocessable("release refused: %v", strings.Replace(err.Error(), "verify bundle "+dir+": ", "", 1))
	}
	if _, err := upgrade.CompareVersions(b.Version, b.Version); err != nil {
		return unprocessable("release refused: %v", err)
	}
	rel.Image, rel.Version, rel.SignedBy = b.Image, b.Version, b.SignedBy
	return nil
}

func unprocessable(format string, args ...any) error {
	return &httpError{http.StatusUnprocessableEntity, fmt.Sprintf(format, args...)}
}

// answer writes v as JSON with code, or fails the request with err.
func answer[T any](a *API, w http.ResponseWriter, r *http.Request, code int, v T, err error) {
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, code, v)
}

func (a *API) listReleases(w http.ResponseWriter, r *http.Request) {
	rs, err := a.cfg.Store.ListReleases(r.Context())
	answer(a, w, r, http.StatusOK, quantix.ReleaseList{Releases: rs}, err)
}

func (a *API) getRelease(w http.ResponseWriter, r *http.Request) {
	rel, err := a.cfg.Store.GetRelease(r.Context(), r.PathValue("ref"))
	answer(a, w, r, http.StatusOK, rel, err)
}

func (a *API) deleteRelease(w http.ResponseWriter, r *http.Request) {
	rel, err := a.cfg.Store.DeleteRelease(r.Context(), r.PathValue("ref"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if err := os.RemoveAll(filepath.Join(a.cfg.DataDir, store.ReleaseDir(rel.ID))); err != nil {
		a.log.Warn("release deleted, its files stay", "id", rel.ID, "err", err)
	}
	a.log.Info("release deleted", "id", rel.ID, "image", rel.Image, "version", rel.Version)
	w.WriteHeader(http.StatusNoContent)
}

// nodeRelease serves one file of a release to a node. Any registered node may
// fetch any release: bundles are signed, public artifacts.
func (a *API) nodeRelease(w http.ResponseWriter, r *http.Request) {
	if _, _, err := a.nodeAuth(r); err != nil {
		a.fail(w, r, err)
		return
	}
	id := r.PathValue("release")
	if !IsUUID(id) {
		a.fail(w, r, badRequest("release %q in the path is not a UUID", id))
		return
	}
	rel, err := a.cfg.Store.GetRelease(r.Context(), id)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	name := r.PathValue("name")
	for _, f := range rel.Files {
		if f.Name != name {
			continue
		}
		path := filepath.Join(a.cfg.DataDir, store.ReleaseDir(rel.ID), f.Name)
		if err := filesHere(w, rel, path); err != nil {
			a.fail(w, r, err)
			return
		}
		a.serveFile(w, r, path, "release "+rel.ID, f.SHA256, rel.CreatedAt)
		return
	}
	a.fail(w, r, fmt.Errorf("release %s has no file %q: %w", rel.ID, name, store.ErrNotFound))
}

// filesHere is a 503 when path, a file or the folder of rel, is not in this
// vDC's data_dir: each vDC has its own, and another vDC of the database may have
// it.
func filesHere(w http.ResponseWriter, rel quantix.Release, path string) error {
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		return nil
	}
	w.Header().Set("Retry-After", "10")
	return &httpError{http.StatusServiceUnavailable, fmt.Sprintf("release %s %s was uploaded through another vDC and its files are not on this one: "+
		"upload the bundle to this vDC too (qx-ctl releases upload), or fetch it from another vDC", rel.Image, rel.Version)}
}

func (a *API) startUpgrade(w http.ResponseWriter, r *http.Request) {
	var req quantix.UpgradeRequest
	if err := decode(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	u, err := a.cfg.Store.StartUpgrade(r.Context(), req, store.UpgradeRules{VDCVersion: a.cfg.Version})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.log.Info("upgrade started", "id", u.ID, "image", u.Image, "version", u.Version, "nodes", len(u.Nodes))
	writeJSON(w, http.StatusCreated, u)
}

func (a *API) listUpgrades(w http.ResponseWriter, r *http.Request) {
	us, err := a.cfg.Store.ListUpgrades(r.Context())
	answer(a, w, r, http.StatusOK, quantix.UpgradeList{Upgrades: us}, err)
}

func (a *API) getUpgrade(w http.ResponseWriter, r *http.Request) {
	u, err := a.cfg.Store.GetUpgrade(r.Context(), r.PathValue("id"))
	answer(a, w, r, http.StatusOK, u, err)
}

func (a *API) cancelUpgrade(w http.ResponseWriter, r *http.Request) {
	u, err := a.cfg.Store.CancelUpgrade(r.Context(), r.PathValue("id"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.log.Info("upgrade cancelled", "id", u.ID)
	writeJSON(w, http.StatusOK, u)
}
