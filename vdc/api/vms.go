package api

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/quantix/quantix"
	"github.com/quantix/quantix/vdc/store"
)

// This file serves the managed VMs and images of docs/design.md §14: the admin side
// (create, change, power, delete, console, image library) and the agent side
// (desired state long-poll, image bytes, console upload).

func (a *API) createVM(w http.ResponseWriter, r *http.Request) {
	var req quantix.VMCreate
	if err := decode(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	vm, err := a.cfg.Store.CreateVM(r.Context(), req)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.log.Info("vm created", "uuid", vm.UUID, "name", vm.Name, "node", vm.Hostname, "wanted", vm.Wanted)
	writeJSON(w, http.StatusCreated, vm)
}

func (a *API) getVM(w http.ResponseWriter, r *http.Request) {
	vm, err := a.cfg.Store.GetVM(r.Context(), r.PathValue("ref"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, vm)
}

// patchVM applies a JSON merge patch of the spec (top-level fields replace the
// stored ones; NICs without a MAC keep the MAC of the NIC of the same index).
func (a *API) patchVM(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, quantix.MaxRequestBytes)
	body, err := io.ReadAll(r.Body)
	if err != nil {
		a.fail(w, r, &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than %d bytes", quantix.MaxRequestBytes)})
		return
	}
	vm, err := a.cfg.Store.UpdateVM(r.Context(), r.PathValue("ref"), func(spec *quantix.VMSpec) error {
		// A list in the patch replaces the stored one as a whole (decoding into
		// the old elements would merge them); the store keeps NIC MACs by index.
		var keys map[string]json.RawMessage
		if json.Unmarshal(body, &keys) == nil {
			if _, ok := keys["disks"]; ok {
				spec.Disks = nil
			}
			if _, ok := keys["nics"]; ok {
				spec.NICs = nil
			}
			if _, ok := keys["boot_order"]; ok {
				spec.BootOrder = nil
			}
		}
		return decodeBytes(body, spec)
	})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.log.Info("vm updated", "uuid", vm.UUID, "name", vm.Name, "generation", vm.Generation)
	writeJSON(w, http.StatusOK, vm)
}

// decodeBytes is decode for a body already read.
func decodeBytes(body []byte, v any) error {
	req, _ := http.NewRequest(http.MethodPatch, "/", bytes.NewReader(body))
	return decode(nil, req, v)
}

func (a *API) deleteVM(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if err := checkParams(q, "keep_disks"); err != nil {
		a.fail(w, r, err)
		return
	}
	keep, err := boolParam(q.Get("keep_disks"), "keep_disks")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ref := r.PathValue("ref")
	if err := a.cfg.Store.DeleteVM(r.Context(), ref, keep); err != nil {
		a.fail(w, r, err)
		return
	}
	a.log.Info("vm deleted", "vm", ref, "keep_disks", keep)
	w.WriteHeader(http.StatusNoContent)
}

// boolParam reads "", 0, 1, true, false.
func boolParam(v, name string) (bool, error) {
	switch v {
	case "", "0", "false":
		return false, nil
	case "1", "true":
		return true, nil
	}
	return false, badRequest("query parameter %s=%q: want 1 or 0", name, v)
}

func (a *API) vmAction(w http.ResponseWriter, r *http.Request) {
	var req quantix.VMActionRequest
	if err := decode(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	vm, err := a.cfg.Store.VMAction(r.Context(), r.PathValue("ref"), req.Action)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.log.Info("vm action", "uuid", vm.UUID, "name", vm.Name, "action", req.Action)
	writeJSON(w, http.StatusOK, vm)
}

// HeaderConsoleUpdated carries when the node last sent a VM's console output.
const HeaderConsoleUpdated = "X-Quantix-Console-Updated"

func (a *API) vmConsole(w http.ResponseWriter, r *http.Request) {
	data, at, err := a.cfg.Store.Console(r.Context(), r.PathValue("ref"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if !at.IsZero() {
		w.Header().Set(HeaderConsoleUpdated, at.UTC().Format(time.RFC3339Nano))
	}
	w.Write(data)
}

func (a *API) vmEvents(w http.ResponseWriter, r *http.Request) {
	evs, err := a.cfg.Store.VMEvents(r.Context(), r.PathValue("ref"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, quantix.VMEventList{Events: evs})
}

// desired answers a node's desired state, as a long-poll with after and wait.
func (a *API) desired(w http.ResponseWriter, r *http.Request) {
	id, _, err := a.nodeAuth(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	q := r.URL.Query()
	if err := checkParams(q, "after", "wait"); err != nil {
		a.fail(w, r, err)
		return
	}
	wait, err := intParam(q, "wait", 0, 0, quantix.MaxDesiredWait)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if s := q.Get("after"); s != "" && wait > 0 {
		after, err := strconv.ParseInt(s, 10, 64)
		if err != nil || after < 0 {
			a.fail(w, r, badRequest("query parameter after=%q: want the generation last applied (0 or more)", s))
			return
		}
		if a.cfg.Desired == nil {
			a.fail(w, r, &httpError{http.StatusServiceUnavailable, "this vDC does not serve desired-state long-polls"})
			return
		}
		// The server's write timeout is for ordinary requests.
		if err := http.NewResponseController(w).SetWriteDeadline(time.Now().Add(time.Duration(wait)*time.Second + 30*time.Second)); err != nil {
			a.fail(w, r, fmt.Errorf("long-poll of node %s: extend the write deadline: %w", id, err))
			return
		}
		if _, err := a.cfg.Desired.AwaitDesired(r.Context(), id, after, time.Duration(wait)*time.Second); err != nil {
			a.fail(w, r, err)
			return
		}
	}
	d, err := a.cfg.Store.Desired(r.Context(), id)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (a *API) putConsole(w http.ResponseWriter, r *http.Request) {
	id, _, err := a.nodeAuth(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	vm := r.PathValue("vm")
	if !IsUUID(vm) {
		a.fail(w, r, badRequest("vm %q in the path is not a UUID", vm))
		return
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, quantix.MaxConsoleBytes))
	if err != nil {
		a.fail(w, r, &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf("console output is larger than %d bytes: send the newest %d", quantix.MaxConsoleBytes, quantix.MaxConsoleBytes)})
		return
	}
	if err := a.cfg.Store.PutConsole(r.Context(), id, vm, data); err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) nodeImage(w http.ResponseWriter, r *http.Request) {
	id, _, err := a.nodeAuth(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	img, err := a.cfg.Store.NodeImage(r.Context(), id, r.PathValue("image"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.serveImage(w, r, img)
}

func (a *API) serveImage(w http.ResponseWriter, r *http.Request, img store.StoredImage) {
	created, _ := time.Parse(time.RFC3339, img.CreatedAt)
	a.serveFile(w, r, filepath.Join(a.cfg.DataDir, img.Path), "image "+img.ID, img.SHA256, created)
}

// serveFile serves a stored file to a node: Range requests, its sha256 in
// X-Quantix-SHA256, and no write deadline (large files take longer than it).
func (a *API) serveFile(w http.ResponseWriter, r *http.Request, path, what, sum string, mod time.Time) {
	f, err := os.Open(path)
	if err != nil {
		a.fail(w, r, fmt.Errorf("%s: %w", what, err))
		return
	}
	defer f.Close()
	if err := http.NewResponseController(w).SetWriteDeadline(time.Time{}); err != nil {
		a.fail(w, r, fmt.Errorf("%s: lift the write deadline: %w", what, err))
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("X-Quantix-SHA256", sum)
	http.ServeContent(w, r, "", mod, f)
}

var imageFormats = map[string]bool{quantix.ImageRaw: true, quantix.ImageQCOW2: true, quantix.ImageISO: true}

// liftDeadlines takes the server's read and write timeouts off an upload: a
// large body takes longer to arrive than either, and the answer goes out on the
// same connection once it has (with only the read deadline lifted, the stored
// upload's answer is dropped and the client sees EOF).
func liftDeadlines(w http.ResponseWriter) error {
	rc := http.NewResponseController(w)
	if err := rc.SetReadDeadline(time.Time{}); err != nil {
		return fmt.Errorf("lift the read deadline: %w", err)
	}
	if err := rc.SetWriteDeadline(time.Time{}); err != nil {
		return fmt.Errorf("lift the write deadline: %w", err)
	}
	return nil
}

// uploadImage streams the body into data_dir, hashing it on the way; an image over
// max_image_bytes, a sha256 that does not match or a name in use leave nothing.
func (a *API) uploadImage(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if err := checkParams(q, "name", "format", "sha256"); err != nil {
		a.fail(w, r, err)
		return
	}
	name, format, want := q.Get("name"), q.Get("format"), strings.ToLower(q.Get("sha256"))
	if err := checkText("name", name, 128, true); err != nil {
		a.fail(w, r, err)
		return
	}
	if strings.ContainsAny(name, "/\\") {
		a.fail(w, r, badRequest("name %q: no slashes", name))
		return
	}
	if !imageFormats[format] {
		a.fail(w, r, badRequest("format %q: want raw, qcow2 or iso", format))
		return
	}
	if b, err := hex.DecodeString(want); want != "" && (err != nil || len(b) != sha256.Size) {
		a.fail(w, r, badRequest("sha256 %q: want 64 hex digits", want))
		return
	}
	if r.ContentLength > a.cfg.MaxImageBytes {
		a.fail(w, r, a.tooBig(r.ContentLength))
		return
	}
	if err := a.cfg.Store.ImageNameTaken(r.Context(), name); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := liftDeadlines(w); err != nil {
		a.fail(w, r, fmt.Errorf("image upload: %w", err))
		return
	}
	img := store.StoredImage{Image: quantix.Image{ID: store.NewEpoch(), Name: name, Format: format}}
	img.Path = img.ID + "." + format
	final := filepath.Join(a.cfg.DataDir, img.Path)
	tmp := final + ".part"
	err := a.receive(w, r, tmp, &img)
	if err == nil && want != "" && want != img.SHA256 {
		err = badRequest("sha256 of the %d bytes received is %s, not %s as given: upload again", img.SizeBytes, img.SHA256, want)
	}
	if err == nil && img.SizeBytes == 0 {
		err = badRequest("the image is empty: send its bytes as the request body")
	}
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		os.Remove(tmp)
		a.fail(w, r, err)
		return
	}
	stored, err := a.cfg.Store.AddImage(r.Context(), img)
	if err != nil {
		os.Remove(final)
		a.fail(w, r, err)
		return
	}
	a.log.Info("image uploaded", "id", stored.ID, "name", name, "format", format, "size", stored.SizeBytes, "sha256", stored.SHA256)
	writeJSON(w, http.StatusCreated, stored.Image)
}

func (a *API) tooBig(n int64) error {
	return &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf("image of %s is larger than max_image_bytes (%s)",
		quantix.FormatBytes(n), quantix.FormatBytes(a.cfg.MaxImageBytes))}
}

// receive writes the body to path (synced), setting img's size and sha256.
func (a *API) receive(w http.ResponseWriter, r *http.Request, path string, img *store.StoredImage) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("image %s: %w", img.ID, err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), http.MaxBytesReader(w, r.Body, a.cfg.MaxImageBytes))
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return a.tooBig(n + 1)
	case err != nil:
		return badRequest("image upload broke off after %d bytes: %v", n, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("image %s: %w", img.ID, err)
	}
	img.SizeBytes, img.SHA256 = n, hex.EncodeToString(h.Sum(nil))
	return f.Close()
}

func (a *API) listImages(w http.ResponseWriter, r *http.Request) {
	imgs, err := a.cfg.Store.ListImages(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := quantix.ImageList{Images: []quantix.Image{}}
	for _, i := range imgs {
		out.Images = append(out.Images, i.Image)
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) getImage(w http.ResponseWriter, r *http.Request) {
	img, err := a.cfg.Store.GetImage(r.Context(), r.PathValue("ref"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, img.Image)
}

func (a *API) deleteImage(w http.ResponseWriter, r *http.Request) {
	img, err := a.cfg.Store.DeleteImage(r.Context(), r.PathValue("ref"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if err := os.Remove(filepath.Join(a.cfg.DataDir, img.Path)); err != nil && !errors.Is(err, os.ErrNotExist) {
		a.log.Warn("image deleted, its file stays", "id", img.ID, "err", err)
	}
	a.log.Info("image deleted", "id", img.ID, "name", img.Name)
	w.WriteHeader(http.StatusNoContent)
}
