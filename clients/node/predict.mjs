#!/usr/bin/env node
// node clients/node/predict.mjs EXPORT_DIR [--registry DIR | --no-registry] [--target 0.95] [--k 3]
//
// Reads /predict request bodies as JSON lines on stdin and writes the API's answers (the same
// fields) as JSON lines on stdout, one for one and in order; a body the API would refuse gets
// {"error": {"status", "field", "message"}} instead. The export's labels with every label change
// of the registry it lives in (or --registry DIR) are honoured, as the API honours them.
import readline from 'node:readline'
import { parseArgs } from 'node:util'

import { openExport, RequestError } from './lib/tagger.mjs'

const USAGE = 'usage: node predict.mjs EXPORT_DIR [--registry DIR | --no-registry] [--target 0.95] [--k 3] < bodies.jsonl'

async function main() {
  let args
  try {
    args = parseArgs({
      allowPositionals: true,
      options: {
        registry: { type: 'string' },
        'no-registry': { type: 'boolean', default: false },
        target: { type: 'string', default: '0.95' },
        k: { type: 'string', default: '3' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    })
  } catch (err) {
    console.error(`${err.message}\n${USAGE}`)
    return 2
  }
  if (args.values.help || args.positionals.length !== 1) {
    console.error(USAGE)
    return args.values.help ? 0 : 2
  }
  const registryDir = args.values['no-registry'] ? false : args.values.registry
  const tagger = await openExport(args.positionals[0], { registryDir, target: args.values.target, k: Number(args.values.k) })
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
  let row = 0
  for await (const line of lines) {
    row++
    if (!line.trim()) continue
    let answer
    try {
      answer = await tagger.predict(JSON.parse(line))
    } catch (err) {
      if (!(err instanceof RequestError) && !(err instanceof SyntaxError)) throw err
      const status = err instanceof RequestError ? err.status : 422
      const field = err instanceof RequestError ? err.field : 'body'
      answer = { error: { status, field, message: `line ${row}: ${err.message}` } }
    }
    process.stdout.write(`${JSON.stringify(answer)}\n`)
  }
  return 0
}

main().then(
  (code) => { process.exitCode = code },
  (err) => {
    console.error(err.message)
    process.exitCode = 1
  },
)
