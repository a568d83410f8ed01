// Entry point of the SQLite writer thread when longrun runs from its TypeScript sources (under tsx,
// or under vitest, which gives worker threads no loader): loads writer.ts through tsx. On Node 20,
// `--import tsx` in a worker's execArgv does not reach the worker's own entry point. From dist, the
// store starts writer.js directly and this file is not used.
import { tsImport } from 'tsx/esm/api'

await tsImport('./writer.ts', import.meta.url)
