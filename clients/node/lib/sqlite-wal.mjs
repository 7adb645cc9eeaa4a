// A SQLite database in WAL mode as a reader sees it: the main file with every committed
// transaction of its -wal file applied (https://www.sqlite.org/fileformat2.html#walformat).
// sql.js (SQLite compiled to WebAssembly) opens the image; it cannot read a -wal file itself.
import fs from 'node:fs'

function checksum(view, offset, length, bigEndian, s) {
  let [s0, s1] = s
  for (let i = offset; i < offset + length; i += 8) {
    const x0 = view.getUint32(i, !bigEndian)
    const x1 = view.getUint32(i + 4, !bigEndian)
    s0 = (s0 + x0 + s1) >>> 0
    s1 = (s1 + x1 + s0) >>> 0
  }
  return [s0, s1]
}

/** The committed state of the database at ``path`` (its -wal applied) as bytes. */
export function committedImage(path) {
  let image = new Uint8Array(fs.readFileSync(path))
  let wal
  try {
    wal = new Uint8Array(fs.readFileSync(`${path}-wal`))
  } catch {
    wal = new Uint8Array(0)
  }
  if (wal.length >= 32) {
    const view = new DataView(wal.buffer, wal.byteOffset, wal.byteLength)
    const magic = view.getUint32(0)
    const pageSize = view.getUint32(8)
    if ((magic === 0x377f0682 || magic === 0x377f0683) && pageSize >= 512) {
      const bigEndian = (magic & 1) === 1
      const salt = [view.getUint32(16), view.getUint32(20)]
      let s = checksum(view, 0, 24, bigEndian, [0, 0])
      if (s[0] === view.getUint32(24) && s[1] === view.getUint32(28)) {
        const pending = new Map()
        for (let at = 32; at + 24 + pageSize <= wal.length; at += 24 + pageSize) {
          if (view.getUint32(at + 8) !== salt[0] || view.getUint32(at + 12) !== salt[1]) break
          s = checksum(view, at, 8, bigEndian, s)
          s = checksum(view, at + 24, pageSize, bigEndian, s)
          if (s[0] !== view.getUint32(at + 16) || s[1] !== view.getUint32(at + 20)) break
          pending.set(view.getUint32(at), wal.subarray(at + 24, at + 24 + pageSize))
          const pagesAfterCommit = view.getUint32(at + 4)
          if (pagesAfterCommit) {
            const next = new Uint8Array(pagesAfterCommit * pageSize)
            next.set(image.subarray(0, Math.min(image.length, next.length)))
            for (const [page, bytes] of pending) {
              if (page <= pagesAfterCommit) next.set(bytes, (page - 1) * pageSize)
            }
            image = next
            pending.clear()
          }
        }
      }
    }
  }
  if (image.length >= 20) {
    image[18] = 1 // read as a rollback-journal database: the WAL is already applied
    image[19] = 1
  }
  return image
}
