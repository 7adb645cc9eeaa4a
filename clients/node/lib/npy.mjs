// .npy and .npz (numpy's own formats) as the export and the registry write them: little-endian
// float32, float64, int64, bool and fixed-width unicode ('<U') arrays; .npz is a ZIP of .npy
// files, stored (np.savez does not compress).

const DTYPES = {
  '<f4': [Float32Array, 4],
  '<f8': [Float64Array, 8],
  '<i8': [BigInt64Array, 8],
  '<i4': [Int32Array, 4],
  '|b1': [Uint8Array, 1],
}

/** One .npy file's bytes -> {dtype, shape, data} (data: a typed array, or strings for '<U'). */
export function readNpy(bytes) {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  if (buf.toString('latin1', 1, 6) !== 'NUMPY') throw new Error('not a .npy file')
  const major = buf[6]
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8)
  const start = (major === 1 ? 10 : 12) + headerLen
  const header = buf.toString('latin1', major === 1 ? 10 : 12, start)
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1]
  if (/'fortran_order':\s*True/.test(header)) throw new Error('Fortran-ordered arrays are not read')
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)[1]
  const shape = shapeText.split(',').map((s) => s.trim()).filter(Boolean).map(Number)
  const count = shape.reduce((a, b) => a * b, 1)
  if (descr.startsWith('<U')) {
    const width = Number(descr.slice(2))
    const out = []
    for (let i = 0; i < count; i++) {
      let s = ''
      for (let j = 0; j < width; j++) {
        const code = buf.readUInt32LE(start + (i * width + j) * 4)
        if (code === 0) break
        s += String.fromCodePoint(code)
      }
      out.push(s)
    }
    return { dtype: descr, shape, data: out }
  }
  const kind = DTYPES[descr]
  if (!kind) throw new Error(`unsupported dtype ${descr}`)
  const [Typed, size] = kind
  // a copy: the source buffer's offset need not be aligned for the typed array
  const data = new Typed(buf.buffer.slice(buf.byteOffset + start, buf.byteOffset + start + count * size))
  return { dtype: descr, shape, data }
}

/** An .npz file's bytes -> {name: array} (ZIP entries stored without compression). */
export function readNpz(bytes) {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  // the central directory: the end record is the last 22 bytes (np.savez writes no comment)
  let end = buf.length - 22
  while (end >= 0 && buf.readUInt32LE(end) !== 0x06054b50) end--
  if (end < 0) throw new Error('not a ZIP file')
  const entries = buf.readUInt16LE(end + 10)
  let at = buf.readUInt32LE(end + 16)
  const out = {}
  for (let i = 0; i < entries; i++) {
    if (buf.readUInt32LE(at) !== 0x02014b50) throw new Error('a damaged ZIP directory')
    const method = buf.readUInt16LE(at + 10)
    let size = buf.readUInt32LE(at + 20)
    const nameLen = buf.readUInt16LE(at + 28)
    const extraLen = buf.readUInt16LE(at + 30)
    const commentLen = buf.readUInt16LE(at + 32)
    let local = buf.readUInt32LE(at + 42)
    const name = buf.toString('utf8', at + 46, at + 46 + nameLen)
    // ZIP64 (numpy writes it for large members): sizes and offset in the extra field
    const extra = buf.subarray(at + 46 + nameLen, at + 46 + nameLen + extraLen)
    for (let e = 0; e + 4 <= extra.length; ) {
      const id = extra.readUInt16LE(e)
      const len = extra.readUInt16LE(e + 2)
      if (id === 0x0001) {
        let p = e + 4
        if (size === 0xffffffff) { size = Number(extra.readBigUInt64LE(p + 8)); p += 16 }
        if (local === 0xffffffff) local = Number(extra.readBigUInt64LE(p))
      }
      e += 4 + len
    }
    if (method !== 0) throw new Error(`${name}: compressed .npz members are not read`)
    const dataStart = local + 30 + buf.readUInt16LE(local + 26) + buf.readUInt16LE(local + 28)
    out[name.replace(/\.npy$/, '')] = readNpy(buf.subarray(dataStart, dataStart + size))
    at += 46 + nameLen + extraLen + commentLen
  }
  return out
}
