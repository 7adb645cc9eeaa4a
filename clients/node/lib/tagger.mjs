// The reference consumer of a tagger export in Node.js (docs/export-format.md): the API's
// answers from model.onnx (onnxruntime-node), the export's labels and, when the export lives in a
// registry, every merchant's label changes and raised thresholds from registry.sqlite.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'

import { asyncBufferFromFile, parquetReadObjects } from 'hyparquet'
import ort from 'onnxruntime-node'
import initSqlJs from 'sql.js'

import { readNpy, readNpz } from './npy.mjs'
import { committedImage } from './sqlite-wal.mjs'

export const FORMAT_VERSION = 1 // the export format this reader understands (serving.json format_version)
const EMBEDDING_DIM = 384
const BASE = path.join('labels', 'base')

export class ContractError extends Error {}

/** An answer that is a refusal: the API's status and the field at fault. */
export class RequestError extends Error {
  constructor(status, field, message) {
    super(message)
    this.status = status
    this.field = field
  }
}

function parentLabel(label) {
  const levels = label.split('::').filter(Boolean)
  return levels.length ? levels[0] : label
}

function generationName(seq) {
  return `g${String(seq).padStart(6, '0')}`
}

/** Every merchant's labels as exported: {account: {labels, prior, vectors, query}}. */
async function readBase(exportDir) {
  const folder = path.join(exportDir, BASE)
  const rows = await parquetReadObjects({ file: await asyncBufferFromFile(path.join(folder, 'labels.parquet')) })
  const vectors = readNpy(fs.readFileSync(path.join(folder, 'label_vectors.npy')))
  const queries = readNpy(fs.readFileSync(path.join(folder, 'account_queries.npy')))
  const [, K, d] = vectors.shape
  const q = queries.shape[1]
  const accounts = new Map()
  let i = 0
  let a = 0
  while (i < rows.length) {
    const account = rows[i].account_id
    let j = i
    while (j < rows.length && rows[j].account_id === account) j++
    accounts.set(account, {
      labels: rows.slice(i, j).map((r) => r.label),
      prior: Float64Array.from(rows.slice(i, j), (r) => r.prior),
      vectors: vectors.data.subarray(i * K * d, j * K * d),
      query: q ? queries.data.subarray(a * q, (a + 1) * q) : null,
    })
    a++
    i = j
  }
  return { accounts, K, d, q, unknownQuery: q ? queries.data.subarray(a * q, (a + 1) * q) : null }
}

/** One merchant's labels as the registry stores them (.npz bytes, checked against their SHA-256). */
function decodeRow(blob, sha) {
  if (crypto.createHash('sha256').update(blob).digest('hex') !== sha) throw new ContractError('damaged label row')
  const z = readNpz(blob)
  return {
    labels: z.labels.data,
    prior: Float64Array.from(z.prior.data),
    vectors: z.vectors.data,
    query: z.query.data.length ? z.query.data : null,
  }
}

let SQL = null

/** The registry's label rows (the latest good one per merchant) and raised thresholds of ``version``. */
async function readRegistry(registryDir, version) {
  SQL ??= await initSqlJs()
  const db = new SQL.Database(committedImage(path.join(registryDir, 'registry.sqlite')))
  try {
    const seq = db.exec('SELECT coalesce(max(seq), 0) FROM changes')[0].values[0][0]
    const changed = new Map()
    const quarantined = {}
    const stmt = db.prepare('SELECT account, seq, sha, blob FROM label_rows WHERE model=? ORDER BY account, seq DESC')
    stmt.bind([version])
    while (stmt.step()) {
      const [account, , sha, blob] = stmt.get()
      if (changed.has(account)) continue
      try {
        changed.set(account, decodeRow(blob, sha))
      } catch (err) {
        quarantined[account] ??= err.message // its last good row, or its exported labels, serve
      }
    }
    stmt.free()
    const raised = new Map()
    const hasThresholds = db.exec("SELECT name FROM sqlite_master WHERE name='thresholds'").length
    if (hasThresholds) {
      const t = db.prepare('SELECT account, target, threshold FROM thresholds WHERE model=? ORDER BY seq')
      t.bind([version])
      while (t.step()) {
        const [account, target, threshold] = t.get()
        if (threshold === null) raised.delete(`${account}\u001f${target}`)
        else raised.set(`${account}\u001f${target}`, threshold)
      }
      t.free()
    }
    return { generation: generationName(seq), changed, raised, quarantined }
  } finally {
    db.close()
  }
}

