// In-process timing of the consumer: node bench.mjs EXPORT_DIR BODIES_JSONL ROUNDS
// prints {"predict_ms": [...], "onnx_ms": [...]}: each body's predict() (parse to answer JSON,
// median over rounds) and the bare model.onnx call of the same ticket.
import fs from 'node:fs'

import ort from 'onnxruntime-node'

import { openExport } from './lib/tagger.mjs'

const [exportDir, bodiesPath, roundsText] = process.argv.slice(2)
const rounds = Number(roundsText || 5)
const tagger = await openExport(exportDir, { registryDir: false })
const lines = fs.readFileSync(bodiesPath, 'utf8').split('\n').filter(Boolean)
for (const line of lines.slice(0, 20)) JSON.stringify(await tagger.predict(JSON.parse(line))) // warm up

const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const predictMs = []
const onnxMs = []
for (const line of lines) {
  const times = []
  for (let r = 0; r < rounds; r++) {
    const t0 = process.hrtime.bigint()
    JSON.stringify(await tagger.predict(JSON.parse(line)))
    times.push(Number(process.hrtime.bigint() - t0) / 1e6)
  }
  predictMs.push(median(times))
  // the bare ONNX call of the same ticket, inputs built beforehand
  const body = JSON.parse(line)
  const mine = tagger.view.accounts.get(body.account_id)
  const emb = typeof body.email_sentence_embeddings === 'string' ? JSON.parse(body.email_sentence_embeddings) : body.email_sentence_embeddings
  const x = Float32Array.from(Object.values(emb).flat())
  const n = x.length / 384
  const l = mine.labels.length
  const { K, d, q } = tagger.base
  const feed = {
    sentences: new ort.Tensor('float32', x, [1, n, 384]),
    mask: new ort.Tensor('bool', new Uint8Array(n).fill(1), [1, n]),
    label_vectors: new ort.Tensor('float32', Float32Array.from(mine.vectors), [l, K, d]),
    label_index: new ort.Tensor('int64', BigInt64Array.from({ length: l }, (_, i) => BigInt(i)), [1, l]),
  }
  if (tagger.hasQuery) feed.account_query = new ort.Tensor('float32', Float32Array.from(mine.query), [1, q])
  const bare = []
  for (let r = 0; r < rounds; r++) {
    const t0 = process.hrtime.bigint()
    await tagger.session.run(feed, ['logits'])
    bare.push(Number(process.hrtime.bigint() - t0) / 1e6)
  }
  onnxMs.push(median(bare))
}
process.stdout.write(`${JSON.stringify({ predict_ms: predictMs, onnx_ms: onnxMs })}\n`)
