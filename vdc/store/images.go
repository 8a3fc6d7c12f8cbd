package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quantix/quantix"
)

// This file keeps the image library's metadata; the bytes are files in the vDC's
// data_dir, named by StoredImage.Path.

// StoredImage is an image with the file holding its bytes.
type StoredImage struct {
	quantix.Image
	Path string // file name inside data_dir
}

const imageColumns = `i.id::text, i.name, i.format, i.size_bytes, i.sha256, i.path, i.created_at,
    (SELECT count(DISTINCT m.uuid) FROM managed_vms m LEFT JOIN vm_disks d ON d.vm_uuid = m.uuid
     WHERE d.image_id = i.id OR m.cdrom_image_id = i.id)::int
FROM images i`

func scanImage(r pgx.Row) (StoredImage, error) {
	var i StoredImage
	var created time.Time
	err := r.Scan(&i.ID, &i.Name, &i.Format, &i.SizeBytes, &i.SHA256, &i.Path, &created, &i.UsedBy)
	i.CreatedAt = created.UTC().Format(time.RFC3339)
	return i, err
}

// AddImage stores the metadata of an image whose file is in place. A name in use is
// a *ConflictError.
func (s *Store) AddImage(ctx context.Context, img StoredImage) (StoredImage, error) {
	_, err := s.pool.Exec(ctx, `INSERT INTO images (id, name, format, size_bytes, sha256, path) VALUES ($1, $2, $3, $4, $5, $6)`,
		img.ID, img.Name, img.Format, img.SizeBytes, img.SHA256, img.Path)
	if err := uniqueViolation(err); err != nil {
		return img, vmErr("add image", img.Name, err)
	}
	return s.GetImage(ctx, img.ID)
}

// ImageNameTaken is a *ConflictError when an image is named name already.
func (s *Store) ImageNameTaken(ctx context.Context, name string) error {
	var id string
	err := s.pool.QueryRow(ctx, `SELECT id::text FROM images WHERE name = $1`, name).Scan(&id)
	switch {
	case isNoRows(err):
		return nil
	case err != nil:
		return fmt.Errorf("image %s: %w", name, err)
	}
	return conflict("an image named %s exists already (%s)", name, id)
}

// ListImages returns the library by name.
func (s *Store) ListImages(ctx context.Context) ([]StoredImage, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+imageColumns+` ORDER BY i.name`)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	imgs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (StoredImage, error) { return scanImage(r) })
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	return imgs, nil
}

// imageWhere selects an image by its id or name.
func imageWhere(ref string) (string, any) {
	if isUUIDText(ref) {
		return ` WHERE i.id = $1::uuid`, strings.ToLower(ref)
	}
	return ` WHERE i.name = $1`, ref
}

// GetImage returns an image by id or name, or ErrNotFound.
func (s *Store) GetImage(ctx context.Context, ref string) (StoredImage, error) {
	w, arg := imageWhere(ref)
	i, err := scanImage(s.pool.QueryRow(ctx, `SELECT `+imageColumns+w, arg))
	if isNoRows(err) {
		return i, fmt.Errorf("image %s: %w", ref, ErrNotFound)
	}
	if err != nil {
		return i, fmt.Errorf("get image %s: %w", ref, err)
	}
	return i, nil
}

// DeleteImage removes an image's metadata and returns it (the caller removes the
// file). An image a VM uses is a *ConflictError.
func (s *Store) DeleteImage(ctx context.Context, ref string) (StoredImage, error) {
	var img StoredImage
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// The placement lock orders this against creates and updates naming it.
		if err := lockPlacement(ctx, tx); err != nil {
			return err
		}
		var err error
		w, arg := imageWhere(ref)
		img, err = scanImage(tx.QueryRow(ctx, `SELECT `+imageColumns+w, arg))
		if isNoRows(err) {
			return fmt.Errorf("image %s: %w", ref, ErrNotFound)
		}
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT DISTINCT m.name FROM managed_vms m LEFT JOIN vm_disks d ON d.vm_uuid = m.uuid
			WHERE d.image_id = $1 OR m.cdrom_image_id = $1 ORDER BY 1`, img.ID)
		if err != nil {
			return err
		}
		users, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		if len(users) > 0 {
			return conflict("image %s is used by %d VMs (%s): delete them or change their disks first",
				img.Name, len(users), strings.Join(users, ", "))
		}
		_, err = tx.Exec(ctx, `DELETE FROM images WHERE id = $1`, img.ID)
		return err
	})
	return img, vmErr("delete image", ref, err)
}

// NodeImage returns an image a managed VM of nodeID uses, or ErrNotFound: a node
// gets only the images it needs.
func (s *Store) NodeImage(ctx context.Context, nodeID, imageID string) (StoredImage, error) {
	if !isUUIDText(imageID) {
		return StoredImage{}, fmt.Errorf("image %q: %w", imageID, ErrNotFound)
	}
	i, err := scanImage(s.pool.QueryRow(ctx, `SELECT `+imageColumns+` WHERE i.id = $2::uuid AND EXISTS (
		    SELECT FROM managed_vms m LEFT JOIN vm_disks d ON d.vm_uuid = m.uuid
		    WHERE m.node_id = $1 AND (d.image_id = i.id OR m.cdrom_image_id = i.id))`, nodeID, strings.ToLower(imageID)))
	if isNoRows(err) {
		return i, fmt.Errorf("image %s is not used by a VM of node %s: %w", imageID, nodeID, ErrNotFound)
	}
	if err != nil {
		return i, fmt.Errorf("image %s for node %s: %w", imageID, nodeID, err)
	}
	return i, nil
}