/** The embeddings field of a request -> Float32Array [n * 384] (null, "" or {}: no sentences). */
function sentenceVectors(field, maxSentences) {
  if (field === null || field === undefined || field === '') return new Float32Array(0)
  let obj = field
  if (typeof field === 'string') {
    try {
      obj = JSON.parse(field)
    } catch {
      throw new RequestError(422, 'email_sentence_embeddings', 'not valid JSON')
    }
  }
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
    throw new RequestError(422, 'email_sentence_embeddings', 'expected sentence id -> vector')
  }
  const vectors = Object.values(obj)
  if (vectors.length > maxSentences) {
    throw new RequestError(413, 'email_sentence_embeddings', `${vectors.length} sentences; at most ${maxSentences}`)
  }
  const out = new Float32Array(vectors.length * EMBEDDING_DIM)
  vectors.forEach((v, i) => {
    if (!Array.isArray(v) || v.length !== EMBEDDING_DIM || !v.every((x) => typeof x === 'number' && Number.isFinite(x))) {
      throw new RequestError(422, 'email_sentence_embeddings', `sentence ${i}: expected ${EMBEDDING_DIM} finite numbers`)
    }
    out.set(v, i * EMBEDDING_DIM)
  })
  return out
}

export class Tagger {
  /** Use {@link openExport}. */
  constructor(exportDir, serving, session, base, registryDir, k, maxRequestSentences) {
    Object.assign(this, { exportDir, serving, session, base, registryDir, k, maxRequestSentences })
    this.view = { generation: 'g000000', accounts: base.accounts, raised: new Map(), quarantined: {} }
    this.hasQuery = session.inputNames.includes('account_query')
  }

  /** Catch up with the registry's label changes and raised thresholds (a no-op without a registry). */
  async refresh() {
    if (!this.registryDir) return
    // the file is read without SQLite's locks: a read that races a checkpoint and a WAL restart can
    // see a torn image (sql.js: "malformed"); the next read sees a whole one
    let read
    for (let attempt = 1; ; attempt++) {
      try {
        read = await readRegistry(this.registryDir, this.serving.model_version)
        break
      } catch (err) {
        if (attempt >= 5) throw err
        await new Promise((done) => setTimeout(done, 20 * attempt))
      }
    }
    const { generation, changed, raised, quarantined } = read
    const accounts = new Map(this.base.accounts)
    for (const [account, labels] of changed) accounts.set(account, labels)
    this.view = { generation, accounts, raised, quarantined }
  }

  get version() {
    return `${this.serving.model_version}/${this.view.generation}`
  }

  threshold(account, target, level) {
    const t = level === 'leaf' ? this.serving.thresholds : this.serving.thresholds.parent || {}
    const global = (t.global || {})[target]
    const perAccount = (t.per_account || {})[target] || {}
    const chosen = account in perAccount ? perAccount[account] : global
    if (level !== 'leaf') return chosen ?? null
    const raised = this.view.raised.get(`${account}\u001f${target}`)
    if (raised === undefined) return chosen ?? null
    return chosen === null || chosen === undefined ? raised : Math.max(raised, chosen)
  }

  /** The precision target as the export's thresholds name it ("0.95"), or a RequestError. */
  target(asked) {
    const keys = Object.keys(this.serving.thresholds.global || {})
    const found = keys.find((key) => Number(key) === Number(asked))
    if (found === undefined) throw new RequestError(422, 'precision_target', `${asked} is not a precision target of this model`)
    return found
  }

  /** The calibrated probabilities of one ticket over its merchant's labels (Float64Array). */
  async probabilities(mine, sentences) {
    const n = Math.min(sentences.length / EMBEDDING_DIM, this.serving.max_sentences)
    const width = Math.max(n, 1)
    const x = new Float32Array(width * EMBEDDING_DIM)
    x.set(sentences.subarray(0, n * EMBEDDING_DIM))
    const mask = new Uint8Array(width).fill(0)
    mask.fill(1, 0, n)
    const l = mine.labels.length
    const { K, d } = this.base
    const feed = {
      sentences: new ort.Tensor('float32', x, [1, width, EMBEDDING_DIM]),
      mask: new ort.Tensor('bool', mask, [1, width]),
      label_vectors: new ort.Tensor('float32', Float32Array.from(mine.vectors), [l, K, d]),
      label_index: new ort.Tensor('int64', BigInt64Array.from({ length: l }, (_, i) => BigInt(i)), [1, l]),
    }
    if (this.hasQuery) feed.account_query = new ort.Tensor('float32', Float32Array.from(mine.query), [1, this.base.q])
    const { logits } = await this.session.run(feed, ['logits'])
    const T = this.serving.temperature
    const z = Array.from(logits.data, (v) => v / T)
    const top = Math.max(...z)
    const e = z.map((v) => Math.exp(v - top))
    const sum = e.reduce((a, b) => a + b, 0)
    return Float64Array.from(e, (v) => v / sum)
  }

