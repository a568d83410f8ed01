#!/usr/bin/env node
import { run } from './program.js'

// The `longrun` command. `serve` and `worker` resolve without a code and keep running.
const code = await run(process.argv.slice(2))
if (code !== undefined) process.exitCode = code