  /** The API's answer to one /predict body ({account_id, email_sentence_embeddings, ticket_id}). */
  async predict(body, { target } = {}) {
    if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new RequestError(422, 'body', 'a JSON object is required')
    const account = body.account_id
    if (typeof account !== 'string' || !account) throw new RequestError(422, 'account_id', 'Field required')
    const mine = this.view.accounts.get(account)
    if (!mine) throw new RequestError(404, 'account_id', `unknown account '${account}'`)
    const key = this.target(target ?? this.defaultTarget)
    const sentences = sentenceVectors(body.email_sentence_embeddings, this.maxRequestSentences)
    const fallback = sentences.length === 0
    const probs = fallback ? Float64Array.from(mine.prior) : await this.probabilities(mine, sentences)
    const p32 = Float32Array.from(probs)
    const order = Array.from(p32.keys()).sort((a, b) => p32[b] - p32[a] || a - b)
    const ranked = order.slice(0, this.k).filter((i) => p32[i] > 0)
    const abstainFallback = fallback && this.serving.null_fallback === 'abstain'
    const confidence = abstainFallback || !ranked.length ? 0 : p32[ranked[0]]
    const leaf = this.threshold(account, key, 'leaf')
    const atLeaf = !abstainFallback && leaf !== null && confidence >= leaf
    let label = ranked.length && !abstainFallback ? mine.labels[ranked[0]] : null
    let answerConfidence = confidence
    let level = 0
    const up = this.threshold(account, key, 'parent')
    if (!atLeaf && up !== null && !abstainFallback) {
      const sums = new Map() // parents in the order their first label comes (ties: the first)
      mine.labels.forEach((name, i) => {
        if (p32[i] > 0) sums.set(parentLabel(name), (sums.get(parentLabel(name)) ?? 0) + p32[i])
      })
      let best = null
      for (const [parent, s] of sums) if (best === null || s > best[1]) best = [parent, s]
      const parentConfidence = best ? Math.fround(Math.min(best[1], 1)) : 0
      if (best && parentConfidence >= up) {
        label = best[0]
        answerConfidence = parentConfidence
        level = 1
      }
    }
    return {
      contact_reason: label,
      confidence: answerConfidence,
      answer_level: level,
      top_k: ranked.map((i) => ({ label: mine.labels[i], score: p32[i] })),
      abstained: !(atLeaf || level === 1),
      fallback: fallback,
      model_version: this.version,
    }
  }
}

/**
 * Open an export directory. ``registryDir``: the registry whose label changes to honour (default:
 * the registry the export lives in, ``EXPORT/../..``, when it has a registry.sqlite; ``false``:
 * none). ``k``: labels in top_k; ``target``: the precision target ("0.95"); ``maxSentences``: the
 * API's cap on a request's sentences.
 */
export async function openExport(exportDir, { registryDir, k = 3, target = '0.95', threads = 1, maxSentences = 256 } = {}) {
  const serving = JSON.parse(fs.readFileSync(path.join(exportDir, 'serving.json'), 'utf8'))
  const version = serving.format_version ?? 1 // exports made before the field are version 1
  if (version > FORMAT_VERSION) {
    throw new ContractError(`${exportDir}: export format ${version}; this reader knows ${FORMAT_VERSION} (update it)`)
  }
  const session = await ort.InferenceSession.create(path.join(exportDir, 'model.onnx'), {
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
  })
  const base = await readBase(exportDir)
  if (registryDir === undefined) {
    const guess = path.resolve(exportDir, '..', '..')
    registryDir = fs.existsSync(path.join(guess, 'registry.sqlite')) ? guess : null
  }
  const tagger = new Tagger(exportDir, serving, session, base, registryDir || null, k, maxSentences)
  tagger.defaultTarget = target
  tagger.target(target)
  await tagger.refresh()
  return tagger
}
